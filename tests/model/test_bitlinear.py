import torch
import torch.nn.functional as F

from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.quantize import int8_activations, straight_through, ternarize


def test_ternarize_known_tensor():
    weight = torch.tensor([[0.4, -1.2, 0.05], [2.0, -0.1, 0.0]])
    codes, scale = ternarize(weight)
    assert scale.item() == torch.tensor(3.75 / 6).item()  # mean |w| = 0.625
    # w / 0.625 = [0.64, -1.92, 0.08], [3.2, -0.16, 0] -> round, clip to [-1, 1]
    assert codes.tolist() == [[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]


def test_int8_activations_known_tensor():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    codes, scale = int8_activations(x)
    assert scale[0].item() == 63.5  # 127 / max|x|
    assert codes[0].tolist() == [64.0, -127.0, 32.0]  # 63.5 rounds half to even
    assert codes[1].tolist() == [0.0, 0.0, 0.0]  # an all-zero token stays finite


def test_straight_through_gradient_is_identity():
    x = torch.tensor([0.3, -0.7, 1.6], requires_grad=True)
    y = straight_through(x, x.detach().round())
    assert y.tolist() == [0.0, -1.0, 2.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


def test_bitlinear_matches_integer_reference():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    torch.nn.init.normal_(layer.norm.weight, 1.0, 0.1)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        normed = F.rms_norm(x, (16,), layer.norm.weight, layer.norm.eps)
        x_codes, x_scale = int8_activations(normed)
        w_codes, w_scale = ternarize(layer.weight)
        integer = x_codes.to(torch.int64) @ w_codes.to(torch.int64).T  # exact integer products
        expected = integer.to(torch.float32) * w_scale / x_scale
        assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_bitlinear_trains_latent_weights():
    torch.manual_seed(0)
    layer = BitLinear(8, 4)
    layer(torch.randn(2, 8)).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.norm.weight.grad.abs().sum() > 0


def test_from_linear_copies_weights_and_bias():
    linear = torch.nn.Linear(6, 3, bias=True)
    layer = BitLinear.from_linear(linear)
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)


def test_prefix_uses_the_first_rows_and_inputs_of_one_ternary_weight():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    torch.nn.init.normal_(layer.norm.weight, 1.0, 0.1)
    x = torch.randn(4, 10)  # the first 10 of 16 inputs
    with torch.no_grad():
        normed = F.rms_norm(x, (10,), layer.norm.weight[:10], layer.norm.eps)
        x_codes, x_scale = int8_activations(normed)
        w_codes, w_scale = ternarize(layer.weight)  # the scale of the whole weight
        expected = (x_codes @ w_codes[:5, :10].T) * w_scale / x_scale
        assert torch.allclose(layer(x, rows=5), expected, rtol=1e-5, atol=1e-5)


def test_the_ternary_weight_is_made_again_only_after_the_weight_changed():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    first = layer.ternary_weight()[0]
    for _ in range(2):  # two micro-batches of one step share the codes
        layer(torch.randn(4, 16)).square().sum().backward()
        assert layer.ternary_weight()[0] is first
    optimizer.step()
    codes, scale = layer.ternary_weight()
    assert codes is not first and codes.dtype == torch.int8
    want_codes, want_scale = ternarize(layer.weight.detach())
    assert torch.equal(codes, want_codes.to(torch.int8)) and scale == want_scale
    layer.load_state_dict({name: torch.zeros_like(value) for name, value in layer.state_dict().items()})
    assert not layer.ternary_weight()[0].any()
