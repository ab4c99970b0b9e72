"""The BitNet b1.58 two-stage learning-rate and weight-decay schedule.

Ternary training tolerates a high learning rate early and then gains from an abrupt
cool-down (Ma et al. 2024; the b1.58 2B4T report): stage 1 warms up linearly to `lr`
and holds it with weight decay on; at the half-way step the rate drops to `lr_stage2`,
follows a cosine to zero, and weight decay is switched off.
"""

from __future__ import annotations

import math

from ryot_ray.config import TrainConfig


def two_stage(step: int, total_steps: int, train: TrainConfig) -> tuple[float, float]:
    """(learning rate, weight decay) for optimizer step `step` of `total_steps`."""
    half = max(total_steps // 2, 1)
    if step < half:
        warmup = min(train.warmup_steps, half)
        lr = train.lr * min(1.0, (step + 1) / warmup) if warmup else train.lr
        return lr, train.weight_decay
    progress = (step - half) / max(total_steps - half, 1)
    return train.lr_stage2 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))), 0.0
