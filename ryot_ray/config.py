"""Typed run configuration, loaded from YAML and checked before Ray starts.

Every field is declared once, here, with its type and its allowed values (in the field
metadata). Loading walks the dataclasses, so an unknown key, a wrong type or a value out
of range is reported as one line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, worded as the one line the user sees."""


def _choices(*allowed: Any) -> dict:
    return {"choices": allowed}


def _at_least(minimum: float) -> dict:
    return {"min": minimum}


def _between(minimum: float, maximum: float) -> dict:
    return {"min": minimum, "max": maximum}


TASK_FAMILIES = ("add", "mul", "sort", "reverse")
LOCAL_CORPUS_SUFFIXES = (".txt", ".json", ".jsonl")
MAX_DIFFICULTY = 4
MAX_MRL_DEPTH = 6
ACTIVATION_COMPRESSION = ("none", "int8", "binary")
MODEL_PRESETS = ("tiny", "small", "base", "1b")  # their shapes: ryot_ray.model.build.PRESETS
ARCHITECTURES = ("llama", "bitnet")  # their builders: ryot_ray.model.build.ARCHITECTURES
GGUF_TYPES = ("tq2_0", "tq1_0", "q8_0", "f16")  # what `export --gguf` writes linears in (ggml's names)
FFN_ACTIVATIONS = ("silu", "relu2")  # what the native step's FFN computes (engine.c FFN_*)


@dataclass
class CorpusConfig:
    """A text corpus for language-model training: a hub dataset name or a local file."""

    path: str  # hub name (e.g. "wikitext") or a local .txt / .json / .jsonl file
    name: str | None = None  # hub configuration, e.g. "wikitext-2-raw-v1"
    split: str = "train"
    text_field: str = "text"
    block_size: int = field(default=128, metadata=_at_least(8))
    max_blocks: int = field(default=1000, metadata=_at_least(1))


@dataclass
class DataConfig:
    families: list[str] = field(
        default_factory=lambda: list(TASK_FAMILIES), metadata=_choices(*TASK_FAMILIES)
    )
    difficulties: list[int] = field(
        default_factory=lambda: [1, 2, 3], metadata=_between(1, MAX_DIFFICULTY)
    )
    train_per_level: int = field(default=2000, metadata=_at_least(1))
    eval_per_level: int = field(default=64, metadata=_at_least(1))
    scratchpad: bool = True  # worked solution before the answer
    corpus: CorpusConfig | None = None


@dataclass
class ModelConfig:
    preset: str = field(default="small", metadata=_choices(*MODEL_PRESETS))
    # llama: the Llama block, a BitLinear norming its own input (SubLN); bitnet: the BitNet
    # b1.58 2B4T block of `transformers` (sub-norms before o_proj and down_proj, squared ReLU)
    architecture: str = field(default="llama", metadata=_choices(*ARCHITECTURES))
    # bitnet: every decoder linear is a BitLinear (b1.58 QAT); none: the fp32 reference.
    quantization: str = field(default="bitnet", metadata=_choices("bitnet", "none"))
    # The FFN's gate activation (None: the architecture's own, silu for llama, relu2 for
    # bitnet) and one matrix for the embeddings and lm_head: llama.cpp's bitnet graph runs
    # silu with tied embeddings, so a model for `export --gguf` is built that way.
    ffn_activation: str | None = field(default=None, metadata=_choices(*FFN_ACTIVATIONS))
    tie_embeddings: bool = False
    # A transformers checkpoint to start from (of `architecture`: a Llama or a bitnet model,
    # its ternary weights as they are): a local directory, or a hub name for users online.
    pretrained: str | None = None
    # The compression knobs of a BitNet model (the fp32 reference is dense, full width):
    # nested FFN widths I, I/2, ... I/2^(depth-1) trained together (Matryoshka);
    mrl_depth: int = field(default=1, metadata=_between(1, MAX_MRL_DEPTH))
    # FFN activations kept per token: a fraction of the width if <= 1 (1: dense), else a count;
    sparse_k: float = field(default=1.0, metadata=_at_least(0.0))
    # what BitLinear keeps of its activations for backward: fp32 (none), int8 codes
    # (exact), or sign bits and a per-token scale (binary, lossy)
    activation_compression: str = field(default="none", metadata=_choices(*ACTIVATION_COMPRESSION))


