"""Pack ternary weights 2 bits each, in the tile layout the kernel reads.

Codes are w + 1 in {0, 1, 2}. Rows go in groups of 16 and K in blocks of 16; a 64-byte
block holds one group x one K block, byte j for row j // 4, its 2-bit field p for
k = 4p + j % 4. A tile of `rows_per_tile` groups keeps its groups' blocks side by side
for each K block, so one tile is one contiguous stream: [tile][kblock][group][64 bytes].
Padding rows and columns hold code 1 (weight 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 16  # rows per 64-byte block, and k per block


@dataclass(frozen=True)
class PackedTernary:
    data: torch.Tensor  # uint8, flat
    out_features: int  # N
    in_features: int  # K
    scale: float  # weight = code * scale
    rows_per_tile: int  # groups of 16 rows per tile (the tile-size knob)

    @property
    def padded_in(self) -> int:
        return _round_up(self.in_features, GROUP)

    @property
    def padded_out(self) -> int:
        return _round_up(self.out_features, GROUP * self.rows_per_tile)


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def pack_ternary(codes: torch.Tensor, scale: float, rows_per_tile: int = 1) -> PackedTernary:
    """`codes`: [N, K] with values in {-1, 0, 1}."""
    if codes.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(codes.shape)}")
    if not torch.all((codes == -1) | (codes == 0) | (codes == 1)):
        raise ValueError("weights must be ternary: every value in {-1, 0, 1}")
    n, k = codes.shape
    n_pad, k_pad = _round_up(n, GROUP * rows_per_tile), _round_up(k, GROUP)
    padded = torch.ones((n_pad, k_pad), dtype=torch.uint8)
    padded[:n, :k] = (codes + 1).to(torch.uint8)
    # [tile, group, row, kblock, plane, quad] -> [tile, kblock, group, row, quad, plane]
    fields = padded.view(n_pad // (GROUP * rows_per_tile), rows_per_tile, GROUP, k_pad // GROUP, 4, 4)
    fields = fields.permute(0, 3, 1, 2, 5, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    data = (fields << shifts).sum(dim=-1, dtype=torch.uint8)
    return PackedTernary(data.contiguous().view(-1), n, k, float(scale), rows_per_tile)


def unpack_ternary(packed: PackedTernary) -> torch.Tensor:
    """The [N, K] codes in {-1, 0, 1} that `packed` holds."""
    n_pad, k_pad, nr = packed.padded_out, packed.padded_in, packed.rows_per_tile
    data = packed.data.view(n_pad // (GROUP * nr), k_pad // GROUP, nr, GROUP, 4, 1)
    fields = (data >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)) & 3  # [..., quad, plane]
    codes = fields.permute(0, 2, 3, 1, 5, 4).reshape(n_pad, k_pad)
    return codes[: packed.out_features, : packed.in_features].to(torch.int8) - 1
