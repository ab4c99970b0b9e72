"""Every available kernel path gives the exact integer result of the reference."""

import pytest
import torch

from ryot_ray.kernels import ternary
from ryot_ray.kernels.pack import pack_ternary
from ryot_ray.kernels.ternary import (
    ISAS, kernel_path, native_accumulate, native_isas, native_linear, quantize_int8, torch_int8_linear,
)
from ryot_ray.machine import cpu_flags
from ryot_ray.model.bitlinear import int8_activations

needs_native = pytest.mark.skipif(not native_isas(), reason="native kernel library not built")


def reference_accumulate(x_codes, codes):
    return (x_codes.to(torch.int64) @ (codes.to(torch.int64) + 1).T).to(torch.int32)


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
    assert native_isas()[-1] == expected
    assert kernel_path().name == "native" and kernel_path().isa == expected


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows_per_tile, tokens_per_tile", [(1, 1), (2, 1), (4, 1), (8, 1), (1, 4), (2, 4), (4, 4), (8, 2), (1, 8), (3, 3)])
def test_exact_integers_on_every_path_and_tile(isa, rows_per_tile, tokens_per_tile):
    if isa not in native_isas():
        pytest.skip(f"{isa} not available on this CPU")
    generator = torch.Generator().manual_seed(rows_per_tile * 10 + tokens_per_tile)
    for m, k, n in [(1, 16, 16), (3, 50, 37), (9, 130, 70), (5, 256, 129)]:
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


def test_missing_library_falls_back_visibly(monkeypatch):
    monkeypatch.setattr(ternary, "LIBRARY_MODULE", "ryot_ray.kernels._absent")
    ternary._library.cache_clear()
    ternary._best_isa_number.cache_clear()
    try:
        path = kernel_path()
        assert path.name == "torch-int8" and "not built" in path.reason
        assert native_isas() == []
        with pytest.raises(RuntimeError, match="not built"):
            native_linear(torch.zeros(1, 16), pack_ternary(torch.zeros(16, 16, dtype=torch.int8), 1.0))
    finally:
        ternary._library.cache_clear()
        ternary._best_isa_number.cache_clear()


@needs_native
def test_bad_tiles_and_shapes_are_refused():
    packed = pack_ternary(torch.zeros(16, 16, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="tokens_per_tile"):
        native_linear(torch.zeros(1, 16), packed, tokens_per_tile=9)
    with pytest.raises(ValueError, match="expects 16"):
        native_linear(torch.zeros(1, 15), packed)
