"""Models from `transformers` checkpoints (`model.pretrained`: a local directory, or a hub
name for users online): a Llama, or a BitNet b1.58 2B4T (`bitnet`) model.

A `bitnet` checkpoint is read as the full-precision `BitNetForCausalLM` the model builder
turns into BitLinears: float weights as they are, and ternary weights stored packed
(`transformers`' `bitnet` quantization, "offline": 2-bit codes and one `weight_scale`
per linear, weight = codes / weight_scale) as latent weights that ternarize back to
exactly those codes and that scale (`latent_weight`), so the BitNet model computes what
the checkpoint does and training goes on from there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoConfig, BitNetConfig, BitNetForCausalLM, LlamaForCausalLM, PreTrainedModel
from transformers.integrations.bitnet import unpack_weights

from ryot_ray.config import ARCHITECTURES, ConfigError, ModelConfig

FILES = ["*.json", "*.safetensors", "tokenizer*"]  # what a hub download fetches


def local_copy(name: str) -> Path:
    """The checkpoint's directory: `name` itself, or the hub's cached download of it."""
    path = Path(name).expanduser()
    return path if path.is_dir() else Path(snapshot_download(name, allow_patterns=FILES))


def pretrained_model_config(name: str) -> ModelConfig:
    """What the model builder makes of checkpoint `name` as it is: its architecture, with
    BitLinears where `transformers` computes its linears in ternary (a `bitnet`
    quantization config), the full-precision model otherwise."""
    config = AutoConfig.from_pretrained(local_copy(name))
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(f"model.pretrained: {name} is a {config.model_type!r} model; ryot-ray reads "
                          f"{' and '.join(ARCHITECTURES)} models")
    quantization = getattr(config, "quantization_config", None) or {}
    ternary = quantization.get("quant_method") == "bitnet"
    return ModelConfig(architecture=config.model_type, quantization="bitnet" if ternary else "none", pretrained=name)


def latent_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Latent weights whose ternary codes and absmean scale (`quantize.ternarize`) are
    `codes` and `scale`: codes · scale / p, p the share of nonzero codes (their absmean is
    then `scale`, and every nonzero one rounds to ±1)."""
    nonzero = codes.ne(0).float().mean().clamp(min=1.0 / codes.numel())
    return codes.float() * (scale / nonzero)


def _bitnet(directory: Path) -> BitNetForCausalLM:
    config = BitNetConfig.from_pretrained(directory)
    quantization = getattr(config, "quantization_config", None) or {}
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the model builder makes the BitLinears
    mode = quantization.get("quantization_mode", "online") if quantization else None
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state |= load_file(file)
    if mode == "offline":
        for key in [k for k in state if k.endswith(".weight_scale")]:
            prefix = key.removesuffix("_scale")
            codes = unpack_weights(state[prefix], dtype=torch.float32)
            state[prefix] = latent_weight(codes, 1.0 / state.pop(key).float())
    model = BitNetForCausalLM(config)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{directory}: not the weights of a BitNetForCausalLM (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model


def load_pretrained(name: str, architecture: str) -> PreTrainedModel:
    """The full-precision `transformers` model of checkpoint `name`, of `architecture`
    (a local checkpoint's is checked with the config; a hub model's here)."""
    found = AutoConfig.from_pretrained(local_copy(name)).model_type
    if found != architecture:
        raise ValueError(f"model.pretrained: {name} is a {found!r} model, not {architecture!r}")
    if architecture == "bitnet":
        return _bitnet(local_copy(name))
    return LlamaForCausalLM.from_pretrained(name, dtype="float32", use_safetensors=True)
