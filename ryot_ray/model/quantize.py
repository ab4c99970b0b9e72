"""The b1.58 quantizers: ternary weights, int8 activations, the straight-through estimator."""

from __future__ import annotations

import torch

EPS = 1e-5


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes in {-1, 0, 1} and the per-tensor scale: weight ≈ codes · scale."""
    scale = weight.abs().mean().clamp(min=EPS)
    return (weight / scale).round().clamp(-1, 1), scale


def int8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes in [-128, 127] and per-token scales: x ≈ codes / scale."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round_().clamp_(-128, 127), scale


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward pass, identity in the backward pass."""
    return x + (quantized - x).detach()
