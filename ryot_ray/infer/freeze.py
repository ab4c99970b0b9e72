"""Freeze a trained model into the inference layout of the native step (a `FrozenModel`).

A BitNet model's BitLinears are ternarized once and packed 2 bits a weight in the tile
layout; the linears that share an input are fused into one matrix of segments (q/k/v,
gate/up), each segment keeping its own RMSNorm gain and weight scale. A model trained
with top-k FFN activations gets its down-projection packed by columns (only the kept
inputs' columns are read), or by tiles with `sparse=False` (dense, to measure what the
sparsity buys). The fp32 reference keeps its linears as fp32 rows: the same step then
compares the weight formats and nothing else.

The embeddings and `lm_head` were trained in full precision; with `int8_embeddings` they
become int8 rows with one scale each (a quarter of the bytes, lossy: `validate`
measures the effect). The tile of each fused shape is the one autotuned for this CPU
(`ryot-ray bench kernels --autotune`, or `tune_missing`) unless `rows_per_tile` is given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from ryot_ray.config import ARCHITECTURES, FFN_ACTIVATIONS
from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.kernels.autotune import load_cache, tile_for, tokens_for
from ryot_ray.kernels.pack import pack_int8_rows, pack_ternary, pack_ternary_columns
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.matryoshka import MatryoshkaMLP, TopK
from ryot_ray.model.quantize import EPS, ternarize


class FreezeError(ValueError):
    """A model the native step cannot run; the message names what."""


def fused_shapes(config) -> dict[str, tuple[int, int]]:
    """(K, N) of each fused linear of a Llama config: what the tile is tuned for."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {"qkv": (hidden, q_dim + 2 * kv_dim), "o": (q_dim, hidden), "gate_up": (hidden, 2 * inter),
            "down": (inter, hidden)}


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes with one absmax scale per row: weight ~ codes * scale[:, None]."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=EPS) / 127.0
    return (weight / scale[:, None]).round().to(torch.int8), scale


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().contiguous().numpy().copy()


def _linears(model: PreTrainedModel, index: int) -> dict[str, list[nn.Linear]]:
    layer = model.model.layers[index]
    attention, mlp = layer.self_attn, layer.mlp
    return {"qkv": [attention.q_proj, attention.k_proj, attention.v_proj], "o": [attention.o_proj],
            "gate_up": [mlp.gate_proj, mlp.up_proj], "down": [mlp.down_proj]}


def _gains(model: PreTrainedModel, index: int) -> dict[str, list[torch.Tensor] | None]:
    """The RMSNorm gain each fused linear's input gets inside the linear (None: none): a
    BitLinear's own SubLN; in a bitnet block, the norm before the linear (the block's
    norms before ternary q/k/v and gate/up, the sub-norms before o and down)."""
    layer = model.model.layers[index]
    if model.config.model_type == "bitnet":
        ternary = isinstance(layer.self_attn.q_proj, BitLinear)
        return {"qkv": [layer.input_layernorm.weight] * 3 if ternary else None,
                "o": [layer.self_attn.attn_sub_norm.weight],
                "gate_up": [layer.post_attention_layernorm.weight] * 2 if ternary else None,
                "down": [layer.mlp.ffn_sub_norm.weight]}
    return {name: [linear.norm.weight for linear in group] if isinstance(group[0], BitLinear) else None
            for name, group in _linears(model, index).items()}


def _check(model: PreTrainedModel) -> None:
    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise FreezeError(f"the native step runs the {' and '.join(ARCHITECTURES)} architectures, "
                          f"not {config.model_type!r}")
    if config.hidden_act not in FFN_ACTIVATIONS:
        raise FreezeError(f"hidden_act {config.hidden_act!r}: the native step's FFN runs "
                          f"{' or '.join(FFN_ACTIVATIONS)}")
    for index in range(config.num_hidden_layers):
        for name, group in _linears(model, index).items():
            if any(linear.bias is not None for linear in group):
                raise FreezeError(f"layer {index} {name}: linears with a bias are not supported by the native step")
            if len({type(linear) for linear in group}) != 1 or not isinstance(group[0], nn.Linear):
                raise FreezeError(f"layer {index} {name}: its linears must all be BitLinear or all nn.Linear")


def _ternary(group: list[BitLinear], gains: list[torch.Tensor], rows_per_tile: int, columns: bool, arrays: dict,
             prefix: str) -> dict:
    packed, scales = [], []
    for linear in group:
        codes, scale = ternarize(linear.weight.detach())
        codes = codes.to(torch.int8)
        packed.append(pack_ternary_columns(codes, float(scale)) if columns
                      else pack_ternary(codes, float(scale), rows_per_tile))
        scales.append(float(scale))
    arrays[prefix + ".data"] = np.concatenate([p.data.numpy() for p in packed])
    arrays[prefix + ".gain"] = np.stack([_numpy(gain) for gain in gains])
    arrays[prefix + ".scale"] = np.asarray(scales, dtype=np.float32)
    spec = {"kind": "columns" if columns else "ternary", "in_features": group[0].in_features,
            "rows": [linear.out_features for linear in group]}
    if not columns:
        spec |= {"rows_per_tile": rows_per_tile, "tokens_per_tile": max(tokens_for(rows_per_tile))}
    return spec


