"""Engines for a trained torch model: frozen for the native step where it runs, else the
model's own forward; and the frozen file kept beside a checkpoint, made once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ryot_ray.config import InferenceConfig
from ryot_ray.infer import native
from ryot_ray.infer.engine import Engine, TextCodec
from ryot_ray.infer.fallback import TorchStep, as_inference_model
from ryot_ray.infer.freeze import freeze, fused_shapes, tokenizer_record
from ryot_ray.infer.load import engine_path, native_engine
from ryot_ray.infer.model_file import FORMAT, FrozenModel, ModelFileError
from ryot_ray.kernels.autotune import load_cache, tile_for, tune_missing
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.train.checkpoint import MODEL_FILE, load_checkpoint, read_checkpoint_record

FROZEN_DIR = "frozen"


def model_engine(model, tokenizer, inference: InferenceConfig, slots: int, max_length: int, sparse: bool = True,
                 threads: int | None = None, isa: str | None = None) -> Engine:
    """An engine for a trained `LlamaForCausalLM` (BitNet or the fp32 reference) in the
    layout `inference` asks for: frozen for the native step, or its own forward."""
    if engine_path().name == "native":
        frozen = freeze(model, tokenizer, inference.tile_size, inference.int8_embeddings, sparse)
        engine = native_engine(frozen, slots, max_length, threads, inference.kv_cache, isa)
    else:
        step = TorchStep(as_inference_model(model, inference.int8_embeddings, sparse), slots, max_length)
        engine = Engine(step, TextCodec.from_record(tokenizer_record(tokenizer)))
    engine.use_width(inference.ffn_level)
    return engine


def tune_tiles(model: nn.Module, inference: InferenceConfig) -> None:
    """Without a `tile_size`, each fused shape gets the tile tuned for this node's CPU,
    tuned here first if this node has not tuned it yet (nodes of a cluster may differ)."""
    bitnet = any(isinstance(module, BitLinear) for module in model.modules())
    if bitnet and inference.tile_size is None and engine_path().name == "native":
        tune_missing(fused_shapes(model.config).values())


def optimized_engine(model: nn.Module, tokenizer, config, sparse: bool, slots: int, max_length: int,
                     checkpoint: Path | None = None, threads: int | None = None) -> Engine:
    """The trained BitNet model in its inference layout: through the frozen file beside
    `checkpoint` where there is one and the native step runs, else frozen in memory."""
    tune_tiles(model, config.inference)
    if checkpoint is not None and engine_path().name == "native":
        frozen = FrozenModel.load(frozen_file(checkpoint, config.inference, sparse).path)
        engine = native_engine(frozen, slots, max_length, threads, config.inference.kv_cache)
        engine.use_width(config.inference.ffn_level)
        return engine
    return model_engine(model, tokenizer, config.inference, slots, max_length, sparse, threads)


@dataclass(frozen=True)
class FrozenFile:
    path: Path
    made_from: dict  # the checkpoint's weights digest and the layout; its hash names the file
    made_now: bool  # False: an earlier freeze of the same checkpoint and layout was reused


def frozen_file(checkpoint: Path, inference: InferenceConfig, sparse: bool = True) -> FrozenFile:
    """The frozen model file of a checkpoint in the layout `inference` asks for, made
    once (beside the checkpoint, or in the user cache where the checkpoint is read-only)
    and reused while the checkpoint's weights and this CPU's tiles stay the same. Without
    a `tile_size`, the shapes this CPU has not tuned yet are tuned first."""
    record = read_checkpoint_record(checkpoint)
    shapes = fused_shapes(_Shape(record["llama_config"]))
    if inference.tile_size is None:
        tune_missing(shapes.values())
    tuned = load_cache()
    tiles = {name: inference.tile_size or tile_for(*shape, tuned)["rows_per_tile"] for name, shape in shapes.items()}
    made_from = {"weights": record["files"][MODEL_FILE], "tiles": tiles, "int8": inference.int8_embeddings,
                 "sparse": sparse, "format": FORMAT, "library": _library_digest()}
    name = f"{hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]}.ryot"
    for directory in (Path(checkpoint) / FROZEN_DIR, _user_cache()):
        path = directory / name
        if path.is_file():
            try:
                FrozenModel.load(path)
                return FrozenFile(path, made_from, made_now=False)
            except ModelFileError:
                path.unlink(missing_ok=True)
    model, tokenizer, *_ = load_checkpoint(checkpoint)
    frozen = freeze(model, tokenizer, inference.tile_size, inference.int8_embeddings, sparse)
    for directory in (Path(checkpoint) / FROZEN_DIR, _user_cache()):
        try:
            frozen.save(directory / name)
            return FrozenFile(directory / name, made_from, made_now=True)
        except OSError:
            continue
    raise OSError(f"cannot write the frozen model of {checkpoint} beside it nor in {_user_cache()}")


class _Shape:
    """A Llama config's shape fields from its dict (for `fused_shapes`)."""

    def __init__(self, config: dict):
        self.__dict__.update(config)


def _user_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ryot-ray" / "frozen"


def _library_digest() -> str:
    """Frozen files are made per build of the native code (its layouts could change)."""
    library, origin = native.engine_library()
    if library is None:
        return "none"
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
