"""Build the causal LM a config asks for: a Llama (or the BitNet b1.58 2B4T block, `model.
architecture: bitnet`) from `transformers`, then its linears.

The `quantization` knob picks the linear layer when the model is built: `bitnet` turns
every linear inside the decoder blocks into a `BitLinear` (keeping the activations for
backward as `activation_compression` says) and every MLP into a `MatryoshkaMLP`
(`mrl_depth` nested widths, `sparse_k` activations kept, its SiLU gate keeping its inputs
as `activation_compression` says) and runs the decoder's RMSNorms as fused steps; with
activations compressed, attention keeps its inputs in bf16 (`attention.py`); `none`
keeps `nn.Linear` and autograd, the dense full-precision reference of the same
architecture. Embeddings and `lm_head` stay fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.models.bitnet.modeling_bitnet import BitNetRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ryot_ray.config import ModelConfig
from ryot_ray.model.attention import pick_attention
from ryot_ray.model.bitlinear import BareBitLinear, BitLinear
from ryot_ray.model.matryoshka import to_matryoshka
from ryot_ray.model.norm import fuse_norms
from ryot_ray.model.pretrained import load_pretrained
from ryot_ray.model.widths import checked_widths

PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256),
    # 25-50M parameters in the decoder blocks: at sequence 256, batch 32 training memory is
    # measured where activations and weights, not the runtime, should dominate it
    # (`bench train|compression --set model.preset=base --sequence 256`).
    "base": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512),
    # TinyLlama-1.1B shapes; the 32000-token vocabulary keeps lm_head at its real size.
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
               vocab_size=32000),
}


@dataclass(frozen=True)
class Architecture:
    config: type[PretrainedConfig]  # the `transformers` classes
    model: type[PreTrainedModel]
    bit_linear: type[BitLinear]  # what its decoder linears become
    norm: type[nn.Module]  # its RMSNorm, fused when the model is built


ARCHITECTURES = {
    "llama": Architecture(LlamaConfig, LlamaForCausalLM, BitLinear, LlamaRMSNorm),
    # every linear's input is normed by a layer of the block (two of them sub-norms)
    "bitnet": Architecture(BitNetConfig, BitNetForCausalLM, BareBitLinear, BitNetRMSNorm),
}


def model_config(preset: str, tokenizer: PreTrainedTokenizerBase, architecture: str = "llama",
                 ffn_activation: str | None = None, tie_embeddings: bool = False) -> PretrainedConfig:
    """The `transformers` config of a preset (`ffn_activation` None: the architecture's own)."""
    shape = dict(PRESETS[preset])
    vocab_size = max(shape.pop("vocab_size", 0), len(tokenizer))
    if ffn_activation:
        shape["hidden_act"] = ffn_activation
    return ARCHITECTURES[architecture].config(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_embeddings,
        **shape,
    )


def to_bitnet(model: PreTrainedModel, config: ModelConfig) -> PreTrainedModel:
    """Swap every nn.Linear inside the decoder blocks for a BitLinear (the architecture's)
    with the same weights, nest the MLPs and fuse the RMSNorms."""
    architecture, compression = ARCHITECTURES[config.architecture], config.activation_compression
    for module in list(model.model.layers.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, architecture.bit_linear.from_linear(child, compression))
    model = to_matryoshka(model, config.mrl_depth, config.sparse_k, compression)
    return fuse_norms(model, architecture.norm, compression)


LINEAR_BUILDERS: dict[str, Callable[[PreTrainedModel, ModelConfig], PreTrainedModel]] = {
    "bitnet": to_bitnet,
    "none": lambda model, config: model,
}


# how `transformers` ternarizes a bitnet block's linears as it loads their latent weights
# (AutoBitLinear: per-tensor absmean weights, per-token absmax int8 activations, ours)
ONLINE_TERNARY = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


def exported_config(model: PreTrainedModel, config: ModelConfig) -> PretrainedConfig | None:
    """The `config.json` with which `transformers` computes what `model` computes from its
    weights as they are saved: a full-precision model, or a bitnet block's ternary model;
    None for a Llama BitNet model (no `transformers` class has its per-linear SubLN)."""
    if config.quantization == "bitnet" and config.architecture != "bitnet":
        return None
    exported = copy.deepcopy(model.config)
    exported.architectures = [type(model).__name__]
    if config.quantization == "bitnet":
        exported.quantization_config = ONLINE_TERNARY
    return exported


def check_knobs(config: ModelConfig) -> None:
    """The knob checks that need a preset's FFN size, without building the model (a
    pretrained model's size is checked when it is built)."""
    if config.quantization == "bitnet" and not config.pretrained:
        checked_widths(PRESETS[config.preset]["intermediate_size"], config.mrl_depth, config.sparse_k)


def build_model(
    config: ModelConfig, tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """A fresh model of `config.architecture` at a preset, at the given `transformers`
    config, or `config.pretrained`'s weights; `weights` (a full-precision state
    dict of the same shapes) replace those before the linears are swapped, so a BitNet
    model can start from a trained fp32 one."""
    architecture = ARCHITECTURES[config.architecture]
    if hf_config is not None:
        model = architecture.model(copy.deepcopy(hf_config))  # a model changes its config (attention): its own
    elif config.pretrained:
        model = load_pretrained(config)
    else:
        model = architecture.model(model_config(config.preset, tokenizer, config.architecture, config.ffn_activation,
                                                config.tie_embeddings))
    if weights is not None:
        model.load_state_dict(weights)
    compression = config.activation_compression if config.quantization == "bitnet" else "none"
    return pick_attention(LINEAR_BUILDERS[config.quantization](model, config), compression)
