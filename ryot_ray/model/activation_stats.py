"""How much the saved activations of a BitNet model are compressed, and what it costs,
measured on the activations of a real batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.compression import stored_bits


@torch.no_grad()
def activation_compression(model: nn.Module, batch: dict) -> dict:
    """Per BitLinear and overall: fp32 bits / bits kept for backward (compression
    ratio) and the relative L2 error of the normalized input the backward rebuilds
    against the layer's own."""
    sums: dict[str, list[float]] = {}  # name: [fp32 bits, stored bits, error^2, norm^2]

    def capture(name: str):
        def hook(layer: BitLinear, args: tuple, output: torch.Tensor) -> None:
            x, codes, scale = layer.rounded_input(args[0])
            saved = layer.saver.pack(x, codes, scale)
            _, rebuilt = layer.saver.unpack(saved, x.shape[-1], layer.steps, torch.float32)
            totals = sums.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            for index, value in enumerate((32 * x.numel(), stored_bits(saved),
                                           (rebuilt - x).square().sum().item(), x.square().sum().item())):
                totals[index] += value
        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in model.named_modules()
               if isinstance(m, BitLinear)]
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if not sums:
        return {}

    def summary(dense: float, stored: float, error: float, norm: float) -> dict:
        return {"compression_ratio": dense / stored, "reconstruction_error": math.sqrt(error / max(norm, 1e-30))}

    overall = [sum(values[i] for values in sums.values()) for i in range(4)]
    return {"saved_activations": next(m.saver.name for m in model.modules() if isinstance(m, BitLinear)),
            "overall": summary(*overall),
            "layers": {name: summary(*values) for name, values in sums.items()}}
