"""The fused RMSNorm against the Llama norm it replaces: the same values and gradients,
half the tensors kept for backward, the same checkpoint keys."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from native_marks import needs_native
from ryot_ray.config import ModelConfig
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.model.build import build_model
from ryot_ray.model.steps import NATIVE_STEPS, TORCH_STEPS
from ryot_ray.model.norm import FusedRMSNorm

STEPS = [pytest.param(TORCH_STEPS, id="torch"), pytest.param(NATIVE_STEPS, id="native", marks=needs_native)]


def _run(norm: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.nbytes) or t, lambda t: t):
        out = norm(x)
    (out * torch.linspace(-1, 1, x.shape[-1])).square().sum().backward()
    return kept, out, x.grad, norm.weight.grad


@pytest.mark.parametrize("width", [256, 40])
@pytest.mark.parametrize("steps", STEPS)
def test_the_fused_norm_is_the_llama_norm(steps, width):
    torch.manual_seed(0)
    llama = LlamaRMSNorm(width, eps=1e-5)
    torch.nn.init.normal_(llama.weight, 1.0, 0.3)
    x = torch.randn(3, 11, width) * 2
    fused = FusedRMSNorm(LlamaRMSNorm(width, eps=1e-5), steps=steps)
    fused.weight.data.copy_(llama.weight.data)
    (kept, *got), (want_kept, *want) = _run(fused, x), _run(llama, x)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert sum(kept) == x.nbytes + 3 * 11 * 4 + width * 4  # x, one rstd per token, the weight
    assert sum(want_kept) > 2 * x.nbytes


def test_a_bitnet_model_fuses_every_norm_and_keeps_the_keys():
    tokenizer = build_char_tokenizer()
    bitnet = build_model(ModelConfig(preset="tiny"), tokenizer)
    reference = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    norms = [m for m in bitnet.modules() if isinstance(m, FusedRMSNorm)]
    assert len(norms) == 2 * 2 + 1 and not any(isinstance(m, LlamaRMSNorm) for m in bitnet.modules())
    assert {k for k in bitnet.state_dict() if "layernorm" in k or k == "model.norm.weight"} == {
        k for k in reference.state_dict() if "layernorm" in k or k == "model.norm.weight"}


@pytest.mark.parametrize("steps", STEPS)
def test_compressed_activations_keep_the_norm_input_in_bf16(steps):
    torch.manual_seed(0)
    x = torch.randn(3, 11, 256) * 2
    fp32, bf16 = (FusedRMSNorm(LlamaRMSNorm(256, eps=1e-5), compression, steps) for compression in ("none", "int8"))
    bf16.weight.data.copy_(fp32.weight.data)
    (kept, *got), (_, *want) = _run(bf16, x), _run(fp32, x)
    assert torch.equal(got[0], want[0])  # the forward is the same
    for a, b in zip(got[1:], want[1:]):
        assert 0 < float((a - b).norm() / b.norm()) < 1e-2  # gradients of the bf16-rounded input
    assert sum(kept) == x.nbytes // 2 + 3 * 11 * 4 + 256 * 4


def test_nothing_is_kept_without_gradients():
    kept = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        FusedRMSNorm(LlamaRMSNorm(16))(torch.randn(2, 16))
    assert kept == []
