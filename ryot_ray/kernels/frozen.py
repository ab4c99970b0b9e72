"""Freeze a trained BitNet model for inference: every BitLinear becomes a TernaryLinear.

Freezing ternarizes each latent weight once, packs it 2 bits per weight in the tile
layout (the tile fixes the layout, so it is chosen here), and drops the fp32 copy. The
forward pass is one native call (the layer's RMSNorm, int8 activations, the ternary
matmul) — or, where the native library is missing, the RMSNorm in torch and the torch
int8 fallback on unpacked codes.

The embeddings and `lm_head` were trained in full precision; freezing can keep them as
int8 with one scale per row (a quarter of the memory, and of the bytes the head reads
per decode step). That is lossy, so it is a choice, and its effect is measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ryot_ray.kernels.autotune import DEFAULT_TILE, load_cache, tile_for, tokens_for
from ryot_ray.kernels.pack import (
    PackedColumns, PackedTernary, pack_ternary, pack_ternary_columns, unpack_ternary, unpack_ternary_columns,
)
from ryot_ray.kernels.ternary import (
    EPS, fused_norm, kernel_path, native_linear, native_sparse_linear, torch_int8_linear,
)
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.matryoshka import MatryoshkaMLP, TopK, kept_activations
from ryot_ray.model.quantize import ternarize


class FrozenLinear(nn.Module):
    """What a frozen BitLinear keeps: its SubLN, its packed ternary weight, its bias, and
    which path runs it (the native kernel, or the torch fallback on int8 codes)."""

    def __init__(self, norm: nn.RMSNorm, packed: PackedTernary | PackedColumns, bias: torch.Tensor | None,
                 native: bool):
        super().__init__()
        self.norm = norm.requires_grad_(False)
        self.fused_norm = fused_norm(norm)
        self.packed = packed
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.native = native

    @property
    def in_features(self) -> int:
        return self.packed.in_features

    @property
    def out_features(self) -> int:
        return self.packed.out_features

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """The SubLN in torch, for the fallback (the native path fuses it)."""
        cols = x.shape[-1]
        return F.rms_norm(x, (cols,), self.norm.weight[:cols], self.norm.eps)

    def _output(self, y: torch.Tensor, leading: torch.Size, rows: int) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias[:rows]
        return y.view(*leading, rows)

    def extra_repr(self) -> str:
        path = "native" if self.native else "torch-int8"
        return f"in_features={self.in_features}, out_features={self.out_features}, path={path}"


class TernaryLinear(FrozenLinear):
    def __init__(self, norm: nn.RMSNorm, packed: PackedTernary, bias: torch.Tensor | None,
                 native: bool, tokens_per_tile: int = DEFAULT_TILE["tokens_per_tile"]):
        super().__init__(norm, packed, bias, native)
        self.tokens_per_tile = tokens_per_tile
        # the fallback reads int8 codes, [N, K]; the native path reads only the packed bits
        self.codes = None if native else unpack_ternary(packed)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, tile: dict, native: bool) -> TernaryLinear:
        codes, scale = ternarize(layer.weight.detach())
        packed = pack_ternary(codes.to(torch.int8), float(scale), tile["rows_per_tile"])
        return cls(layer.norm, packed, layer.bias, native, tile["tokens_per_tile"])

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Like BitLinear: the first `rows` outputs, over as many inputs as x has."""
        leading, cols = x.shape[:-1], x.shape[-1]
        rows = rows or self.out_features
        x = x.reshape(-1, cols)
        if self.native:
            tokens = 1 if x.shape[0] == 1 else self.tokens_per_tile
            y = native_linear(x, self.packed, tokens, norm=self.fused_norm, out_features=rows)
        else:
            y = torch_int8_linear(self._normed(x), self.codes[:rows, :cols], self.packed.scale)
        return self._output(y, leading, rows)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows_per_tile={self.packed.rows_per_tile}"


