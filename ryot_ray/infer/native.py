"""The native model step (`engine.c`) over a frozen model, through ctypes. No torch.

`NativeModel` points the C structures at the frozen model's arrays (memory-mapped or in
memory); `NativeStep` owns one engine: a KV cache of `slots` sequences and scratch for
steps of up to `max_rows` rows. One call of `step` runs the whole model for its rows on
one team of threads.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.kernels.native import ISAS, isa_number, load, native_isas, required
from ryot_ray.model.widths import kept_activations

ENGINE_MODULE = "ryot_ray.infer._engine"
LINEAR_KINDS = {"ternary": 0, "columns": 1, "fp32": 2, "int8": 3}
FFN_CODES = {"silu": 0, "relu2": 1}  # engine.c's FFN_SILU, FFN_RELU2; the names are config.FFN_ACTIVATIONS
KV_FORMATS = {"fp32": 0, "fp16": 1}
LAYER_LINEARS = ("qkv", "o", "gate_up", "down")
MAX_ROWS = 128  # rows per step: longer prefills go in chunks of this many

c = ctypes
P, I64, I32, F32 = c.c_void_p, c.c_int64, c.c_int32, c.c_float


class Linear(c.Structure):
    _fields_ = [("kind", I32), ("segments", I32), ("in_features", I64), ("rows_per_tile", I64),
                ("tokens_per_tile", I64), ("rows", I64 * 3), ("scale", F32 * 3), ("gain", P * 3), ("data", P),
                ("row_scale", P), ("row_sums", P)]


class Layer(c.Structure):
    _fields_ = [("attn_norm", P), ("ffn_norm", P), ("qkv", Linear), ("o", Linear), ("gate_up", Linear),
                ("down", Linear)]


class Model(c.Structure):
    _fields_ = [("hidden", I64), ("intermediate", I64), ("layers", I64), ("heads", I64), ("kv_heads", I64),
                ("head_dim", I64), ("vocab", I64), ("positions", I64), ("norm_eps", F32), ("subln_eps", F32),
                ("ffn_activation", I32), ("embed_int8", I32), ("embed", P), ("embed_scale", P), ("final_norm", P), ("rope_cos", P),
                ("rope_sin", P), ("head", Linear), ("layer", c.POINTER(Layer))]


SIGNATURES = {
    "ryot_engine_new": (P, [c.POINTER(Model), I64, I64, I64, c.c_int, c.c_int, c.c_int, c.POINTER(c.c_int)]),
    "ryot_engine_step": (c.c_int, [P, I64, P, P, P, I64, P, I64, I64, P]),
    "ryot_engine_copy_slot": (c.c_int, [P, I64, I64, I64]),
    "ryot_engine_cache_bytes": (I64, [P]),
    "ryot_engine_profile": (None, [P, c.c_int, P]),
    "ryot_engine_free": (None, [P]),
}
PHASES = ("embedding", "qkv", "attention", "o", "gate_up", "down", "head")  # engine.c's order


@functools.cache
def engine_library() -> tuple[ctypes.CDLL | None, str]:
    return load(ENGINE_MODULE, SIGNATURES)


def available() -> bool:
    return engine_library()[0] is not None and bool(native_isas())


def _pointer(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def rope_tables(inv_freq: np.ndarray, positions: int, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] of each position's angles, as `transformers`
    computes them in fp32 (angle = position * inv_freq), times the attention scaling."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return ((np.cos(angles) * np.float32(scaling)).astype(np.float32),
            (np.sin(angles) * np.float32(scaling)).astype(np.float32))


class NativeModel:
    """The C view of a frozen model; keeps what it points at alive."""

    def __init__(self, frozen: FrozenModel):
        self.frozen = frozen
        meta, arrays = frozen.model, frozen.arrays
        self.cos, self.sin = rope_tables(arrays["rope.inv_freq"], meta["max_positions"], meta["rope_scaling"])
        self.layers = (Layer * meta["layers"])()
        for index, layer in enumerate(self.layers):
            prefix = f"layers.{index}."
            layer.attn_norm = _pointer(arrays.get(prefix + "attn_norm"))  # none in a bitnet block
            layer.ffn_norm = _pointer(arrays.get(prefix + "ffn_norm"))
            for name in LAYER_LINEARS:
                setattr(layer, name, self._linear(prefix + name, meta["linears"][name]))
        self.struct = Model(
            hidden=meta["hidden"], intermediate=meta["intermediate"], layers=meta["layers"], heads=meta["heads"],
            kv_heads=meta["kv_heads"], head_dim=meta["head_dim"], vocab=meta["vocab"],
            positions=meta["max_positions"], norm_eps=meta["norm_eps"], subln_eps=meta["subln_eps"],
            ffn_activation=FFN_CODES[meta.get("ffn_activation", "silu")],
            embed_int8=meta["embeddings"] == "int8", embed=_pointer(arrays["embed.weight"]),
            embed_scale=_pointer(arrays.get("embed.scale")), final_norm=_pointer(arrays["final_norm"]),
            rope_cos=_pointer(self.cos), rope_sin=_pointer(self.sin), head=self._linear("head", meta["linears"]["head"]),
            layer=self.layers,
        )

    def _linear(self, prefix: str, spec: dict) -> Linear:
        arrays = self.frozen.arrays
        segments = len(spec["rows"])
        gain = arrays.get(prefix + ".gain")
        scale = arrays.get(prefix + ".scale")
        return Linear(
            kind=LINEAR_KINDS[spec["kind"]], segments=segments, in_features=spec["in_features"],
            rows_per_tile=spec.get("rows_per_tile", 0), tokens_per_tile=spec.get("tokens_per_tile", 0),
            rows=(I64 * 3)(*spec["rows"]),
            scale=(F32 * 3)(*([] if scale is None or spec["kind"] == "int8" else scale.tolist())),
            gain=(P * 3)(*([] if gain is None else [_pointer(row) for row in gain])),
            data=_pointer(arrays[prefix + ".data"]),
            row_scale=_pointer(scale) if spec["kind"] == "int8" else None,
            row_sums=_pointer(arrays.get(prefix + ".row_sums")),
        )


class NativeStep:
    """One engine over a `NativeModel`: `slots` sequences of up to `max_length` positions."""

    handle = None  # until the engine exists

    def __init__(self, model: NativeModel, slots: int, max_length: int, threads: int, kv_cache: str = "fp32",
                 isa: str | None = None, max_rows: int = MAX_ROWS):
        library = required(engine_library())
        if kv_cache not in KV_FORMATS:
            raise ValueError(f"KV cache format {kv_cache!r}: one of {', '.join(KV_FORMATS)}")
        meta = model.frozen.model
        if max_length > meta["max_positions"]:
            raise ValueError(f"{max_length} positions: the model has rotary positions for {meta['max_positions']}")
        self.model, self.library = model, library
        self.slots, self.max_length, self.max_rows, self.threads = slots, max_length, max_rows, threads
        self.kv_cache, self.isa = kv_cache, isa or ISAS[isa_number(None)]
        status = c.c_int(0)
        handle = library.ryot_engine_new(c.byref(model.struct), slots, max_length, max_rows, KV_FORMATS[kv_cache],
                                         threads, isa_number(isa), c.byref(status))
        if not handle:
            what = {-1: "the frozen model is malformed", -2: f"ISA {isa} is not available",
                    -3: "out of memory for the KV cache and scratch"}
            raise RuntimeError(f"the native engine cannot start: {what.get(status.value, status.value)}")
        self.handle = handle
        self.vocab = meta["vocab"]
        self.widths = meta["widths"]
        self.sparse_k = meta["sparse_k"] if meta["linears"]["down"]["kind"] == "columns" else None
        self.width = self.widths[0]

    @property
    def cache_bytes(self) -> int:
        return self.library.ryot_engine_cache_bytes(self.handle)

    def use_width(self, level: int) -> None:
        """Run the FFNs at their `level`-th nested width (0: full)."""
        if not 0 <= level < len(self.widths):
            raise ValueError(f"width level {level}: the FFN has {len(self.widths)} nested widths")
        self.width = self.widths[level]

    def step(self, tokens, slots, positions, logit_rows) -> np.ndarray:
        """Logits [len(logit_rows), vocab] of the rows `logit_rows` (indices into the
        rows); every row (token, slot, position) enters the cache."""
        tokens, slots, positions, logit_rows = (np.ascontiguousarray(a, dtype=np.int32)
                                                for a in (tokens, slots, positions, logit_rows))
        rows = len(tokens)
        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"{rows} rows in one step; at most {self.max_rows}")
        logits = np.empty((len(logit_rows), self.vocab), dtype=np.float32)
        keep = 0 if self.sparse_k is None else kept_activations(self.sparse_k, self.width)
        status = self.library.ryot_engine_step(
            self.handle, rows, tokens.ctypes.data, slots.ctypes.data, positions.ctypes.data, len(logit_rows),
            logit_rows.ctypes.data, self.width, keep, logits.ctypes.data)
        if status != 0:
            raise ValueError(f"the native step refused its rows (status {status}): tokens, slots (< {self.slots}) "
                             f"and positions (< {self.max_length}) must be in range")
        return logits

    def copy_slot(self, source: int, target: int, length: int) -> None:
        if self.library.ryot_engine_copy_slot(self.handle, source, target, length) != 0:
            raise ValueError(f"cannot copy {length} positions of slot {source} to slot {target}")

    def profile(self, on: bool) -> dict[str, float]:
        """Time each phase of the steps that follow (`on`), or stop; returns the seconds
        per phase timed since the last call. Timing adds a clock read per phase."""
        seconds = np.zeros(len(PHASES), dtype=np.float64)
        self.library.ryot_engine_profile(self.handle, int(on), seconds.ctypes.data)
        return dict(zip(PHASES, seconds.tolist()))

    def close(self) -> None:
        if self.handle:
            self.library.ryot_engine_free(self.handle)
            self.handle = None

    def __del__(self):
        self.close()