def _tile(name: str, shape: tuple[int, int], rows_per_tile: int | None, tuned: dict) -> dict:
    if rows_per_tile:
        return {"rows_per_tile": rows_per_tile, "tokens_per_tile": max(tokens_for(rows_per_tile))}
    return tile_for(*shape, tuned)


@torch.no_grad()
def freeze(model: PreTrainedModel, tokenizer, rows_per_tile: int | None = None, int8_embeddings: bool = False,
           sparse: bool = True) -> FrozenModel:
    """The frozen form of a trained model (BitNet or the fp32 reference); `tokenizer` is
    its `transformers` tokenizer, stored with it."""
    _check(model)
    config = model.config
    shapes = fused_shapes(config)
    tuned = load_cache()
    bitnet = isinstance(model.model.layers[0].self_attn.q_proj, BitLinear)
    mlp = model.model.layers[0].mlp
    trained_sparse = isinstance(mlp, MatryoshkaMLP) and isinstance(mlp.sparsity, TopK)
    columns = bitnet and trained_sparse and sparse
    arrays: dict[str, np.ndarray] = {}
    linears: dict[str, dict] = {}
    subln_eps = set()
    for index in range(config.num_hidden_layers):
        layer = model.model.layers[index]
        prefix = f"layers.{index}."
        gains = _gains(model, index)
        if not (bitnet and config.model_type == "bitnet"):  # else the ternary q/k/v and gate/up norm theirs
            arrays[prefix + "attn_norm"] = _numpy(layer.input_layernorm.weight)
            arrays[prefix + "ffn_norm"] = _numpy(layer.post_attention_layernorm.weight)
        for name, group in _linears(model, index).items():
            if bitnet:
                tile = _tile(name, shapes[name], rows_per_tile, tuned)
                spec = _ternary(group, gains[name], tile["rows_per_tile"], columns and name == "down", arrays,
                                prefix + name)
                if "tokens_per_tile" in spec:
                    spec["tokens_per_tile"] = tile["tokens_per_tile"]
            else:
                arrays[prefix + name + ".data"] = np.concatenate([_numpy(linear.weight) for linear in group])
                if gains[name] is not None:  # a bitnet block's sub-norm
                    arrays[prefix + name + ".gain"] = np.stack([_numpy(gain) for gain in gains[name]])
                spec = {"kind": "fp32", "in_features": group[0].in_features,
                        "rows": [linear.out_features for linear in group]}
            linears[name] = spec
        subln_eps |= {linear.norm.eps for group in _linears(model, index).values() for linear in group
                      if hasattr(linear, "norm")}
    if config.model_type == "bitnet":  # its block's norms and sub-norms are the gains
        subln_eps.add(config.rms_norm_eps)
    if len(subln_eps) > 1:
        raise FreezeError(f"the norms inside the linears use different eps {sorted(subln_eps)}; the native step takes one")
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    if int8_embeddings:
        codes, scale = int8_rows(embedding)
        arrays["embed.weight"], arrays["embed.scale"] = codes.numpy(), scale.numpy()
        codes, scale = int8_rows(head.weight)
        arrays["head.data"] = pack_int8_rows(codes).numpy()
        arrays["head.scale"] = scale.numpy()
        arrays["head.row_sums"] = codes.sum(dim=1, dtype=torch.int32).numpy()
        linears["head"] = {"kind": "int8", "in_features": head.in_features, "rows": [head.out_features]}
    else:
        arrays["embed.weight"] = _numpy(embedding)
        arrays["head.data"] = _numpy(head.weight)
        linears["head"] = {"kind": "fp32", "in_features": head.in_features, "rows": [head.out_features]}
    arrays["final_norm"] = _numpy(model.model.norm.weight)
    rotary = model.model.rotary_emb
    arrays["rope.inv_freq"] = _numpy(rotary.inv_freq)
    meta = {
        "architecture": config.model_type, "ffn_activation": config.hidden_act,
        "weights": "ternary" if bitnet else "fp32",
        "hidden": config.hidden_size, "intermediate": config.intermediate_size,
        "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "vocab": config.vocab_size, "max_positions": config.max_position_embeddings,
        "norm_eps": float(config.rms_norm_eps), "subln_eps": float(subln_eps.pop()) if subln_eps else 0.0,
        "rope_scaling": float(getattr(rotary, "attention_scaling", 1.0)),
        "embeddings": "int8" if int8_embeddings else "fp32",
        "widths": list(mlp.widths) if isinstance(mlp, MatryoshkaMLP) else [config.intermediate_size],
        "sparse_k": mlp.sparsity.sparse_k if trained_sparse else 1.0,
        "linears": linears,
    }
    return FrozenModel(meta, tokenizer_record(tokenizer), arrays)


def tokenizer_record(tokenizer) -> dict:
    """A `transformers` fast tokenizer as the frozen file keeps it: the `tokenizers` JSON
    (read without transformers) and the special token ids."""
    return {"json": tokenizer.backend_tokenizer.to_str(), "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
