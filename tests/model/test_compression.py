"""The fused BitLinear step against the fake-quantized reference (`plain_autograd`): the
same forward values; gradients exact where promised, close elsewhere, in fp32 and bf16;
with the elementwise steps in torch and in the native library, and the two against each
other."""

import pytest
import torch

from native_marks import needs_native
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.matryoshka import SiluGate
from ryot_ray.model.compression import (NATIVE_STEPS, SAVERS, TORCH_STEPS, integer_linear, plain_autograd,
                                        stored_bits)
from ryot_ray.model.quantize import int8_activations, ternarize

MODES = ("none", "int8", "binary")
STEPS = [pytest.param(TORCH_STEPS, id="torch"), pytest.param(NATIVE_STEPS, id="native", marks=needs_native)]


def _layer(mode: str, backward_dtype=torch.float32, reference: bool = False, steps=TORCH_STEPS) -> BitLinear:
    torch.manual_seed(0)
    layer = BitLinear(40, 24, bias=True, activation_compression=mode, backward_dtype=backward_dtype, steps=steps)
    torch.nn.init.normal_(layer.norm.weight, 1.0, 0.2)
    if reference:
        layer.quantized_linear = plain_autograd
    return layer


def _gradients(layer: BitLinear, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    layer(x).square().sum().backward()
    return x.grad, layer.weight.grad, layer.bias.grad, layer.norm.weight.grad


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("steps", STEPS)
def test_the_integer_product_is_exact(steps):
    codes, scale = int8_activations(torch.randn(2, 3, 300))
    weight_codes, weight_scale = ternarize(torch.randn(17, 300))
    bias = torch.randn(17)
    sums = codes.to(torch.int64) @ weight_codes.to(torch.int64).T  # exact
    got = integer_linear(codes.to(torch.int8), scale, weight_codes.to(torch.int8), weight_scale, None, steps)
    assert torch.equal(got, sums.float() * (weight_scale / scale))
    got = integer_linear(codes.to(torch.int8), scale, weight_codes.to(torch.int8), weight_scale, bias, steps)
    assert torch.equal(got, sums.float() * (weight_scale / scale) + bias)


@pytest.mark.parametrize("steps", STEPS)
def test_the_fused_forward_is_the_reference_forward(steps):
    x = torch.randn(3, 7, 40)
    want = _layer("none", reference=True)(x)
    for mode in MODES:
        assert torch.allclose(_layer(mode, steps=steps)(x), want, rtol=1e-5, atol=1e-5)
    prefix = _layer("int8", steps=steps)(x[..., :30], rows=10)
    assert torch.allclose(prefix, _layer("none", reference=True)(x[..., :30], rows=10), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", STEPS)
def test_fp32_backward_of_the_uncompressed_layer_is_the_reference(steps):
    x = torch.randn(3, 7, 40)
    for got, want in zip(_gradients(_layer("none", steps=steps), x), _gradients(_layer("none", reference=True), x)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", STEPS)
def test_int8_keeps_the_weight_gradient_exact_and_the_rest_close(steps):
    x = torch.randn(3, 7, 40)
    (x_grad, weight_grad, bias_grad, norm_grad), (x_grad8, weight_grad8, bias_grad8, norm_grad8) = (
        _gradients(_layer("none", reference=True), x), _gradients(_layer("int8", steps=steps), x))
    assert torch.allclose(weight_grad8, weight_grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bias_grad8, bias_grad)
    # the SubLN's backward rebuilds its input from the int8 activations
    assert 0 < _relative(x_grad8, x_grad) < 0.02 and 0 < _relative(norm_grad8, norm_grad) < 0.02


def test_binary_gradients_are_coarse_but_correlated():
    x = torch.randn(3, 7, 40)
    exact, binary = _gradients(_layer("none", reference=True), x), _gradients(_layer("binary"), x)
    assert torch.allclose(binary[2], exact[2])  # the bias gradient needs no activations
    for got, want in ((binary[0], exact[0]), (binary[1], exact[1])):
        assert 0.05 < _relative(got, want) < 1.0
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.5


@pytest.mark.parametrize("steps", STEPS)
def test_a_bf16_backward_stays_within_bf16_rounding_of_the_reference(steps):
    x = torch.randn(3, 7, 40)
    exact = _gradients(_layer("none", reference=True), x)
    for mode in ("none", "int8"):
        for got, want in zip(_gradients(_layer(mode, torch.bfloat16, steps=steps), x), exact):
            assert _relative(got, want) < 0.02  # bf16 keeps 8 significant bits: ~0.4 % per product


@pytest.mark.parametrize("width", [40, 13])  # 13: sign bits padded to a whole byte
def test_savers_round_trip_and_count_their_bits(width):
    normed = torch.randn(5, width)
    codes, scale = int8_activations(normed)
    rounded = codes / scale
    codes = codes.to(torch.int8)  # as the forward makes them
    bits = {name: stored_bits(saver.pack(normed, codes, scale)) for name, saver in SAVERS.items()}
    assert bits["none"] == 32 * 5 * width
    assert bits["int8"] == 8 * 5 * width + 32 * 5
    assert bits["binary"] == 8 * 5 * -(-width // 8) + 32 * 5

    def round_trip(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return SAVERS[name].unpack(SAVERS[name].pack(normed, codes, scale), width, TORCH_STEPS, torch.float32)

    activations, normalized = round_trip("none")
    assert torch.equal(activations, rounded) and torch.equal(normalized, normed)
    activations, normalized = round_trip("int8")
    assert torch.equal(activations, rounded) and torch.equal(normalized, rounded)
    binary, _ = round_trip("binary")
    assert torch.equal(binary.sign(), torch.where(codes >= 0, 1.0, -1.0))
    assert torch.allclose(binary.abs().mean(-1), rounded.abs().mean(-1))


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("width", [688, 40, 13])  # 40, 13: rows that end off a 16-lane vector
def test_native_steps_are_the_torch_steps(width, threads):
    torch.manual_seed(width)
    x, weight = torch.randn(2, 33, width) * 3, torch.randn(width)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (normed, codes, scale, rstd), (want_normed, want_codes, want_scale, want_rstd) = (
            NATIVE_STEPS.norm_quantize(x, weight, 1e-6, True), TORCH_STEPS.norm_quantize(x, weight, 1e-6, True))
        # the sum of squares in another order: the last bit of rstd, rarely a code off by one
        assert torch.allclose(rstd, want_rstd, rtol=1e-6) and torch.allclose(normed, want_normed, rtol=1e-5, atol=1e-6)
        assert torch.allclose(scale, want_scale, rtol=1e-5)
        assert (codes.int() - want_codes.int()).abs().max() <= 1 and (codes != want_codes).float().mean() < 0.01
        assert NATIVE_STEPS.norm_quantize(x, weight, 1e-6, False)[0] is None
        codes, scale = want_codes, want_scale
        sums = torch.randint(-5000, 5000, (66, 24), dtype=torch.int32)
        weight_scale, bias = torch.tensor(0.37), torch.randn(24)
        assert torch.equal(NATIVE_STEPS.scale_sums(sums.clone(), scale, weight_scale, bias),
                           TORCH_STEPS.scale_sums(sums, scale, weight_scale, bias))
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(NATIVE_STEPS.requantize(want_normed, dtype), TORCH_STEPS.requantize(want_normed, dtype))
            assert torch.equal(NATIVE_STEPS.dequantize(codes, scale, dtype), TORCH_STEPS.dequantize(codes, scale, dtype))
        inverse, scaled = 1 / weight, weight * weight_scale
        for grad in (torch.randn(2, 33, width), torch.randn(2, 33, width).bfloat16()):
            got, want = (steps.subln_backward(grad, want_normed, want_rstd, inverse, scaled)
                         for steps in (NATIVE_STEPS, TORCH_STEPS))
            assert torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
            assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(previous)


@needs_native
def test_native_gate_steps_are_the_torch_steps():
    torch.manual_seed(1)
    gate, up, grad = torch.randn(3, 7, 45) * 4, torch.randn(3, 7, 45), torch.randn(3, 7, 45)
    assert torch.allclose(NATIVE_STEPS.silu_mul(gate, up), TORCH_STEPS.silu_mul(gate, up), rtol=1e-5, atol=1e-6)
    for got, want in zip(NATIVE_STEPS.silu_mul_backward(grad, gate, up), TORCH_STEPS.silu_mul_backward(grad, gate, up)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(NATIVE_STEPS.quantize(gate), TORCH_STEPS.quantize(gate)):
        assert torch.equal(got, want)


def _gate_gradients(mode: str, steps, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    gate, up = gate.clone().requires_grad_(), up.clone().requires_grad_()
    function = SiluGate(mode, steps) if mode else (lambda g, u: torch.nn.functional.silu(g) * u)
    out = function(gate, up)
    out.square().sum().backward()
    return out, gate.grad, up.grad


@pytest.mark.parametrize("steps", STEPS)
def test_the_silu_gate_keeps_fewer_bytes_and_its_gradients(steps):
    torch.manual_seed(2)
    gate, up = torch.randn(4, 9, 64) * 2, torch.randn(4, 9, 64)
    want = _gate_gradients("", steps, gate, up)
    for got, expected in zip(_gate_gradients("none", steps, gate, up), want):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    out, *grads = _gate_gradients("int8", steps, gate, up)
    assert torch.allclose(out, want[0], rtol=1e-5, atol=1e-5)  # the forward is exact
    assert all(0 < _relative(got, expected) < 0.03 for got, expected in zip(grads, want[1:]))

    def saved_bytes(function) -> int:
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.nbytes) or t, lambda t: t):
            function(gate.clone().requires_grad_(), up.clone().requires_grad_())
        return sum(kept)
    autograd = saved_bytes(lambda g, u: torch.nn.functional.silu(g) * u)
    assert autograd == 3 * gate.nbytes  # gate, silu(gate), up
    assert saved_bytes(SiluGate("none", steps)) == 2 * gate.nbytes
    assert saved_bytes(SiluGate("int8", steps)) == 2 * (gate.numel() + 4 * 4 * 9)
