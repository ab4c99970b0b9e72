"""BitLinear: the BitNet b1.58 linear layer for quantization-aware training.

Weights are quantized per tensor to {-1, 0, +1} times their absolute mean; activations
per token to int8 by their absolute maximum, after an RMSNorm inside the layer (SubLN).
The straight-through estimator (`x + (q(x) - x).detach()`) lets gradients pass the
rounding unchanged, so the latent fp32 weights keep learning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes in {-1, 0, 1} and the per-tensor scale: weight ≈ codes · scale."""
    scale = weight.abs().mean().clamp(min=EPS)
    return (weight / scale).round().clamp(-1, 1), scale


def int8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes in [-128, 127] and per-token scales: x ≈ codes / scale."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round().clamp(-128, 127), scale


def fake_quantize_weights(weight: torch.Tensor) -> torch.Tensor:
    codes, scale = ternarize(weight)
    return codes * scale


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    codes, scale = int8_activations(x)
    return codes / scale


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward pass, identity in the backward pass."""
    return x + (quantized - x).detach()


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, eps: float = 1e-6):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = nn.RMSNorm(in_features, eps=eps)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BitLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight.data.copy_(linear.weight.data)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = straight_through(x, fake_quantize_activations(x))
        weight = straight_through(self.weight, fake_quantize_weights(self.weight))
        return F.linear(x, weight, self.bias)
