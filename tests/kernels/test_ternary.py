"""Every available kernel path gives the exact integer result of the reference."""

import pytest
import torch

from ryot_ray.kernels import native
from ryot_ray.kernels.pack import pack_ternary, pack_ternary_columns
from ryot_ray.kernels.ternary import (
    ISAS, kernel_path, native_accumulate, native_isas, native_linear, native_sparse_accumulate, native_sparse_linear,
    native_sparse_quantize, quantize_int8, sparse_quantize_int8, torch_int8_linear, torch_sparse_linear,
)
from ryot_ray.machine import cpu_flags
from ryot_ray.model.quantize import int8_activations
from native_marks import available, needs_native



def reference_accumulate(x_codes, codes):
    return (x_codes.to(torch.int64) @ (codes.to(torch.int64) + 1).T).to(torch.int32)


def reference_sparse(x_codes, index, codes):
    """sum_i w[n, index[m, i]] * x_codes[m, i], from the kept columns only."""
    rows = [codes[:, i.long()].to(torch.int64) @ x.to(torch.int64) for x, i in zip(x_codes, index)]
    return torch.stack(rows).to(torch.int32)


def keep_largest(x, keep):
    """x with all but the `keep` largest entries of each row by magnitude set to zero."""
    kept = torch.zeros_like(x)
    index = x.abs().topk(keep, dim=-1).indices
    return kept.scatter(1, index, x.gather(1, index))


@needs_native
def test_library_sees_this_cpus_isa():
    flags = cpu_flags()
    expected = "scalar"
    if "avx2" in flags:
        expected = "avx2"
    if "avx_vnni" in flags:
        expected = "avx_vnni"
    if {"avx512_vnni", "avx512bw"} <= flags:
        expected = "avx512_vnni"
        if {"amx_tile", "amx_int8"} <= flags:  # and Linux lets the process use the tiles
            expected = "amx_int8"
    assert native_isas()[-1] == expected
    assert kernel_path().name == "native" and kernel_path().isa == expected


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows_per_tile, tokens_per_tile", [(1, 1), (2, 1), (4, 1), (8, 1), (1, 4), (2, 4), (4, 4), (8, 2), (1, 8), (2, 8)])
def test_exact_integers_on_every_path_and_tile(isa, rows_per_tile, tokens_per_tile):
    available(isa)
    generator = torch.Generator().manual_seed(rows_per_tile * 10 + tokens_per_tile)
    for m, k, n in [(1, 16, 16), (3, 50, 37), (9, 130, 70), (5, 256, 129), (12, 64, 300)]:
        codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=generator)
        x_codes = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
        packed = pack_ternary(codes, 1.0, rows_per_tile)
        got = native_accumulate(x_codes, packed, tokens_per_tile, isa=isa, threads=2)
        assert torch.equal(got, reference_accumulate(x_codes, codes)), (m, k, n)


@needs_native
def test_extreme_activations_do_not_overflow():
    k = 4096
    codes = torch.ones((16, k), dtype=torch.int8)  # code 2 everywhere
    x_codes = torch.full((1, k), -128, dtype=torch.int8)
    got = native_accumulate(x_codes, pack_ternary(codes, 1.0))
    assert got[0, 0].item() == 2 * -128 * k


@needs_native
@pytest.mark.parametrize("m", [1, 7, 64])
def test_linear_matches_bitlinear_math(m):
    torch.manual_seed(m)
    k, n = 96, 80
    x = torch.randn(m, k)
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    scale = 0.037
    # the activation quantization inside the kernel is the same as BitLinear's
    x_codes, x_scale = int8_activations(x)
    expected = (x_codes @ codes.float().T) * scale / x_scale
    for isa in native_isas():
        got = native_linear(x, pack_ternary(codes, scale, 2), tokens_per_tile=4, isa=isa)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), isa


def test_torch_fallback_is_exact_too():
    torch.manual_seed(0)
    x = torch.randn(5, 70)
    codes = torch.randint(-1, 2, (33, 70), dtype=torch.int8)
    x_codes, x_scale = quantize_int8(x)
    integer = x_codes.to(torch.int64) @ codes.to(torch.int64).T
    for rows in (x[:1], x):
        got = torch_int8_linear(rows, codes, 0.5)
        want = integer[: rows.shape[0]].float() * (0.5 / x_scale[: rows.shape[0]])
        assert torch.equal(got, want)


