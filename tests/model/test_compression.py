"""Saved-activation compression: the same forward pass; gradients exact where promised, close elsewhere."""

import pytest
import torch

from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.quantize import int8_activations
from ryot_ray.model.compression import SAVERS, stored_bits


def _gradients(mode: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    layer = BitLinear(40, 24, bias=True, activation_compression=mode)
    torch.nn.init.normal_(layer.norm.weight, 1.0, 0.2)
    x = x.clone().requires_grad_()
    layer(x).square().sum().backward()
    return x.grad, layer.weight.grad, layer.bias.grad, layer.norm.weight.grad


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_compressed_forward_is_the_plain_forward():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 40)
    layers = {mode: BitLinear(40, 24, bias=True, activation_compression=mode) for mode in ("none", "int8", "binary")}
    torch.nn.init.normal_(layers["none"].norm.weight, 1.0, 0.2)
    for layer in layers.values():
        layer.load_state_dict(layers["none"].state_dict())
    want = layers["none"](x)
    assert torch.equal(layers["int8"](x), want) and torch.equal(layers["binary"](x), want)
    assert torch.equal(layers["int8"](x[..., :30], rows=10), layers["none"](x[..., :30], rows=10))


def test_int8_keeps_the_weight_gradient_exact_and_the_rest_close():
    x = torch.randn(3, 7, 40)
    (x_grad, weight_grad, bias_grad, norm_grad), (x_grad8, weight_grad8, bias_grad8, norm_grad8) = (
        _gradients("none", x), _gradients("int8", x))
    assert torch.allclose(weight_grad8, weight_grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bias_grad8, bias_grad)
    # the SubLN's backward rebuilds its input from the int8 activations
    assert 0 < _relative(x_grad8, x_grad) < 0.02 and 0 < _relative(norm_grad8, norm_grad) < 0.02


def test_binary_gradients_are_coarse_but_correlated():
    x = torch.randn(3, 7, 40)
    exact, binary = _gradients("none", x), _gradients("binary", x)
    assert torch.allclose(binary[2], exact[2])  # the bias gradient needs no activations
    for got, want in ((binary[0], exact[0]), (binary[1], exact[1])):
        assert 0.05 < _relative(got, want) < 1.0
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.5


@pytest.mark.parametrize("width", [40, 13])  # 13: sign bits padded to a whole byte
def test_savers_round_trip_and_count_their_bits(width):
    codes, scale = int8_activations(torch.randn(5, width))
    exact = codes / scale
    bits = {name: stored_bits(saver.pack(codes, scale)) for name, saver in SAVERS.items()}
    assert bits["none"] == 32 * 5 * width
    assert bits["int8"] == 8 * 5 * width + 32 * 5
    assert bits["binary"] == 8 * 5 * -(-width // 8) + 32 * 5
    assert torch.equal(SAVERS["int8"].unpack(SAVERS["int8"].pack(codes, scale), width), exact)
    binary = SAVERS["binary"].unpack(SAVERS["binary"].pack(codes, scale), width)
    assert torch.equal(binary.sign(), torch.where(codes >= 0, 1.0, -1.0))
    assert torch.allclose(binary.abs().mean(-1), exact.abs().mean(-1))
