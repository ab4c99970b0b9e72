"""The dense kernels of a model step (int8 rows, fp32 rows, vector ops) on every ISA path,
against numpy."""

import numpy as np
import pytest
import torch

from ryot_ray.kernels.native import ISAS, kernels, required
from ryot_ray.kernels.pack import pack_int8_rows
from native_marks import available, needs_native

pytestmark = needs_native


def library():
    return required(kernels())


def ptr(array: np.ndarray) -> int:
    return array.ctypes.data


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (1, 100, 37), (5, 36, 20), (11, 256, 33)])
def test_int8_rows_are_exact(isa, m, k, n):
    available(isa)
    rng = np.random.default_rng(m * k + n)
    codes = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    k_padded, groups = -(-k // 4) * 4, -(-n // 16)
    packed = pack_int8_rows(torch.from_numpy(codes)).numpy()
    xu = np.zeros((m, k_padded), dtype=np.uint8)
    xu[:, :k] = (x.astype(np.int16) + 128).astype(np.uint8)
    xu[:, k:] = 128  # a zero activation, as the step pads
    acc = np.zeros((m, groups * 16), dtype=np.int32)
    for first, last in [(0, groups // 2), (groups // 2, groups)]:  # two threads' shares
        library().ryot_int8_groups(ptr(xu), m, k_padded, ptr(packed), first, last, ISAS.index(isa), ptr(acc),
                                   acc.shape[1])
    want = (xu[:, :k].astype(np.int64) @ codes.astype(np.int64).T).astype(np.int32)
    assert np.array_equal(acc[:, :n], want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, k, n", [(1, 64, 9), (3, 50, 13), (7, 130, 8), (13, 17, 6)])
def test_f32_rows(isa, m, k, n):
    available(isa)
    rng = np.random.default_rng(m + k + n)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((m, k + 3), dtype=np.float32)  # rows x_stride = k + 3 apart
    y = np.full((m, n + 2), np.nan, dtype=np.float32)
    library().ryot_f32_rows(ptr(x), m, k, k + 3, ptr(w), 0, n, ISAS.index(isa), ptr(y), n + 2)
    assert np.allclose(y[:, :n], x[:, :k] @ w.T, rtol=1e-5, atol=1e-5)
    assert np.isnan(y[:, n:]).all()  # nothing outside its rows


@pytest.mark.parametrize("isa", ISAS)
def test_fp16_conversions_round_to_nearest_even(isa):
    available(isa)
    values = np.concatenate([np.random.default_rng(0).standard_normal(1000, dtype=np.float32) * 100,
                             np.array([0.0, -0.0, 1e-7, -3e-6, 6.1e-5, 65504, 65520, 1e6, np.inf, -np.inf],
                                      dtype=np.float32)])
    half = np.zeros(len(values), dtype=np.uint16)
    library().ryot_f16_from_f32(ptr(values), ptr(half), len(values), ISAS.index(isa))
    with np.errstate(over="ignore"):  # 1e6 overflows to infinity, as it must
        assert np.array_equal(half, values.astype(np.float16).view(np.uint16))
    back = np.zeros(len(values), dtype=np.float32)
    library().ryot_f32_from_f16(ptr(half), ptr(back), len(values), ISAS.index(isa))
    assert np.array_equal(back, half.view(np.float16).astype(np.float32))


@pytest.mark.parametrize("isa", ISAS)
def test_softmax_and_silu(isa):
    available(isa)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(37, dtype=np.float32) * 20).astype(np.float32)
    probs = x.copy()
    library().ryot_softmax(ptr(probs), len(x), ISAS.index(isa))
    e = np.exp(x.astype(np.float64) - x.max())
    assert np.allclose(probs, e / e.sum(), rtol=1e-5, atol=1e-7)
    gate, up = x * 5, rng.standard_normal(37, dtype=np.float32)
    out = np.zeros_like(x)
    library().ryot_silu_mul(ptr(gate), ptr(up), len(x), ptr(out), ISAS.index(isa))
    g = gate.astype(np.float64)
    assert np.allclose(out, g / (1 + np.exp(-g)) * up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("n, hd", [(1, 16), (17, 16), (40, 64), (33, 8)])
def test_attention_over_transposed_keys(isa, half, n, hd):
    available(isa)
    rng = np.random.default_rng(n + hd)
    q = rng.standard_normal(hd, dtype=np.float32)
    keys, values = rng.standard_normal((n, hd), dtype=np.float32), rng.standard_normal((n, hd), dtype=np.float32)
    if half:
        keys, values = keys.astype(np.float16).astype(np.float32), values.astype(np.float16).astype(np.float32)
    stride = n + 5  # positions per key row: the cache's length, not the positions in use
    stored = np.zeros((hd, stride), dtype=np.float16 if half else np.float32)
    stored[:, :n] = keys.T
    values_stored = values.astype(np.float16 if half else np.float32)
    scores, out = np.zeros(stride, dtype=np.float32), np.zeros(hd, dtype=np.float32)
    library().ryot_attend(ptr(q), ptr(stored), stride, ptr(values_stored), n, hd, int(half), np.float32(0.3),
                          ptr(scores), ptr(out), ISAS.index(isa))
    s = keys.astype(np.float64) @ q * 0.3
    p = np.exp(s - s.max())
    assert np.allclose(out, (p / p.sum()) @ values, rtol=1e-5, atol=1e-6)