@needs_native
def test_missing_library_falls_back_visibly(monkeypatch):
    packed = pack_ternary(torch.zeros(16, 16, dtype=torch.int8), 1.0)
    columns = pack_ternary_columns(torch.zeros(16, 16, dtype=torch.int8), 1.0)
    monkeypatch.setattr(native, "KERNELS_MODULE", "ryot_ray.kernels._absent")
    native.kernels.cache_clear()
    try:
        path = kernel_path()
        assert path.name == "torch-int8" and "not built" in path.reason
        assert native_isas() == []
        with pytest.raises(native.NativeUnavailable, match="not built"):
            native_linear(torch.zeros(1, 16), packed)
        with pytest.raises(native.NativeUnavailable, match="not built"):
            native_sparse_linear(torch.zeros(1, 16), columns, 4)
    finally:
        native.kernels.cache_clear()


@needs_native
def test_bad_tiles_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"rows_per_tile must be one of \(1, 2, 4, 8\), got 3"):
        pack_ternary(torch.zeros(16, 16, dtype=torch.int8), 1.0, rows_per_tile=3)
    packed = pack_ternary(torch.zeros(16, 16, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="tokens_per_tile"):
        native_linear(torch.zeros(1, 16), packed, tokens_per_tile=9)
    with pytest.raises(ValueError, match=r"expects 1\.\.16"):
        native_linear(torch.zeros(1, 17), packed)
    with pytest.raises(ValueError, match="2-D"):
        native_linear(torch.zeros(16), packed)
    with pytest.raises(ValueError, match="out_features"):
        native_linear(torch.zeros(1, 16), packed, out_features=17)
    with pytest.raises(ValueError, match="at least 16"):
        native_linear(torch.zeros(1, 16), packed, norm=(torch.ones(15), 1e-6))


# ---- Matryoshka width prefixes: the first w columns (K) or rows (N) of a packed weight ----

@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows_per_tile, tokens_per_tile",
                         [(1, 1), (2, 4), (4, 2), (8, 2), (8, 1)])
