import pytest
import torch

from ryot_ray.kernels.native import constants
from ryot_ray.kernels.pack import (
    pack_int8_rows, pack_ternary, pack_ternary_columns, round_up, unpack_ternary, unpack_ternary_columns,
)
from ryot_ray.model import quantize
from native_marks import needs_native

pytestmark = needs_native  # the block sizes are the native library's


def test_the_library_constants_are_the_ones_the_layouts_assume():
    limits = constants()
    assert (limits.group, limits.column_block, limits.int8_rows, limits.int8_k) == (16, 256, 16, 4)
    assert limits.tile_rows == (1, 2, 4, 8) and limits.max_tokens_per_tile == 8
    assert limits.quant_eps == pytest.approx(quantize.EPS)  # the kernels quantize as BitLinear does


def test_int8_rows_layout():
    codes = torch.arange(-60, 60, dtype=torch.int8).view(20, 6)
    flat = pack_int8_rows(codes)
    assert flat.numel() == round_up(20, 16) * round_up(6, 4)
    groups = flat.view(2, 2, 16, 4)  # [group][k / 4][row][4]
    assert torch.equal(groups[0, 0, 3], codes[3, :4]) and torch.equal(groups[1, 1, 3, :2], codes[19, 4:])
    assert groups[1, 0, 4:].abs().sum() == 0 and groups[0, 1, :, 2:].abs().sum() == 0  # padding


@pytest.mark.parametrize("n, k, rows_per_tile", [(16, 16, 1), (37, 50, 2), (64, 128, 4), (5, 3, 8), (200, 33, 1)])
def test_round_trip_is_exact_with_padding(n, k, rows_per_tile):
    torch.manual_seed(n * k)
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    packed = pack_ternary(codes, 0.25, rows_per_tile)
    assert torch.equal(unpack_ternary(packed), codes)
    assert packed.padded_out % (constants().group * rows_per_tile) == 0 and packed.padded_in % constants().group == 0
    assert packed.data.numel() == packed.padded_out * packed.padded_in // 4  # 2 bits a weight


def test_layout_of_one_block():
    codes = torch.zeros(16, 16, dtype=torch.int8)
    codes[0, 0] = 1  # row 0, k 0 -> byte 0, field 0, code 2
    codes[0, 5] = -1  # row 0, k 5 = 4*1 + 1 -> byte 1, field 1, code 0
    codes[3, 15] = 1  # row 3, k 15 = 4*3 + 3 -> byte 15, field 3, code 2
    data = pack_ternary(codes, 1.0).data.tolist()
    zero = 0b01010101  # code 1 in all four fields
    assert data[0] == 0b01010110 and data[1] == 0b01010001 and data[15] == 0b10010101
    assert all(byte == zero for i, byte in enumerate(data) if i not in (0, 1, 15))


def test_tile_groups_sit_side_by_side():
    codes = torch.randint(-1, 2, (32, 32), dtype=torch.int8)
    one = pack_ternary(codes, 1.0, rows_per_tile=1).data.view(2, 2, 64)  # [group][kblock]
    two = pack_ternary(codes, 1.0, rows_per_tile=2).data.view(2, 2, 64)  # [kblock][group]
    assert torch.equal(one.transpose(0, 1), two)


def test_a_width_prefix_is_a_prefix_of_every_tile():
    codes = torch.randint(-1, 2, (64, 96), dtype=torch.int8)
    full = pack_ternary(codes, 1.0, rows_per_tile=2).data.view(2, -1)  # [tile][kblock, group, 64]
    prefix = pack_ternary(codes[:, :32], 1.0, rows_per_tile=2).data.view(2, -1)
    assert torch.equal(full[:, : prefix.shape[1]], prefix)


@pytest.mark.parametrize("n, k", [(1, 1), (37, 50), (256, 16), (600, 33), (1000, 7)])
def test_column_round_trip_is_exact_with_padding(n, k):
    torch.manual_seed(n + k)
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    packed = pack_ternary_columns(codes, 0.5)
    assert torch.equal(unpack_ternary_columns(packed), codes)
    assert packed.padded_out % constants().column_block == 0
    assert packed.data.numel() == packed.padded_out * k // 4  # 2 bits a weight


def test_column_layout():
    codes = torch.zeros(100, 3, dtype=torch.int8)  # rows padded to 256: 64 bytes a column
    codes[0, 0] = 1  # chunk 0, row 0 -> byte 0, field 0, code 2
    codes[17, 0] = -1  # row 17 = 16*1 + 1 -> byte 1, field 1, code 0
    codes[70, 2] = 1  # column 2, chunk 1, row 6 -> byte 2*64 + 16 + 6, field 0, code 2
    data = pack_ternary_columns(codes, 1.0).data.tolist()
    zero = 0b01010101  # code 1 in all four fields, padding rows included
    assert len(data) == 3 * 64
    assert data[0] == 0b01010110 and data[1] == 0b01010001 and data[150] == 0b01010110
    assert all(byte == zero for i, byte in enumerate(data) if i not in (0, 1, 150))


def test_column_width_prefix_is_a_prefix_of_the_data():
    codes = torch.randint(-1, 2, (300, 40), dtype=torch.int8)
    prefix = pack_ternary_columns(codes[:, :13], 1.0).data
    assert torch.equal(pack_ternary_columns(codes, 1.0).data[: prefix.numel()], prefix)


@pytest.mark.parametrize("pack", [pack_ternary, pack_ternary_columns])
def test_rejects_non_ternary(pack):
    with pytest.raises(ValueError, match="ternary"):
        pack(torch.tensor([[2, 0]]), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        pack(torch.zeros(4, dtype=torch.int8), 1.0)
