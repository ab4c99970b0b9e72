import pytest
import torch

from ryot_ray.kernels.pack import GROUP, pack_ternary, unpack_ternary


@pytest.mark.parametrize("n, k, rows_per_tile", [(16, 16, 1), (37, 50, 2), (64, 128, 4), (5, 3, 8), (200, 33, 1)])
def test_round_trip_is_exact_with_padding(n, k, rows_per_tile):
    torch.manual_seed(n * k)
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    packed = pack_ternary(codes, 0.25, rows_per_tile)
    assert torch.equal(unpack_ternary(packed), codes)
    assert packed.padded_out % (GROUP * rows_per_tile) == 0 and packed.padded_in % GROUP == 0
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


def test_rejects_non_ternary():
    with pytest.raises(ValueError, match="ternary"):
        pack_ternary(torch.tensor([[2, 0]]), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.zeros(4, dtype=torch.int8), 1.0)
