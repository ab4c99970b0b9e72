"""Loading the native libraries, and the constants the kernels are built with.

The libraries are plain C loaded with ctypes (no torch needed to load them). Every tile
limit and block constant is defined once, in `kernels.h`, and read here from the built
library. Where a library was not built (no C compiler at install time) or cannot load,
`load` says why; in CI (`CI=true`) that is an error instead of a fallback.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from dataclasses import dataclass

ISAS = ("scalar", "avx2", "avx_vnni", "avx512_vnni", "amx_int8")  # index = the library's ISA number
KERNELS_MODULE = "ryot_ray.kernels._ternary"


class NativeUnavailable(RuntimeError):
    """The native library this needs is not there; the message says why."""


def load(module: str, signatures: dict[str, tuple]) -> tuple[ctypes.CDLL | None, str]:
    """(library, where it was loaded from) or (None, why it is missing); the library's
    functions get their `name: (restype, [argtypes])` signatures."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None, f"the native library {module} was not built at install time (no C compiler?)"
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError as error:
        return None, f"the native library {spec.origin} cannot be loaded ({error})"
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library, spec.origin


c = ctypes
P, I64, INT, F32 = c.c_void_p, c.c_int64, c.c_int, c.c_float
KERNEL_SIGNATURES = {
    "ryot_best_isa": (INT, []),
    "ryot_isa_supported": (INT, [INT]),
    "ryot_ternary_linear": (INT, [P, I64, I64, P, I64, I64, I64, I64, F32, INT, INT, P, P, F32]),
    "ryot_ternary_accumulate": (INT, [P, I64, I64, P, I64, I64, I64, I64, INT, INT, P]),
    "ryot_sparse_linear": (INT, [P, I64, I64, I64, P, I64, F32, INT, INT, P, P, F32]),
    "ryot_sparse_quantize": (INT, [P, I64, I64, I64, P, F32, P, P, P]),
    "ryot_sparse_accumulate": (INT, [P, P, I64, I64, P, I64, INT, INT, P]),
    "ryot_read_bytes": (c.c_uint64, [P, I64, INT]),
    # the dense kernels of a model step, exposed for tests
    "ryot_int8_groups": (None, [P, I64, I64, P, I64, I64, INT, P, I64]),
    "ryot_f32_rows": (None, [P, I64, I64, I64, P, I64, I64, INT, P, I64]),
    "ryot_f16_from_f32": (None, [P, P, I64, INT]),
    "ryot_f32_from_f16": (None, [P, P, I64, INT]),
    "ryot_softmax": (None, [P, I64, INT]),
    "ryot_silu_mul": (None, [P, P, I64, P, INT]),
    "ryot_attend": (None, [P, P, I64, P, I64, I64, INT, F32, P, P, INT]),
    # the elementwise steps of training (training.c)
    "ryot_train_vectorized": (INT, []),
    "ryot_train_norm_quantize": (None, [P, I64, I64, P, F32, INT, P, P, P, P]),
    "ryot_train_rms_norm": (None, [P, I64, I64, P, F32, INT, P, P]),
    "ryot_train_scale_sums": (None, [P, I64, I64, P, F32, P, INT, P]),
    "ryot_train_requantize": (None, [P, I64, I64, INT, INT, P]),
    "ryot_train_quantize": (None, [P, I64, I64, INT, P, P]),
    "ryot_train_dequantize": (None, [P, I64, I64, P, INT, INT, P]),
    "ryot_train_silu_mul": (None, [P, P, I64, INT, P]),
    "ryot_train_silu_mul_backward": (None, [P, P, P, I64, INT, P, P]),
    "ryot_train_subln_backward": (INT, [P, INT, P, I64, I64, P, P, P, INT, P, P]),
}


@functools.cache
def kernels() -> tuple[ctypes.CDLL | None, str]:
    return load(KERNELS_MODULE, KERNEL_SIGNATURES)


def required(loaded: tuple[ctypes.CDLL | None, str]) -> ctypes.CDLL:
    """The library of a `load`-style pair; calling a native path without it is an error."""
    library, detail = loaded
    if library is None:
        raise NativeUnavailable(detail)
    return library


def must_build() -> bool:
    """CI builds the native libraries or fails: a fallback there would hide a broken build."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Constants:
    group: int  # ternary rows per 64-byte block, and k per block
    max_rows_per_tile: int
    max_tokens_per_tile: int
    max_accumulators: int  # tokens x row groups per micro-tile
    tile_rows: tuple[int, ...]  # row groups per tile that have kernels
    column_block: int  # rows of the sparse column layout's blocks
    int8_rows: int  # rows per group of the int8-row layout
    int8_k: int  # k per lane of the int8-row layout
    quant_eps: float  # floor of the absmax in int8 activation quantization


@functools.cache
def constants() -> Constants:
    library = required(kernels())

    def integer(name: str) -> int:
        return c.c_int32.in_dll(library, name).value

    tiles = (c.c_int32 * integer("ryot_tile_choices")).in_dll(library, "ryot_tile_rows")
    return Constants(
        group=integer("ryot_group"), max_rows_per_tile=integer("ryot_max_nr"),
        max_tokens_per_tile=integer("ryot_max_mr"), max_accumulators=integer("ryot_max_accumulators"),
        tile_rows=tuple(tiles), column_block=integer("ryot_column_block"), int8_rows=integer("ryot_int8_rows"),
        int8_k=integer("ryot_int8_k"), quant_eps=c.c_float.in_dll(library, "ryot_quant_eps").value,
    )


def native_isas() -> list[str]:
    """The ISA paths the native library can run on this CPU, best last."""
    library, _ = kernels()
    return [isa for number, isa in enumerate(ISAS) if library and library.ryot_isa_supported(number)]


def isa_number(isa: str | None) -> int:
    """The library's number for an ISA path (None: the best this CPU runs)."""
    library = required(kernels())
    if isa is None:
        return library.ryot_best_isa()
    if isa not in native_isas():
        raise ValueError(f"ISA path {isa} is not available on this CPU (available: {', '.join(native_isas())})")
    return ISAS.index(isa)
