"""BitLinear: the BitNet b1.58 linear layer for quantization-aware training.

Weights are quantized per tensor to {-1, 0, +1} times their absolute mean; activations
per token to int8 by their absolute maximum, after an RMSNorm inside the layer (SubLN).
The straight-through estimator lets gradients pass the rounding unchanged, so the
latent fp32 weights keep learning. What the layer keeps for backward is the
`activation_compression` knob (see `compression.py`), picked when the layer is built.

A BitLinear can run on a prefix of its weight (the first `rows` outputs, and as many
inputs as `x` has): the nested widths of a Matryoshka FFN share one weight that way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ryot_ray.model.compression import QUANTIZED_LINEARS, SAVERS
from ryot_ray.model.quantize import int8_activations, ternarize


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, eps: float = 1e-6,
                 activation_compression: str = "none"):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = nn.RMSNorm(in_features, eps=eps)
        self.saver = SAVERS[activation_compression]
        self.quantized_linear = QUANTIZED_LINEARS[activation_compression]

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation_compression: str = "none") -> BitLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    activation_compression=activation_compression)
        layer.weight.data.copy_(linear.weight.data)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalized x, its int8 codes, per-token scales), over as many inputs as x has."""
        cols = x.shape[-1]
        x = F.rms_norm(x, (cols,), self.norm.weight[:cols], self.norm.eps)
        return x, *int8_activations(x.detach())

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        cols = x.shape[-1]
        codes, scale = ternarize(self.weight.detach())
        bias = None if self.bias is None else self.bias[:rows]
        return self.quantized_linear(x, self.norm.weight[:cols], self.norm.eps, self.weight[:rows, :cols],
                                     codes[:rows, :cols], scale, bias, self.saver)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, saved activations: {self.saver.name}"