def test_width_prefix_equals_the_sliced_weight(isa, rows_per_tile, tokens_per_tile):
    available(isa)
    generator = torch.Generator().manual_seed(rows_per_tile * 10 + tokens_per_tile)
    for m, k, n in [(1, 100, 40), (5, 64, 130), (9, 200, 33)]:  # one token: decode; several: prefill
        codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=generator)
        x_codes = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
        packed = pack_ternary(codes, 1.0, rows_per_tile)
        for width in sorted({1, 15, 16, 17, k // 2, k - 1}):
            sliced = pack_ternary(codes[:, :width], 1.0, rows_per_tile)
            got = native_accumulate(x_codes[:, :width], packed, tokens_per_tile, isa=isa, threads=2)
            want = native_accumulate(x_codes[:, :width], sliced, tokens_per_tile, isa=isa, threads=2)
            assert torch.equal(got, want)
            assert torch.equal(got, reference_accumulate(x_codes[:, :width], codes[:, :width]))
        for rows in sorted({1, 16, n // 2, n - 1}):
            got = native_accumulate(x_codes, packed, tokens_per_tile, isa=isa, threads=2, out_features=rows)
            assert torch.equal(got, reference_accumulate(x_codes, codes[:rows])), (m, k, n, rows)


@needs_native
@pytest.mark.parametrize("m", [1, 6])
def test_width_prefix_linear_with_fused_norm(m):
    torch.manual_seed(m)
    k, n, width, rows = 300, 90, 147, 70
    x, codes = torch.randn(m, k), torch.randint(-1, 2, (n, k), dtype=torch.int8)
    weight = torch.rand(k) + 0.5
    packed = pack_ternary(codes, 0.03, 2)
    sliced = pack_ternary(codes[:rows, :width], 0.03, 2)
    for isa in native_isas():
        got = native_linear(x[:, :width], packed, 4, isa=isa, norm=(weight, 1e-6), out_features=rows)
        want = native_linear(x[:, :width], sliced, 4, isa=isa, norm=(weight[:width].contiguous(), 1e-6))
        assert torch.equal(got, want), isa


def test_torch_fallback_takes_a_width_prefix():
    torch.manual_seed(1)
    x, codes = torch.randn(3, 40), torch.randint(-1, 2, (24, 64), dtype=torch.int8)
    assert torch.equal(torch_int8_linear(x, codes, 0.5), torch_int8_linear(x, codes[:, :40].contiguous(), 0.5))
    with pytest.raises(ValueError, match="width prefix"):
        torch_int8_linear(torch.randn(3, 65), codes, 0.5)


# ---- sparse down-projection: the kept columns of a column-packed weight ----

@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_sparse_core_is_exact_on_every_path(isa):
    available(isa)
    generator = torch.Generator().manual_seed(ISAS.index(isa))
    for m, k, n, keep in [(1, 5, 1, 1), (2, 50, 37, 7), (3, 300, 600, 130), (1, 700, 256, 699), (4, 64, 1000, 64)]:
        codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=generator)
        x_codes = torch.randint(-128, 128, (m, keep), dtype=torch.int8, generator=generator)
        index = torch.stack([torch.randperm(k, generator=generator)[:keep].sort().values for _ in range(m)])
        packed = pack_ternary_columns(codes, 1.0)
        for threads in (1, 2, 3):  # the threads split the kept columns
            got = native_sparse_accumulate(x_codes, index, packed, isa=isa, threads=threads)
            assert torch.equal(got, reference_sparse(x_codes, index, codes)), (m, k, n, keep, threads)


@needs_native
def test_sparse_extreme_activations_do_not_overflow():
    k = 4096
    for w, x in [(1, -128), (-1, -128), (1, 127)]:
        packed = pack_ternary_columns(torch.full((256, k), w, dtype=torch.int8), 1.0)
        got = native_sparse_accumulate(torch.full((1, k), x, dtype=torch.int8), torch.arange(k)[None], packed)
        assert torch.equal(got, torch.full((1, 256), w * x * k, dtype=torch.int32))


@needs_native
def test_sparse_selection_is_top_k_by_magnitude():
    torch.manual_seed(0)
    x = torch.randn(4, 5632)  # no equal magnitudes
    weight = torch.rand(5632) + 0.5
    for keep in (1, 3, 1408, 2816, 5631):
        index, codes, scale = native_sparse_quantize(x, keep)
        assert torch.equal(index.long(), x.abs().topk(keep).indices.sort().values)
        assert torch.equal(sparse_quantize_int8(x, keep)[0], index)
        # the whole row's int8 codes, as torch's int8_activations computes them (127 times the reciprocal)
        want_scale = int8_activations(x)[1]
        assert torch.equal(scale, want_scale)
        want = (x * want_scale).round().clamp(-128, 127).to(torch.int8)
        assert torch.equal(codes, want.gather(1, index.long()))
        normed = torch.nn.functional.rms_norm(x, (5632,), weight, 1e-6)
        index, _, _ = native_sparse_quantize(x, keep, norm=(weight, 1e-6))
        assert torch.equal(index.long(), normed.abs().topk(keep).indices.sort().values)


@needs_native
def test_sparse_selection_keeps_the_lower_index_on_ties():
    x = torch.tensor([[1.0, -1.0, 1.0, 0.5, -1.0, 2.0, 1.0, -0.0, 0.0]])
    for keep, want in [(1, [5]), (2, [0, 5]), (3, [0, 1, 5]), (5, [0, 1, 2, 4, 5]), (8, [0, 1, 2, 3, 4, 5, 6, 7])]:
        assert native_sparse_quantize(x, keep)[0].tolist() == [want]
        assert sparse_quantize_int8(x, keep)[0].tolist() == [want]
    ties = torch.randint(-3, 4, (5, 999)).float()  # many equal magnitudes
    for keep in (1, 100, 500, 998):
        assert torch.equal(native_sparse_quantize(ties, keep)[0], sparse_quantize_int8(ties, keep)[0])


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_sparse_equals_dense_on_rows_already_sparse(isa):
    available(isa)
    torch.manual_seed(ISAS.index(isa))
    m, k, n = 3, 640, 300
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    dense, columns = pack_ternary(codes, 0.02, 2), pack_ternary_columns(codes, 0.02)
    norm = (torch.rand(k) + 0.5, 1e-6)
    x = torch.randn(m, k)
    for keep in (1, 7, 160, 320, 639):
        sparse = keep_largest(x, keep)
        want = native_linear(sparse, dense, isa=isa)
        assert torch.equal(native_sparse_linear(x, columns, keep, isa=isa), want), keep
        assert torch.equal(native_sparse_linear(sparse, columns, keep, isa=isa), want), keep
        # normed inside: a row with only `keep` nonzero entries keeps exactly those
        want = native_linear(sparse, dense, isa=isa, norm=norm)
        assert torch.equal(native_sparse_linear(sparse, columns, keep, isa=isa, norm=norm), want), keep


@needs_native
def test_keeping_every_column_is_the_dense_path():
    torch.manual_seed(2)
    x, codes = torch.randn(2, 200), torch.randint(-1, 2, (70, 200), dtype=torch.int8)
    norm = (torch.rand(200) + 0.5, 1e-6)
    dense, columns = pack_ternary(codes, 0.1), pack_ternary_columns(codes, 0.1)
    for keep in (200, 1000):
        assert torch.equal(native_sparse_linear(x, columns, keep), native_linear(x, dense))
        assert torch.equal(native_sparse_linear(x, columns, keep, norm=norm), native_linear(x, dense, norm=norm))


@needs_native
def test_sparse_width_prefix():
    torch.manual_seed(3)
    k, n, width, keep = 500, 260, 213, 50
    x, codes = torch.randn(2, width), torch.randint(-1, 2, (n, k), dtype=torch.int8)
    norm = (torch.rand(k) + 0.5, 1e-6)
    columns, sliced = pack_ternary_columns(codes, 0.1), pack_ternary_columns(codes[:, :width], 0.1)
    for isa in native_isas():
        got = native_sparse_linear(x, columns, keep, isa=isa, norm=norm)
        want = native_sparse_linear(x, sliced, keep, isa=isa, norm=(norm[0][:width].contiguous(), norm[1]))
        assert torch.equal(got, want), isa
        dense = native_linear(keep_largest(x, keep), pack_ternary(codes, 0.1, 2), isa=isa)
        assert torch.equal(native_sparse_linear(x, columns, keep, isa=isa), dense), isa


@pytest.mark.parametrize("width", [96, 61])
def test_torch_sparse_fallback_is_the_dense_fallback_on_the_kept_entries(width):
    torch.manual_seed(width)
    x, codes = torch.randn(4, width), torch.randint(-1, 2, (50, 96), dtype=torch.int8)
    for keep in (1, 24, width, 200):
        got = torch_sparse_linear(x, codes.t().contiguous(), 0.5, keep)
        assert torch.equal(got, torch_int8_linear(keep_largest(x, min(keep, width)), codes, 0.5)), keep


@needs_native
def test_bad_sparse_arguments_are_refused():
    columns = pack_ternary_columns(torch.zeros(16, 32, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="keep"):
        native_sparse_linear(torch.zeros(1, 32), columns, 0)
    with pytest.raises(ValueError, match="width prefix"):
        native_sparse_linear(torch.zeros(1, 33), columns, 4)
    with pytest.raises(ValueError, match="2-D"):
        native_sparse_linear(torch.zeros(32), columns, 4)
    with pytest.raises(ValueError, match="at least 32"):
        native_sparse_linear(torch.zeros(1, 32), columns, 4, norm=(torch.ones(31), 1e-6))
    with pytest.raises(ValueError, match="column indices"):
        native_sparse_accumulate(torch.zeros(1, 2, dtype=torch.int8), torch.tensor([[0, 32]]), columns)
    with pytest.raises(ValueError, match="both be"):
        native_sparse_accumulate(torch.zeros(1, 2, dtype=torch.int8), torch.tensor([[0, 1, 2]]), columns)
    with pytest.raises(ValueError, match="keep"):
        torch_sparse_linear(torch.zeros(1, 32), torch.zeros(32, 16, dtype=torch.int8), 1.0, 0)
