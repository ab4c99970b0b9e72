"""The FFN of a BitNet model: nested widths (Matryoshka, `mrl_depth`) and top-k
activation sparsity (Q-Sparse, `sparse_k`).

Width w of an FFN with intermediate size I uses the first w rows of gate and up and the
first w inputs of down: widths I, I/2, ... share prefixes of one set of weights, so a
narrower width computes less and reads fewer weights without a copy. Training samples
one width per micro-batch (every worker draws the same one), so a step costs what one
width costs and each width gets 1/depth of the updates.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from ryot_ray.config import ConfigError
from ryot_ray.model.quantize import straight_through


def ffn_widths(intermediate: int, depth: int) -> list[int]:
    """Nested widths, widest first: I, I/2, ..., I/2^(depth-1)."""
    widths = [intermediate >> level for level in range(depth)]
    if widths[-1] < 1:
        raise ConfigError(f"model.mrl_depth: {depth} nested widths of an FFN of {intermediate} "
                          f"go below one unit (at most {intermediate.bit_length()})")
    return widths


def checked_widths(intermediate: int, depth: int, sparse_k: float) -> list[int]:
    """The nested widths, once `sparse_k` is known to fit the narrowest."""
    widths = ffn_widths(intermediate, depth)
    if sparse_k > widths[-1]:
        raise ConfigError(f"model.sparse_k: {int(sparse_k)} activations is above the narrowest "
                          f"FFN width {widths[-1]}")
    return widths


def kept_activations(sparse_k: float, width: int) -> int:
    """k for a width: `sparse_k` <= 1 is a fraction of the width, above 1 a count."""
    if sparse_k <= 1:
        return max(1, round(sparse_k * width))
    return int(sparse_k)


class TopK(nn.Module):
    """Keep the k largest |h| of each token, zero the rest. The gradient passes to every
    activation (straight-through), so the dropped ones can still grow into the top k."""

    def __init__(self, sparse_k: float):
        super().__init__()
        self.sparse_k = sparse_k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        kept = h.detach().abs().topk(kept_activations(self.sparse_k, h.shape[-1]), dim=-1).indices
        mask = torch.zeros_like(h, dtype=torch.bool).scatter_(-1, kept, True)
        return straight_through(h, h * mask)

    def extra_repr(self) -> str:
        return f"sparse_k={self.sparse_k}"


class MatryoshkaMLP(nn.Module):
    """A Llama MLP run at `self.width` of its nested widths."""

    def __init__(self, mlp: nn.Module, widths: list[int], sparsity: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.widths = widths
        self.width = widths[0]
        self.sparsity = sparsity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_fn(self.gate_proj(x, rows=self.width)) * self.up_proj(x, rows=self.width)
        return self.down_proj(self.sparsity(h))

    def extra_repr(self) -> str:
        return f"widths={self.widths}, width={self.width}"


def to_matryoshka(model: nn.Module, depth: int, sparse_k: float) -> nn.Module:
    """Wrap every decoder MLP; the checkpoint keys stay those of the Llama MLP."""
    for layer in model.model.layers:
        widths = checked_widths(layer.mlp.down_proj.in_features, depth, sparse_k)
        sparsity = TopK(sparse_k) if sparse_k != 1 else nn.Identity()
        layer.mlp = MatryoshkaMLP(layer.mlp, widths, sparsity)
    return model


def ffn_levels(model: nn.Module) -> list[int]:
    """The widths the model's FFNs can run at, widest first ([] for a plain model)."""
    return next((m.widths for m in model.modules() if isinstance(m, MatryoshkaMLP)), [])


def use_width(model: nn.Module, level: int) -> None:
    """Run every FFN at its `level`-th width (0: full)."""
    for module in model.modules():
        if isinstance(module, MatryoshkaMLP):
            if not 0 <= level < len(module.widths):
                raise ValueError(f"width level {level}: the FFN has {len(module.widths)} nested widths")
            module.width = module.widths[level]


def sampled_level(seed: int, step: int, micro_batch: int, depth: int) -> int:
    """The width level a micro-batch trains: the same on every worker, reproducible."""
    return random.Random(f"{seed}:{step}:{micro_batch}").randrange(depth)
