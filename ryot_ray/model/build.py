"""Build the causal LM a config asks for: a Llama from `transformers`, then its linears.

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

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ryot_ray.config import ModelConfig
from ryot_ray.model.attention import pick_attention
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.matryoshka import to_matryoshka
from ryot_ray.model.norm import fuse_norms
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


def llama_config(preset: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    shape = dict(PRESETS[preset])
    vocab_size = max(shape.pop("vocab_size", 0), len(tokenizer))
    return LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )


def to_bitnet(model: LlamaForCausalLM, config: ModelConfig) -> LlamaForCausalLM:
    """Swap every nn.Linear inside the decoder blocks for a BitLinear with the same
    weights, nest the MLPs and fuse the RMSNorms."""
    for module in list(model.model.layers.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, BitLinear.from_linear(child, config.activation_compression))
    compression = config.activation_compression
    return fuse_norms(to_matryoshka(model, config.mrl_depth, config.sparse_k, compression), compression)


LINEAR_BUILDERS: dict[str, Callable[[LlamaForCausalLM, ModelConfig], LlamaForCausalLM]] = {
    "bitnet": to_bitnet,
    "none": lambda model, config: model,
}


def check_knobs(config: ModelConfig) -> None:
    """The knob checks that need a preset's FFN size, without building the model (a
    pretrained model's size is checked when it is built)."""
    if config.quantization == "bitnet" and not config.pretrained:
        checked_widths(PRESETS[config.preset]["intermediate_size"], config.mrl_depth, config.sparse_k)


def build_model(
    config: ModelConfig, tokenizer: PreTrainedTokenizerBase, llama: LlamaConfig | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> LlamaForCausalLM:
    """A fresh model at a preset, the given Llama config, or `config.pretrained`'s weights;
    `weights` (a full-precision state dict of the same shapes) replace those before the
    linears are swapped, so a BitNet model can start from a trained fp32 one."""
    if llama is not None:
        model = LlamaForCausalLM(copy.deepcopy(llama))  # a model changes its config (attention): its own
    elif config.pretrained:
        model = LlamaForCausalLM.from_pretrained(config.pretrained, dtype="float32", use_safetensors=True)
    else:
        model = LlamaForCausalLM(llama_config(config.preset, tokenizer))
    if weights is not None:
        model.load_state_dict(weights)
    return pick_attention(LINEAR_BUILDERS[config.quantization](model, config), config.activation_compression)
