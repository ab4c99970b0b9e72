"""The fused BitLinear step against the fake-quantized reference (`plain_autograd`): the
same forward values; gradients exact where promised, close elsewhere, in fp32 and bf16;
with the elementwise steps in torch and in the native library, and the two against each
other."""

import pytest
import torch

from native_marks import needs_native
from ryot_ray.model.bitlinear import BareBitLinear, BitLinear
from ryot_ray.model.compression import SAVERS, integer_linear, plain_autograd, stored_bits
from ryot_ray.model.steps import NATIVE_STEPS, TORCH_STEPS
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
    assert got._base is None  # not a view: a later in-place op on a layer's output is allowed


@pytest.mark.parametrize("steps", STEPS)
def test_the_fused_forward_is_the_reference_forward(steps):
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(3))
    want = _layer("none", reference=True)(x)
    for mode in MODES:
        assert torch.allclose(_layer(mode, steps=steps)(x), want, rtol=1e-5, atol=1e-5)
    prefix = _layer("int8", steps=steps)(x[..., :30], rows=10)
    assert torch.allclose(prefix, _layer("none", reference=True)(x[..., :30], rows=10), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", STEPS)
def test_fp32_backward_of_the_uncompressed_layer_is_the_reference(steps):
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(4))
    for got, want in zip(_gradients(_layer("none", steps=steps), x), _gradients(_layer("none", reference=True), x)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", STEPS)
def test_int8_keeps_the_weight_gradient_exact_and_the_rest_close(steps):
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(5))
    (x_grad, weight_grad, bias_grad, norm_grad), (x_grad8, weight_grad8, bias_grad8, norm_grad8) = (
        _gradients(_layer("none", reference=True), x), _gradients(_layer("int8", steps=steps), x))
    assert torch.allclose(weight_grad8, weight_grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bias_grad8, bias_grad)
    # the SubLN's backward rebuilds its input from the int8 activations
    assert 0 < _relative(x_grad8, x_grad) < 0.02 and 0 < _relative(norm_grad8, norm_grad) < 0.02


def test_binary_gradients_are_coarse_but_correlated():
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(7))
    exact, binary = _gradients(_layer("none", reference=True), x), _gradients(_layer("binary"), x)
    assert torch.allclose(binary[2], exact[2])  # the bias gradient needs no activations
    for got, want in ((binary[0], exact[0]), (binary[1], exact[1])):
        assert 0.05 < _relative(got, want) < 1.0
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.5


@pytest.mark.parametrize("steps", STEPS)
def test_a_bf16_backward_stays_within_bf16_rounding_of_the_reference(steps):
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(6))
    exact = _gradients(_layer("none", reference=True), x)
    for mode, bound in (("none", 0.01), ("int8", 0.02)):  # bf16 keeps 8 significant bits: ~0.4 % per product
        for got, want in zip(_gradients(_layer(mode, torch.bfloat16, steps=steps), x), exact):
            assert _relative(got, want) < bound


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



# ---- a BitLinear without its SubLN (the `bitnet` architecture's) ----

def _bare(mode: str, reference: bool = False, steps=TORCH_STEPS) -> BareBitLinear:
    torch.manual_seed(0)
    layer = BareBitLinear(40, 24, bias=True, activation_compression=mode, backward_dtype=torch.float32, steps=steps)
    if reference:
        layer.quantized_linear = layer.reference
    return layer


@pytest.mark.parametrize("steps", STEPS)
def test_the_bare_layer_is_its_reference(steps):
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(3)) * 2
    assert not hasattr(_bare("none"), "norm") and set(dict(_bare("none").named_parameters())) == {"weight", "bias"}
    want, want_grads = _bare("none", reference=True)(x), _bare_gradients(_bare("none", reference=True), x)
    for mode in MODES:
        assert torch.allclose(_bare(mode, steps=steps)(x), want, rtol=1e-5, atol=1e-5)
        grads = _bare_gradients(_bare(mode, steps=steps), x)
        if mode == "binary":  # the signs of the activations, and a mean magnitude per token
            assert _relative(grads[1], want_grads[1]) < 1
        else:  # the weight gradient multiplies the rounded activations the forward used
            assert _relative(grads[1], want_grads[1]) < 1e-5
        for got, exact in zip(grads[::2], want_grads[::2]):  # straight through the rounding: the same
            assert _relative(got, exact) < 1e-5


def _bare_gradients(layer: BareBitLinear, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    layer(x).square().sum().backward()
    return x.grad, layer.weight.grad, layer.bias.grad
