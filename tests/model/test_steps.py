"""The native elementwise steps against torch's (the reference): equal where the order of
a row's sums does not enter, within float rounding where it does; on one thread and on
two (the per-thread sums and splits); rows that end off a 16-lane vector."""

import pytest
import torch

from native_marks import needs_native
from ryot_ray.model.steps import NATIVE_STEPS, TORCH_STEPS

pytestmark = needs_native


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("width", [688, 40, 13])
def test_bitlinear_steps(width, threads):
    torch.manual_seed(width)
    x, weight = torch.randn(2, 33, width) * 3, torch.randn(width)
    (normed, codes, scale, rstd), (want_normed, want_codes, want_scale, want_rstd) = (
        NATIVE_STEPS.norm_quantize(x, weight, 1e-6, True), TORCH_STEPS.norm_quantize(x, weight, 1e-6, True))
    # the sum of squares in another order: the last bit of rstd, rarely a code off by one
    assert torch.allclose(rstd, want_rstd, rtol=1e-6) and torch.allclose(normed, want_normed, rtol=1e-5, atol=1e-6)
    assert torch.allclose(scale, want_scale, rtol=1e-5)
    assert (codes.int() - want_codes.int()).abs().max() <= 1 and (codes != want_codes).float().mean() < 0.01
    assert NATIVE_STEPS.norm_quantize(x, weight, 1e-6, False)[0] is None
    codes, scale = want_codes, want_scale
    sums = torch.randint(-5000, 5000, (2, 33, 24), dtype=torch.int32)
    weight_scale, bias = torch.tensor(0.37), torch.randn(24)
    for b in (bias, None):
        want = TORCH_STEPS.scale_sums(sums, scale, weight_scale, b, torch.empty(2, 33, 24))
        assert torch.equal(NATIVE_STEPS.scale_sums(sums, scale, weight_scale, b, torch.empty(2, 33, 24)), want)
        for steps in (NATIVE_STEPS, TORCH_STEPS):  # scaled in the sums' own memory
            in_place = sums.clone()
            assert torch.equal(steps.scale_sums(in_place, scale, weight_scale, b, in_place.view(torch.float32)), want)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(NATIVE_STEPS.requantize(want_normed, dtype), TORCH_STEPS.requantize(want_normed, dtype))
        assert torch.equal(NATIVE_STEPS.dequantize(codes, scale, dtype), TORCH_STEPS.dequantize(codes, scale, dtype))
    for got, want in zip(NATIVE_STEPS.quantize(x), TORCH_STEPS.quantize(x)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("width", [256, 40])
def test_norm_steps_and_their_backward(width, threads):
    torch.manual_seed(width)
    x, weight, weight_scale = torch.randn(3, 21, width) * 2, torch.randn(width), 0.37
    got, want = NATIVE_STEPS.rms_norm(x, weight, 1e-5), TORCH_STEPS.rms_norm(x, weight, 1e-5)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want))
    normed, rstd = want
    for grad in (torch.randn(3, 21, width), torch.randn(3, 21, width).bfloat16()):
        # a BitLinear's SubLN (the input rebuilt from the normalized one) and a plain RMSNorm (x itself)
        for source, inverse, scaled in ((normed, 1 / weight, weight * weight_scale), (x, None, weight)):
            got, want = (steps.subln_backward(grad, source, rstd, inverse, scaled)
                         for steps in (NATIVE_STEPS, TORCH_STEPS))
            assert torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
            assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-4)


def test_gate_steps(threads):
    torch.manual_seed(1)
    gate, up, grad = torch.randn(3, 7, 45) * 4, torch.randn(3, 7, 45), torch.randn(3, 7, 45)
    assert torch.allclose(NATIVE_STEPS.silu_mul(gate, up), TORCH_STEPS.silu_mul(gate, up), rtol=1e-5, atol=1e-6)
    for got, want in zip(NATIVE_STEPS.silu_mul_backward(grad, gate, up), TORCH_STEPS.silu_mul_backward(grad, gate, up)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_inputs_are_checked_before_they_reach_c():
    x = torch.randn(4, 32)
    with pytest.raises(ValueError, match="norm weight has 31 values for rows of 32"):
        NATIVE_STEPS.rms_norm(x, torch.ones(31), 1e-5)
    with pytest.raises(ValueError, match="scale has 3 values for 4 rows"):
        NATIVE_STEPS.dequantize(torch.zeros(4, 32, dtype=torch.int8), torch.ones(3, 1), torch.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        NATIVE_STEPS.silu_mul(x, torch.randn(4, 31))
    # another dtype or layout is converted, as torch's steps would take it
    got = NATIVE_STEPS.rms_norm(x.t().contiguous().t().bfloat16(), torch.ones(32), 1e-5)[0]
    assert torch.allclose(got, TORCH_STEPS.rms_norm(x.bfloat16().float(), torch.ones(32), 1e-5)[0], rtol=1e-5)
