"""Models from `transformers` checkpoints (`model.pretrained`: a local directory, or a hub
name for users online): a Llama, or a BitNet b1.58 2B4T (`bitnet`) model.

A `bitnet` checkpoint is read as the full-precision `BitNetForCausalLM` the model builder
turns into BitLinears. `transformers`' `bitnet` quantization stores a linear three ways:
latent float weights it ternarizes as it loads them (`autobitlinear`, "online": read as
they are); packed 2-bit codes and a `weight_scale` (`bitlinear`, its default: weight =
codes / weight_scale); ternary values and a `weight_scale` (`autobitlinear`, "offline":
weight = values · weight_scale). The last two become, for a BitNet model, latent weights
that ternarize back to exactly those codes and that scale (`latent_weight`), so it
computes what the checkpoint does and training goes on from there; for the
full-precision model, the weights the checkpoint computes with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoConfig, BitNetConfig, BitNetForCausalLM, LlamaForCausalLM, PreTrainedModel
from transformers.integrations.bitnet import unpack_weights

from ryot_ray.config import ARCHITECTURES, ConfigError, ModelConfig

FILES = ["*.json", "*.safetensors", "tokenizer*"]  # what a hub download fetches
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"  # save_pretrained's names


def local_copy(name: str) -> Path:
    """The checkpoint's directory: `name` itself, or the hub's cached download of it."""
    path = Path(name).expanduser()
    return path if path.is_dir() else Path(snapshot_download(name, allow_patterns=FILES))


def _ternary_storage(config) -> dict | None:
    """The checkpoint's `bitnet` quantization config (None: full precision), checked."""
    quantization = getattr(config, "quantization_config", None) or {}
    if not hasattr(quantization, "get"):
        quantization = quantization.to_dict()
    if quantization.get("quant_method") != "bitnet":
        return None
    if config.model_type != "bitnet":
        raise ConfigError(f"model.pretrained: a {config.model_type!r} model with bitnet quantization (its linears "
                          "norm their own inputs); ryot-ray reads bitnet quantization on bitnet models")
    if quantization.get("use_rms_norm"):
        raise ConfigError("model.pretrained: bitnet quantization with use_rms_norm (a norm inside each linear) "
                          "is not the bitnet block ryot-ray builds")
    return quantization


def pretrained_model_config(name: str) -> ModelConfig:
    """What the model builder makes of checkpoint `name` as it is: its architecture, with
    BitLinears where `transformers` computes its linears in ternary (a `bitnet`
    quantization config), the full-precision model otherwise."""
    config = AutoConfig.from_pretrained(local_copy(name))
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(f"model.pretrained: {name} is a {config.model_type!r} model; ryot-ray reads "
                          f"{' and '.join(ARCHITECTURES)} models")
    ternary = _ternary_storage(config) is not None
    return ModelConfig(architecture=config.model_type, quantization="bitnet" if ternary else "none", pretrained=name)


def latent_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Latent weights whose ternary codes and absmean scale (`quantize.ternarize`) are
    `codes` and `scale`: codes · scale / p, p the share of nonzero codes (their absmean is
    then `scale`, and every nonzero one rounds to ±1)."""
    nonzero = codes.ne(0).float().mean().clamp(min=1.0 / codes.numel())
    return codes.float() * (scale / nonzero)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The model's tensors: `model.safetensors`, or the shards its index names (not the
    other safetensors beside them, e.g. a ryot-ray checkpoint's optimizer state)."""
    index = directory / WEIGHTS_INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [WEIGHTS]
    if not all((directory / file).is_file() for file in files):
        raise ConfigError(f"model.pretrained: {directory} has no {' '.join(files)} (safetensors weights)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state |= load_file(directory / file)
    return state


def _bitnet(directory: Path, ternary_latents: bool) -> BitNetForCausalLM:
    config = BitNetConfig.from_pretrained(directory)
    storage = _ternary_storage(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the model builder makes the BitLinears
    state = _tensors(directory)
    packed = storage is not None and storage.get("linear_class", "bitlinear") == "bitlinear"
    for key in [k for k in state if k.endswith(".weight_scale")]:
        prefix = key.removesuffix("_scale")
        scale = state.pop(key).float()
        if packed:  # weight = codes / weight_scale
            codes, scale = unpack_weights(state[prefix], dtype=torch.float32), 1.0 / scale
        else:  # autobitlinear offline: weight = values · weight_scale
            codes = state[prefix].float()
        state[prefix] = latent_weight(codes, scale) if ternary_latents else codes * scale
    model = BitNetForCausalLM(config)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"model.pretrained: {directory} does not hold a BitNetForCausalLM's weights (missing "
                          f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model


def load_pretrained(config: ModelConfig) -> PreTrainedModel:
    """The full-precision `transformers` model of `config.pretrained`, of
    `config.architecture` (a local checkpoint's is checked with the config, a hub
    model's here); a bitnet model's stored ternary linears as latent weights where the
    BitNet model is built (`quantization: bitnet`), as they compute otherwise."""
    directory = local_copy(config.pretrained)
    described = AutoConfig.from_pretrained(directory)
    if described.model_type != config.architecture:
        raise ConfigError(f"model.pretrained: {config.pretrained} is a {described.model_type!r} model, "
                          f"not {config.architecture!r}")
    if described.model_type == "bitnet":
        return _bitnet(directory, ternary_latents=config.quantization == "bitnet")
    _ternary_storage(described)  # refuses a quantized Llama
    return LlamaForCausalLM.from_pretrained(directory, dtype="float32", use_safetensors=True)