@dataclass
class TrainConfig:
    """Training budget and the b1.58 two-stage schedule.

    Stage 1 (first half of the steps): linear warm-up to `lr`, then `lr` held, with
    weight decay `weight_decay`. Stage 2 (second half): the learning rate drops to
    `lr_stage2` and follows a cosine to zero; weight decay is 0.
    """

    workers: int = field(default=2, metadata=_at_least(1))
    cpus_per_worker: int = field(default=1, metadata=_at_least(1))
    epochs: int = field(default=8, metadata=_at_least(1))
    batch_size: int = field(default=32, metadata=_at_least(1))  # per worker, per micro-step
    grad_accum: int = field(default=1, metadata=_at_least(1))
    lr: float = field(default=1.5e-3, metadata=_at_least(0.0))
    lr_stage2: float = field(default=1e-3, metadata=_at_least(0.0))
    weight_decay: float = field(default=0.1, metadata=_at_least(0.0))
    warmup_steps: int = field(default=100, metadata=_at_least(0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = field(default=1.0, metadata=_at_least(0.0))  # 0 turns clipping off
    bf16: bool = False  # bf16 autocast on CPU
    max_failures: int = field(default=2, metadata=_at_least(-1))  # worker restarts; -1: no limit
    spike_factor: float = field(default=3.0, metadata=_at_least(1.0))  # anomaly threshold


@dataclass
class EvalConfig:
    batch_size: int = field(default=64, metadata=_at_least(1))


@dataclass
class InferenceConfig:
    """How a trained model answers: the frozen model's layout and the reasoning paths."""

    rlvr_paths: int = field(default=1, metadata=_between(1, 64))  # 1: one greedy path
    adaptive_paths: bool = True  # stop once a wave of paths agrees; budget grows with difficulty
    path_window: int = field(default=2, metadata=_between(1, 64))  # paths per wave
    temperature: float = field(default=0.7, metadata=_at_least(0.0))
    top_p: float = field(default=0.95, metadata=_between(0.0, 1.0))
    ffn_level: int = field(default=0, metadata=_at_least(0))  # nested FFN width: 0 full, 1 half, ...
    tile_size: int | None = field(default=None, metadata=_at_least(1))  # 16-row groups; None: autotuned
    int8_embeddings: bool = False  # int8 embeddings and lm_head (lossy: measured by validate)
    kv_cache: str = field(default="fp32", metadata=_choices("fp32", "fp16"))  # fp16: half the cache (lossy)


@dataclass
class ValidateConfig:
    """Where the Phase 1 targets are judged: the model shape a user deploys."""

    # a preset (MODEL_PRESETS) or a local transformers config; null: no deployment section
    deploy_preset: str | None = "1b"


@dataclass
class Config:
    experiment: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> Config:
        return _build(cls, data, source, "")


@dataclass
class Phase1Targets:
    """The Phase 1 baselines an optimized configuration is held to."""

    ttft_ms: float = field(metadata=_at_least(0.0))  # at most
    decode_tokens_per_s: float = field(metadata=_at_least(0.0))  # at least
    memory_mb: float = field(metadata=_at_least(0.0))  # at most
    accuracy_retention: float = field(metadata=_between(0.0, 1.0))  # at least


SHIPPED_DIRS = ("configs", "search_spaces")  # shipped with the package (pyproject.toml maps them in)


def shipped(path: str | Path) -> Path:
    """`path` as given where it exists; else, for `configs/...` and `search_spaces/...`,
    the copy installed with ryot-ray (a wheel: inside the package; a source checkout:
    beside it), so the defaults work from any directory."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] not in SHIPPED_DIRS:
        return path
    package = Path(__file__).resolve().parent
    return next((root / path for root in (package, package.parent) if (root / path).is_file()), path)


def load_phase1(path: str | Path) -> Phase1Targets:
    path = shipped(path)
    return _build(Phase1Targets, read_yaml(path), str(path), "")


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config and apply `key.path=value` overrides."""
    path = shipped(path)
    data = read_yaml(path)
    for override in overrides:
        _apply_override(data, override)
    config = Config.from_dict(data, str(path))
    _check_local_paths(config, path)
    _check_compression_knobs(config, path)
    return config


def _check_compression_knobs(config: Config, source: Path) -> None:
    model = config.model
    if model.sparse_k > 1 and model.sparse_k != int(model.sparse_k):
        raise ConfigError(f"{source}: model.sparse_k: {model.sparse_k!r} is neither a fraction in (0, 1] "
                          "nor a whole number of activations")
    if model.sparse_k == 0:
        raise ConfigError(f"{source}: model.sparse_k: 0 keeps no activation (use a fraction in (0, 1] or a count)")
    if config.inference.ffn_level >= model.mrl_depth:
        raise ConfigError(f"{source}: inference.ffn_level: {config.inference.ffn_level} needs model.mrl_depth "
                          f"above it (the model has {model.mrl_depth} nested width(s))")
    _check_tile(config.inference.tile_size, source)
    if model.architecture == "bitnet" and model.sparse_k != 1:
        raise ConfigError(f"{source}: model.sparse_k is not built for architecture bitnet yet "
                          "(it runs on the llama architecture)")
    shaped = {"ffn_activation": model.ffn_activation is not None, "tie_embeddings": model.tie_embeddings}
    if model.pretrained and any(shaped.values()):
        raise ConfigError(f"{source}: model.{', '.join(k for k, v in shaped.items() if v)} shape(s) a model built "
                          "from a preset; a pretrained model keeps its checkpoint's")
    knobs = (model.mrl_depth > 1, model.sparse_k != 1, model.activation_compression != "none")
    if model.quantization != "bitnet" and any(knobs):
        raise ConfigError(f"{source}: model.mrl_depth, sparse_k and activation_compression are BitNet knobs; "
                          f"the {model.quantization!r} reference is dense, full width")


def _check_tile(tile_size: int | None, source: Path) -> None:
    """Only tile sizes that have kernels; the native library says which (a leaf module,
    loaded here lazily). Without it the torch fallback runs and ignores the tile."""
    if tile_size is None:
        return
    from ryot_ray.kernels.native import constants, kernels

    if kernels()[0] is not None and tile_size not in constants().tile_rows:
        allowed = ", ".join(map(str, constants().tile_rows))
        raise ConfigError(f"{source}: inference.tile_size: {tile_size} has no kernel (one of {allowed})")


def with_overrides(config: Config, overrides: list[str], source: str) -> Config:
    """`config` with `key.path=value` overrides applied, checked like a loaded one."""
    data = config.to_dict()
    for override in overrides:
        _apply_override(data, override)
    config = Config.from_dict(data, source)
    _check_compression_knobs(config, Path(source))
    return config


def _check_local_paths(config: Config, source: Path) -> None:
    """Local files named by the config exist (hub names are left to the hub)."""
    pretrained = config.model.pretrained
    if pretrained and pretrained.startswith(("/", ".", "~")) and not Path(pretrained).expanduser().is_dir():
        raise ConfigError(f"{source}: model.pretrained: no checkpoint directory {pretrained}")
    described = Path(pretrained).expanduser() / "config.json" if pretrained else None
    if described and described.is_file():
        found = json.loads(described.read_text()).get("model_type")
        if found != config.model.architecture:
            hint = (f"set model.architecture: {found}" if found in ARCHITECTURES
                    else f"ryot-ray reads {' and '.join(ARCHITECTURES)} models")
            raise ConfigError(f"{source}: model.pretrained: {pretrained} is a {found!r} model; {hint}")
    corpus = config.data.corpus
    if corpus and Path(corpus.path).suffix in LOCAL_CORPUS_SUFFIXES and not Path(corpus.path).is_file():
        raise ConfigError(f"{source}: data.corpus.path: no such file {corpus.path}")


def _apply_override(data: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override}: expected key.path=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override}: {part} is not a section")
    node[leaf] = value


def _build(cls: type, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(fields)})"
        )
    values = {}
    for name, value in data.items():
        key = prefix + name
        values[name] = _check(hints[name], value, source, key, fields[name].metadata)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing key {prefix}{missing[0]}")
    return cls(**values)


def _check(hint: Any, value: Any, source: str, key: str, meta: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _check(hint, value, source, key, meta)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    if origin is list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{source}: {key}: expected a non-empty list, got {value!r}")
        return [_check(args[0], item, source, f"{key}[{i}]", meta) for i, item in enumerate(value)]
    value = _coerce(hint, value, source, key)
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(map(str, meta["choices"]))
        raise ConfigError(f"{source}: {key}: {value!r} is not one of {allowed}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{source}: {key}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{source}: {key}: {value!r} is above the maximum {meta['max']}")
    return value


def _coerce(hint: type, value: Any, source: str, key: str) -> Any:
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key}: expected {hint.__name__}, got {value!r}")
