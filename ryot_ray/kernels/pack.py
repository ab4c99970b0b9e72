"""Pack ternary weights 2 bits each, in the tile layout the kernel reads.

Codes are w + 1 in {0, 1, 2}. Rows go in groups of 16 and K in blocks of 16; a 64-byte
block holds one group x one K block, byte j for row j // 4, its 2-bit field p for
k = 4p + j % 4. A tile of `rows_per_tile` groups keeps its groups' blocks side by side
for each K block, so one tile is one contiguous stream: [tile][kblock][group][64 bytes].
Padding rows and columns hold code 1 (weight 0).

For a sparse input (Q-Sparse top-k activations) the weight is packed by columns instead,
so a kept input column is one contiguous read, still 2 bits a weight: column j is
padded_out / 4 bytes of codes w + 1, rows padded to a multiple of the column block with
code 1. Each 64-row chunk is 16 bytes; byte b holds row 16 f + b of the chunk in its
2-bit field f (bits 2f, 2f+1).

An int8 weight with one scale per row (an int8 `lm_head`) is packed in groups of 16 rows,
k in lanes of 4: [group][k / 4][16 rows][4 bytes], so one 64-byte load is the operand of
an int8 dot product for 16 rows at once.

The block sizes are the native library's (`kernels.h`); packing needs the library.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ryot_ray.kernels.native import constants

_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)  # the four 2-bit fields of a byte


@dataclass(frozen=True)
class PackedTernary:
    data: torch.Tensor  # uint8, flat
    out_features: int  # N
    in_features: int  # K
    scale: float  # weight = code * scale
    rows_per_tile: int  # groups of 16 rows per tile (the tile-size knob)

    @property
    def padded_in(self) -> int:
        return round_up(self.in_features, constants().group)

    @property
    def padded_out(self) -> int:
        return round_up(self.out_features, constants().group * self.rows_per_tile)


@dataclass(frozen=True)
class PackedColumns:
    data: torch.Tensor  # uint8, flat
    out_features: int  # N
    in_features: int  # K
    scale: float  # weight = code * scale

    @property
    def padded_out(self) -> int:
        return round_up(self.out_features, constants().column_block)


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _check_ternary(codes: torch.Tensor) -> None:
    if codes.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(codes.shape)}")
    if not torch.all((codes == -1) | (codes == 0) | (codes == 1)):
        raise ValueError("weights must be ternary: every value in {-1, 0, 1}")


def pack_ternary(codes: torch.Tensor, scale: float, rows_per_tile: int = 1) -> PackedTernary:
    """`codes`: [N, K] with values in {-1, 0, 1}."""
    _check_ternary(codes)
    if rows_per_tile not in constants().tile_rows:
        raise ValueError(f"rows_per_tile must be one of {constants().tile_rows}, got {rows_per_tile}")
    group = constants().group
    n, k = codes.shape
    n_pad, k_pad = round_up(n, group * rows_per_tile), round_up(k, group)
    padded = torch.ones((n_pad, k_pad), dtype=torch.uint8)
    padded[:n, :k] = (codes + 1).to(torch.uint8)
    # [tile, group, row, kblock, plane, quad] -> [tile, kblock, group, row, quad, plane]
    fields = padded.view(n_pad // (group * rows_per_tile), rows_per_tile, group, k_pad // group, 4, 4)
    fields = fields.permute(0, 3, 1, 2, 5, 4)
    data = (fields << _SHIFTS).sum(dim=-1, dtype=torch.uint8)
    return PackedTernary(data.contiguous().view(-1), n, k, float(scale), rows_per_tile)


def unpack_ternary(packed: PackedTernary) -> torch.Tensor:
    """The [N, K] codes in {-1, 0, 1} that `packed` holds."""
    n_pad, k_pad, nr, group = packed.padded_out, packed.padded_in, packed.rows_per_tile, constants().group
    data = packed.data.view(n_pad // (group * nr), k_pad // group, nr, group, 4, 1)
    fields = (data >> _SHIFTS) & 3  # [..., quad, plane]
    codes = fields.permute(0, 2, 3, 1, 5, 4).reshape(n_pad, k_pad)
    return codes[: packed.out_features, : packed.in_features].to(torch.int8) - 1


def pack_ternary_columns(codes: torch.Tensor, scale: float) -> PackedColumns:
    """`codes`: [N, K] with values in {-1, 0, 1}, packed column by column."""
    _check_ternary(codes)
    n, k = codes.shape
    n_pad = round_up(n, constants().column_block)
    padded = torch.ones((k, n_pad), dtype=torch.uint8)
    padded[:, :n] = (codes + 1).t().to(torch.uint8)
    fields = padded.view(k, n_pad // 64, 4, 16).transpose(2, 3)  # [column, chunk, byte, field]
    data = (fields << _SHIFTS).sum(dim=-1, dtype=torch.uint8)
    return PackedColumns(data.contiguous().view(-1), n, k, float(scale))


def unpack_ternary_columns(packed: PackedColumns) -> torch.Tensor:
    """The [N, K] codes in {-1, 0, 1} that `packed` holds."""
    k, n_pad = packed.in_features, packed.padded_out
    data = packed.data.view(k, n_pad // 64, 16, 1)
    codes = ((data >> _SHIFTS) & 3).transpose(2, 3).reshape(k, n_pad)
    return codes[:, : packed.out_features].t().to(torch.int8) - 1


def pack_int8_rows(codes: torch.Tensor) -> torch.Tensor:
    """int8 `codes` [N, K] in the int8-row layout (flat); padding rows and k hold 0."""
    rows, lane = constants().int8_rows, constants().int8_k
    n, k = codes.shape
    padded = torch.zeros((round_up(n, rows), round_up(k, lane)), dtype=torch.int8)
    padded[:n, :k] = codes
    groups = padded.view(-1, rows, padded.shape[1] // lane, lane).transpose(1, 2)  # [group, k/4, row, 4]
    return groups.contiguous().view(-1)
