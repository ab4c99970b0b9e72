"""The arithmetic of nested FFN widths (Matryoshka) and kept activations (Q-Sparse),
shared by training and by the inference process, which runs without torch."""

from __future__ import annotations

from ryot_ray.config import ConfigError


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
