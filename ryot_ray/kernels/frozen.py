"""Freeze a trained BitNet model for inference: every BitLinear becomes a TernaryLinear.

Freezing ternarizes each latent weight once, packs it 2 bits per weight in the tile
layout (the tile fixes the layout, so it is chosen here), and drops the fp32 copy. The
forward pass is one native call (the layer's RMSNorm, int8 activations, the ternary
matmul) — or, where the native library is missing, the RMSNorm in torch and the torch
int8 fallback on unpacked codes.
"""

from __future__ import annotations

import torch
from torch import nn

from ryot_ray.kernels.autotune import DEFAULT_TILE, load_cache, tile_for, tokens_for
from ryot_ray.kernels.pack import PackedTernary, pack_ternary, unpack_ternary
from ryot_ray.kernels.ternary import fused_norm, kernel_path, native_linear, torch_int8_linear
from ryot_ray.model.bitlinear import BitLinear, ternarize


class TernaryLinear(nn.Module):
    def __init__(self, norm: nn.RMSNorm, packed: PackedTernary, bias: torch.Tensor | None,
                 native: bool, tokens_per_tile: int = DEFAULT_TILE["tokens_per_tile"]):
        super().__init__()
        self.norm = norm.requires_grad_(False)
        self.fused_norm = fused_norm(norm)
        self.packed = packed
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.native = native
        self.tokens_per_tile = tokens_per_tile
        # the fallback reads int8 codes, [N, K]; the native path reads only the packed bits
        self.codes = None if native else unpack_ternary(packed)

    @property
    def in_features(self) -> int:
        return self.packed.in_features

    @property
    def out_features(self) -> int:
        return self.packed.out_features

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, tile: dict, native: bool) -> TernaryLinear:
        codes, scale = ternarize(layer.weight.detach())
        packed = pack_ternary(codes.to(torch.int8), float(scale), tile["rows_per_tile"])
        return cls(layer.norm, packed, layer.bias, native, tile["tokens_per_tile"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        if self.native:
            tokens = 1 if x.shape[0] == 1 else self.tokens_per_tile
            y = native_linear(x, self.packed, tokens, norm=self.fused_norm)
        else:
            y = torch_int8_linear(self.norm(x), self.codes, self.packed.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*leading, self.out_features)

    def extra_repr(self) -> str:
        path = "native" if self.native else "torch-int8"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rows_per_tile={self.packed.rows_per_tile}, path={path}")


def freeze(model: nn.Module, rows_per_tile: int | None = None, native: bool | None = None) -> nn.Module:
    """Replace every BitLinear of `model` in place; returns the model in eval mode.

    Without `rows_per_tile`, each layer takes the tile `ryot-ray bench kernels --autotune`
    cached for its shape on this CPU, or the default.
    """
    if native is None:
        native = kernel_path().name == "native"
    tuned = load_cache()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BitLinear):
                if rows_per_tile:  # a given layout: the largest token tile it runs with
                    tile = {"rows_per_tile": rows_per_tile, "tokens_per_tile": max(tokens_for(rows_per_tile))}
                else:
                    tile = tile_for(child.in_features, child.out_features, tuned)
                setattr(module, name, TernaryLinear.from_bitlinear(child, tile, native))
    return model.eval().requires_grad_(False)
