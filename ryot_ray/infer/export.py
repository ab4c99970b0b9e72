"""Export a trained model as a GGUF file for llama.cpp (`ryot-ray export --gguf`).

llama.cpp's `bitnet` graph is the BitNet b1.58 block: RMSNorm before q/k/v and gate/up,
sub-norms before o and down, the FFN gate in SiLU, and the token embeddings as the output
matrix. A model of `model.architecture: bitnet` built with `ffn_activation: silu` and
`tie_embeddings: true` is that graph, so its file computes what the model computes; other
models are refused, naming what differs. The ternary linears are written as the
ternarized weights (codes · scale), which TQ2_0 / TQ1_0 hold exactly but for the scale
in fp16; a row those formats cannot block (a multiple of 256) falls back to Q8_0 (or to
f16 where Q8_0's blocks of 32 do not divide it either), which hold ternary values as
exactly. The linears' inputs are rounded as llama.cpp rounds them for each format
(`INPUT_ROUNDING`), not per token as ours are, so logits differ a little; `bench decode
--llama-bench` compares greedy answers. A model with nested FFN widths is written at its
full width. The file is written with the `gguf` package, llama.cpp's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ryot_ray.config import GGUF_TYPES, ConfigError
from ryot_ray.model.bitlinear import BitLinear

TERNARY_TYPES = tuple(t for t in GGUF_TYPES if t.startswith("tq"))
T = gguf.MODEL_TENSOR
# the names of transformers' BitNetForCausalLM (and ours) as llama.cpp's bitnet graph names them
MODEL_TENSORS = {"model.embed_tokens": T.TOKEN_EMBD, "model.norm": T.OUTPUT_NORM}
BLOCK_TENSORS = {
    "input_layernorm": T.ATTN_NORM, "self_attn.q_proj": T.ATTN_Q, "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V, "self_attn.attn_sub_norm": T.ATTN_SUB_NORM, "self_attn.o_proj": T.ATTN_OUT,
    "post_attention_layernorm": T.FFN_NORM, "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP,
    "mlp.ffn_sub_norm": T.FFN_SUB_NORM, "mlp.down_proj": T.FFN_DOWN,
}
# what llama.cpp rounds a linear's input to before multiplying by weights of each format
# (ours: 8-bit per token), so what a fallback format changes
INPUT_ROUNDING = {"TQ2_0": "8-bit blocks of 256", "TQ1_0": "8-bit blocks of 256", "Q8_0": "8-bit blocks of 32",
                  "F16": "f16, not 8 bits"}
# llama.cpp's BPE reader requires merges; this one pairs two special tokens, which no
# byte-level word holds, so none applies and every character stays one token
NO_MERGE = "<s> </s>"


class ExportError(ConfigError):
    """A model or tokenizer the GGUF file cannot hold as it computes; the message names what."""


@dataclass
class ExportedTensor:
    name: str  # the GGUF name
    type: str  # GGML type name
    shape: tuple[int, ...]  # rows, columns as torch has them
    ternary: bool  # a ternary linear of the model
    max_error: float  # of the dequantized values, relative to the largest magnitude


def default_type(model: PreTrainedModel) -> str:
    return "tq2_0" if _is_ternary(model) else "f16"


def _is_ternary(model: PreTrainedModel) -> bool:
    return any(isinstance(module, BitLinear) for module in model.modules())


def check_exportable(model: PreTrainedModel, weight_type: str) -> None:
    """Refuse, by name, what llama.cpp's bitnet graph would compute differently."""
    config = model.config
    if config.model_type != "bitnet":
        raise ExportError(f"a {config.model_type!r} model: GGUF export writes llama.cpp's bitnet graph "
                          "(train with model.architecture: bitnet, ffn_activation: silu, tie_embeddings: true)")
    if config.hidden_act != "silu":
        raise ExportError(f"ffn_activation {config.hidden_act!r}: llama.cpp's bitnet graph runs its FFN gate in silu "
                          "(a model trained with model.ffn_activation: silu)")
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise ExportError("untied embeddings: llama.cpp's bitnet graph computes logits with the token embeddings "
                          "(a model trained with model.tie_embeddings: true)")
    if any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in model.model.layers.modules()):
        raise ExportError("linears with a bias: llama.cpp's bitnet graph has none")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise ExportError("llama.cpp's bitnet graph needs heads × head_dim = hidden size")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope {rope}: only unscaled RoPE is written to GGUF")
    if weight_type in TERNARY_TYPES and not _is_ternary(model):
        raise ExportError(f"--type {weight_type}: a full-precision model's weights are not ternary "
                          "(q8_0 or f16)")


