"""Nested FFN widths and top-k activation sparsity."""

import pytest
import torch

from native_marks import needs_native
from ryot_ray.config import ConfigError, ModelConfig
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.model.build import build_model
from ryot_ray.model.matryoshka import (GATINGS, ActivationGate, KeptGate, MatryoshkaMLP, TopK, ffn_levels, sampled_level,
                                       use_width)
from ryot_ray.model.steps import NATIVE_STEPS, TORCH_STEPS
from ryot_ray.model.widths import ffn_widths, kept_activations

STEPS = [pytest.param(TORCH_STEPS, id="torch"), pytest.param(NATIVE_STEPS, id="native", marks=needs_native)]


def _bitnet(**knobs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", **knobs), build_char_tokenizer())


def test_widths_halve_and_stop_above_one_unit():
    assert ffn_widths(688, 3) == [688, 344, 172]
    with pytest.raises(ConfigError, match="mrl_depth: 9 nested widths of an FFN of 128"):
        ffn_widths(128, 9)


def test_a_narrow_width_reads_only_the_weight_prefixes():
    model = _bitnet(mrl_depth=2)
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp, MatryoshkaMLP) and ffn_levels(model) == [128, 64]
    x = torch.randn(2, 3, 64)
    use_width(model, 1)
    with torch.no_grad():
        want = mlp(x)
        # shuffle everything outside the prefixes: same values (same ternary scales), other places
        for weight, rows in ((mlp.gate_proj.weight, True), (mlp.up_proj.weight, True), (mlp.down_proj.weight, False)):
            outside = weight[64:] if rows else weight[:, 64:]
            outside.copy_(outside.flatten()[torch.randperm(outside.numel())].view_as(outside))
        # equal up to the float order of the shuffled mean |w| of the ternary scale
        assert torch.allclose(mlp(x), want, rtol=1e-5, atol=1e-6)
        use_width(model, 0)
        assert not torch.allclose(mlp(x), want, rtol=1e-2, atol=1e-3)


def test_training_a_narrow_width_leaves_the_rest_untouched():
    model = _bitnet(mrl_depth=3)
    use_width(model, 2)  # 32 of 128
    mlp = model.model.layers[0].mlp
    mlp(torch.randn(2, 3, 64)).square().sum().backward()
    assert mlp.gate_proj.weight.grad[32:].abs().sum() == 0 and mlp.gate_proj.weight.grad[:32].abs().sum() > 0
    assert mlp.down_proj.weight.grad[:, 32:].abs().sum() == 0 and mlp.down_proj.weight.grad[:, :32].abs().sum() > 0
    with pytest.raises(ValueError, match="3 nested widths"):
        use_width(model, 3)


def test_top_k_keeps_the_largest_magnitudes_and_passes_every_gradient():
    h = torch.tensor([[0.5, -3.0, 1.0, 0.1, -2.0, 0.2, 0.0, 4.0]], requires_grad=True)
    kept = TopK(0.5)(h)
    assert kept.tolist() == [[0.0, -3.0, 1.0, 0.0, -2.0, 0.0, 0.0, 4.0]]
    (kept * torch.arange(8.0)).sum().backward()
    assert h.grad.tolist() == [list(range(8))]  # straight-through: dropped ones learn too
    assert kept_activations(0.25, 688) == 172 and kept_activations(100.0, 688) == 100
    assert kept_activations(0.001, 10) == 1


def test_sparse_model_keeps_k_activations_per_token():
    model = _bitnet(sparse_k=0.25)
    mlp = model.model.layers[0].mlp
    seen = {}
    mlp.down_proj.register_forward_hook(lambda m, args, out: seen.update(h=args[0]))
    model(input_ids=torch.tensor([[1, 5, 7, 9]]))
    assert (seen["h"].count_nonzero(-1) == 32).all()  # 25 % of 128


def test_knob_errors_name_the_key():
    with pytest.raises(ConfigError, match="sparse_k: 200 activations is above the narrowest FFN width 64"):
        _bitnet(mrl_depth=2, sparse_k=200.0)


def test_the_width_a_micro_batch_trains_is_shared_and_reproducible():
    levels = [sampled_level(0, step, 0, 3) for step in range(60)]
    assert levels == [sampled_level(0, step, 0, 3) for step in range(60)]
    assert set(levels) == {0, 1, 2}
    assert {sampled_level(0, step, 0, 1) for step in range(10)} == {0}


AUTOGRAD = {"silu": lambda g, u: torch.nn.functional.silu(g) * u, "relu2": lambda g, u: torch.relu(g).square() * u}


def _gate_gradients(mode: str, steps, gate: torch.Tensor, up: torch.Tensor, act: str = "silu"):
    gate, up = gate.clone().requires_grad_(), up.clone().requires_grad_()
    function = KeptGate(GATINGS[act], mode, steps) if mode else AUTOGRAD[act]
    out = function(gate, up)
    out.square().sum().backward()
    return out, gate.grad, up.grad


@pytest.mark.parametrize("act", ["silu", "relu2"])
@pytest.mark.parametrize("steps", STEPS)
def test_the_gate_keeps_fewer_bytes_and_its_gradients(steps, act):
    torch.manual_seed(2)
    gate, up = torch.randn(4, 9, 64) * 2, torch.randn(4, 9, 64)
    want = _gate_gradients("", steps, gate, up, act)
    for got, expected in zip(_gate_gradients("none", steps, gate, up, act), want):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    out, *grads = _gate_gradients("int8", steps, gate, up, act)
    assert torch.allclose(out, want[0], rtol=1e-5, atol=1e-5)  # the forward is exact
    assert all(0 < _relative(got, expected) < 0.03 for got, expected in zip(grads, want[1:]))

    def saved_bytes(function) -> int:
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.nbytes) or t, lambda t: t):
            function(gate.clone().requires_grad_(), up.clone().requires_grad_())
        return sum(kept)
    assert saved_bytes(AUTOGRAD[act]) >= 3 * gate.nbytes  # gate, act(gate), up (relu²: its relu too)
    assert saved_bytes(KeptGate(GATINGS[act], "none", steps)) == 2 * gate.nbytes
    assert saved_bytes(KeptGate(GATINGS[act], "int8", steps)) == 2 * (gate.numel() + 4 * 4 * 9)


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_the_gate_is_picked_by_the_model_activation():
    tokenizer = build_char_tokenizer()
    assert build_model(ModelConfig(preset="tiny"), tokenizer).model.layers[0].mlp.activation.gating.name == "silu"
    bitnet = build_model(ModelConfig(preset="tiny", architecture="bitnet"), tokenizer)
    assert bitnet.model.layers[0].mlp.activation.gating.name == "relu2"
    from ryot_ray.model.build import model_config

    gelu = model_config("tiny", tokenizer)
    gelu.hidden_act = "gelu"
    mlp = build_model(ModelConfig(preset="tiny"), tokenizer, hf_config=gelu).model.layers[0].mlp
    assert isinstance(mlp.activation, ActivationGate)
    gate, up = torch.randn(2, 5, 128), torch.randn(2, 5, 128)
    assert torch.equal(mlp.activation(gate, up), torch.nn.functional.gelu(gate) * up)