class SparseTernaryLinear(FrozenLinear):
    """A frozen FFN down-projection with top-k activations (Q-Sparse): each token keeps
    its k largest inputs, as `TopK` chose them in training, and the native kernel reads
    only their weight columns (packed column by column for that)."""

    def __init__(self, norm: nn.RMSNorm, packed: PackedColumns, bias: torch.Tensor | None, native: bool,
                 sparse_k: float):
        super().__init__(norm, packed, bias, native)
        self.sparse_k = sparse_k
        self.codes = None if native else unpack_ternary_columns(packed)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, native: bool, sparse_k: float) -> SparseTernaryLinear:
        codes, scale = ternarize(layer.weight.detach())
        packed = pack_ternary_columns(codes.to(torch.int8), float(scale))
        return cls(layer.norm, packed, layer.bias, native, sparse_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading, cols = x.shape[:-1], x.shape[-1]
        x = x.reshape(-1, cols)
        keep = kept_activations(self.sparse_k, cols)
        kept = x.abs().topk(keep, dim=-1).indices
        x = torch.zeros_like(x).scatter_(-1, kept, x.gather(-1, kept))
        if self.native:
            y = native_sparse_linear(x, self.packed, keep, norm=self.fused_norm)
        else:
            y = torch_int8_linear(self._normed(x), self.codes[:, :cols], self.packed.scale)
        return self._output(y, leading, self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparse_k={self.sparse_k}"


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes with one absmax scale per row: weight ~ codes * scale[:, None]."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=EPS) / 127.0
    return (weight / scale[:, None]).round().to(torch.int8), scale


class Int8Linear(nn.Module):
    """A full-precision linear (the `lm_head`) kept as int8 rows; int8 activations too."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes a linear without bias (a Llama lm_head)")
        self.codes, self.scale = int8_rows(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch_int8_linear(x.reshape(-1, self.in_features), self.codes, self.scale)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class Int8Embedding(nn.Module):
    """An embedding table kept as int8 rows; a lookup dequantizes only the rows it reads."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.codes, self.scale = int8_rows(embedding.weight)
        self.padding_idx = embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.codes).float() * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.codes.shape[0]}, {self.codes.shape[1]}, int8 per-row scales"


def freeze(model: nn.Module, rows_per_tile: int | None = None, native: bool | None = None,
           int8_embeddings: bool = False, sparse: bool = True) -> nn.Module:
    """Replace every BitLinear of `model` in place; returns the model in eval mode.

    Without `rows_per_tile`, each layer takes the tile `ryot-ray bench kernels --autotune`
    cached for its shape on this CPU, or the default. `int8_embeddings` also turns the
    input embeddings and the `lm_head` into int8 rows. A model trained with top-k
    activations gets sparse down-projections, or with `sparse=False` dense ones that use
    every activation (to measure what the sparsity buys).
    """
    if native is None:
        native = kernel_path().name == "native"
    tuned = load_cache()
    for mlp in [m for m in model.modules() if isinstance(m, MatryoshkaMLP) and isinstance(m.sparsity, TopK)]:
        if sparse:
            mlp.down_proj = SparseTernaryLinear.from_bitlinear(mlp.down_proj, native, mlp.sparsity.sparse_k)
        mlp.sparsity = nn.Identity()  # the frozen down-projection keeps the top k itself, or all
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BitLinear):
                if rows_per_tile:  # a given layout: the largest token tile it runs with
                    tile = {"rows_per_tile": rows_per_tile, "tokens_per_tile": max(tokens_for(rows_per_tile))}
                else:
                    tile = tile_for(child.in_features, child.out_features, tuned)
                setattr(module, name, TernaryLinear.from_bitlinear(child, tile, native))
    if int8_embeddings:
        model.set_input_embeddings(Int8Embedding(model.get_input_embeddings()))
        model.set_output_embeddings(Int8Linear(model.get_output_embeddings()))
    return model.eval().requires_grad_(False)