def _weights(model: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor as the model computes with it, ternary?) for every tensor, one at a
    time (a BitLinear's weight ternarized, full width); not lm_head, which is tied."""
    ternary = {f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, BitLinear)}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name in ternary:
            codes, scale = ternary[name].ternary_weight()
            yield name, codes.float() * scale, True
        else:
            yield name, tensor.detach().float(), False


def gguf_name(name: str) -> str:
    """`model.layers.3.mlp.down_proj.weight` -> `blk.3.ffn_down.weight`."""
    module, _, kind = name.rpartition(".")
    if module in MODEL_TENSORS:
        return f"{gguf.TENSOR_NAMES[MODEL_TENSORS[module]]}.{kind}"
    _, _, index, block_module = module.split(".", 3) if module.startswith("model.layers.") else ("", "", "", module)
    if block_module not in BLOCK_TENSORS:
        raise ExportError(f"{name}: no tensor of llama.cpp's bitnet graph")
    return f"{gguf.TENSOR_NAMES[BLOCK_TENSORS[block_module]].format(bid=int(index))}.{kind}"


def _tensor_type(weight_type: str, ternary: bool, name: str, columns: int) -> str:
    """The GGML type of one tensor: norms in f32; ternary linears as asked, Q8_0 where a
    ternary format cannot block the row; embeddings and fp32 linears in Q8_0 (f16 if asked);
    f16 where a row is not a whole number of Q8_0 blocks."""
    if name.endswith("norm.weight"):
        return "f32"
    wanted = weight_type if ternary or weight_type not in TERNARY_TYPES else "q8_0"
    if wanted in TERNARY_TYPES and columns % gguf.QK_K:
        wanted = "q8_0"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted.upper()]][0]
    return wanted if columns % block == 0 else "f16"


def _vocabulary(tokenizer: PreTrainedTokenizerBase, size: int) -> tuple[list[str], list[int]]:
    """ryot-ray's character tokenizer as a byte-level BPE vocabulary without merges: one
    token per character, as it tokenizes (padded with unused tokens to the model's rows)."""
    described = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    special = set(tokenizer.all_special_tokens)
    vocab = described.get("vocab", {})
    if described["type"] != "WordLevel" or any(len(t) != 1 for t in vocab if t not in special):
        raise ExportError(f"a {described['type']} tokenizer: GGUF export writes ryot-ray's character tokenizer; "
                          "other tokenizers are not built")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # space 'Ġ', newline 'Ċ'
    tokens, types = [f"<unused{i}>" for i in range(size)], [gguf.TokenType.UNUSED] * size
    for text, index in vocab.items():
        if text in special:
            tokens[index], types[index] = text, gguf.TokenType.CONTROL
        else:
            (tokens[index], _), = byte_level.pre_tokenize_str(text)
            types[index] = gguf.TokenType.NORMAL
    return tokens, types


def export_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path,
                weight_type: str | None = None) -> list[ExportedTensor]:
    """Write `model` and its tokenizer to `path` (whole, or not at all); return each
    tensor's type, shape and the largest error of its values as llama.cpp reads them."""
    weight_type = weight_type or default_type(model)
    if weight_type not in GGUF_TYPES:
        raise ExportError(f"--type {weight_type!r}: one of {', '.join(GGUF_TYPES)}")
    check_exportable(model, weight_type)
    vocabulary = _vocabulary(tokenizer, model.config.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BITNET])
        _add_hyperparameters(writer, model.config, weight_type)
        _add_tokenizer(writer, tokenizer, *vocabulary)
        exported = _add_tensors(writer, model, weight_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return exported


def _add_hyperparameters(writer: gguf.GGUFWriter, config, weight_type: str) -> None:
    writer.add_name("ryot-ray")
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{weight_type.upper()}"])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, tokens: list[str],
                   token_types: list[int]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges([NO_MERGE])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id])


def _add_tensors(writer: gguf.GGUFWriter, model: PreTrainedModel, weight_type: str) -> list[ExportedTensor]:
    exported = []
    for name, weight, ternary in _weights(model):
        array, target = weight.numpy(), gguf_name(name)
        kind = _tensor_type(weight_type, ternary, target, array.shape[-1])
        ggml_type = gguf.GGMLQuantizationType[kind.upper()]
        data = gguf.quants.quantize(array, ggml_type)
        writer.add_tensor(target, data, raw_dtype=ggml_type)
        error = np.abs(gguf.quants.dequantize(data, ggml_type).reshape(array.shape) - array).max()
        exported.append(ExportedTensor(target, ggml_type.name, tuple(array.shape), ternary,
                                       float(error / max(np.abs(array).max(), 1e-30))))
    return exported
