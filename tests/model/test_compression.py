"""The fused BitLinear step against the fake-quantized reference (`plain_autograd`): the
same forward values; gradients exact where promised, close elsewhere, in fp32 and bf16."""

import pytest
import torch

from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.compression import SAVERS, integer_linear, plain_autograd, stored_bits
from ryot_ray.model.quantize import int8_activations, ternarize

MODES = ("none", "int8", "binary")


def _layer(mode: str, backward_dtype=torch.float32, reference: bool = False) -> BitLinear:
    torch.manual_seed(0)
    layer = BitLinear(40, 24, bias=True, activation_compression=mode, backward_dtype=backward_dtype)
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


def test_the_integer_product_is_exact():
    codes, scale = int8_activations(torch.randn(6, 300))
    weight_codes, weight_scale = ternarize(torch.randn(17, 300))
    sums = codes.to(torch.int64) @ weight_codes.to(torch.int64).T  # exact
    got = integer_linear(codes, scale, weight_codes.to(torch.int8), weight_scale)
    assert torch.equal(got, sums.float() * (weight_scale / scale))


def test_the_fused_forward_is_the_reference_forward():
    x = torch.randn(3, 7, 40)
    want = _layer("none", reference=True)(x)
    for mode in MODES:
        assert torch.allclose(_layer(mode)(x), want, rtol=1e-5, atol=1e-5)
    prefix = _layer("int8")(x[..., :30], rows=10)
    assert torch.allclose(prefix, _layer("none", reference=True)(x[..., :30], rows=10), rtol=1e-5, atol=1e-5)


def test_fp32_backward_of_the_uncompressed_layer_is_the_reference():
    x = torch.randn(3, 7, 40)
    for got, want in zip(_gradients(_layer("none"), x), _gradients(_layer("none", reference=True), x)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int8_keeps_the_weight_gradient_exact_and_the_rest_close():
    x = torch.randn(3, 7, 40)
    (x_grad, weight_grad, bias_grad, norm_grad), (x_grad8, weight_grad8, bias_grad8, norm_grad8) = (
        _gradients(_layer("none", reference=True), x), _gradients(_layer("int8"), x))
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


def test_a_bf16_backward_stays_within_bf16_rounding_of_the_reference():
    x = torch.randn(3, 7, 40)
    exact = _gradients(_layer("none", reference=True), x)
    for got, want in zip(_gradients(_layer("none", torch.bfloat16), x), exact):
        assert _relative(got, want) < 0.01  # bf16 keeps 8 significant bits: ~0.4 % per product


@pytest.mark.parametrize("width", [40, 13])  # 13: sign bits padded to a whole byte
def test_savers_round_trip_and_count_their_bits(width):
    normed = torch.randn(5, width)
    codes, scale = int8_activations(normed)
    rounded = codes / scale
    bits = {name: stored_bits(saver.pack(normed, codes, scale)) for name, saver in SAVERS.items()}
    assert bits["none"] == 32 * 5 * width
    assert bits["int8"] == 8 * 5 * width + 32 * 5
    assert bits["binary"] == 8 * 5 * -(-width // 8) + 32 * 5
    activations, normalized = SAVERS["none"].unpack(SAVERS["none"].pack(normed, codes, scale), width)
    assert torch.equal(activations, rounded) and torch.equal(normalized, normed)
    activations, normalized = SAVERS["int8"].unpack(SAVERS["int8"].pack(normed, codes, scale), width)
    assert torch.equal(activations, rounded) and torch.equal(normalized, rounded)
    binary, _ = SAVERS["binary"].unpack(SAVERS["binary"].pack(normed, codes, scale), width)
    assert torch.equal(binary.sign(), torch.where(codes >= 0, 1.0, -1.0))
    assert torch.allclose(binary.abs().mean(-1), rounded.abs().mean(-1))
