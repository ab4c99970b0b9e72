"""Attention that keeps bf16 inputs and recomputes in backward, against transformers' sdpa:
the same output, the gradients of bf16-rounded inputs, a third of the bytes kept."""

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ryot_ray.config import ModelConfig
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.model.attention import ATTENTION, recomputed_attention
from ryot_ray.model.build import build_model


class Heads(nn.Module):
    """What the attention functions read of a LlamaAttention."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _run(attention, groups: int, mask: torch.Tensor | None):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    k, v = (torch.randn(2, 4 // groups, 9, 16, requires_grad=True) for _ in range(2))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append((t.dtype, t.nbytes)) or t, lambda t: t):
        out, weights = attention(Heads(groups), q, k, v, mask, scaling=0.25)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    return kept, out, weights, q.grad, k.grad, v.grad


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_recomputed_attention_is_sdpa_on_bf16_inputs(groups, padded):
    mask = None
    if padded:  # row 0 has three padding positions in front, as the batches pad
        mask = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()
        mask[0, :, :, :3] = False
        mask[0, :, :3, :3] = torch.eye(3, dtype=torch.bool)
    (kept, out, weights, *grads), (want_kept, want, _, *want_grads) = (
        _run(recomputed_attention, groups, mask), _run(sdpa_attention_forward, groups, mask))
    assert weights is None and torch.equal(out, want)  # the forward is sdpa's
    for got, exact in zip(grads, want_grads):
        error = float((got - exact).norm() / exact.norm())
        assert 0 < error < 1e-2  # the gradients of the bf16-rounded inputs
    assert {dtype for dtype, _ in kept} == {torch.bfloat16}
    q_bytes, kv_bytes = 2 * 4 * 9 * 16 * 4, 2 * (4 // groups) * 9 * 16 * 4
    assert sum(size for _, size in kept) == (q_bytes + 2 * kv_bytes) // 2
    assert sum(size for _, size in want_kept) >= q_bytes + 2 * kv_bytes + out.nbytes


def test_without_gradients_it_is_sdpa_and_keeps_nothing():
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    out, _ = recomputed_attention(Heads(1), q, k, v, None)
    assert out.grad_fn is None and torch.equal(out, sdpa_attention_forward(Heads(1), q, k, v, None)[0])


@pytest.mark.parametrize("compression, attention", [("none", "sdpa"), ("int8", ATTENTION), ("binary", ATTENTION)])
def test_compressed_activations_pick_the_recomputed_attention(compression, attention):
    model = build_model(ModelConfig(preset="tiny", activation_compression=compression), build_char_tokenizer())
    assert model.config._attn_implementation == attention
    batch = build_char_tokenizer()(["1+1=2", "12+30=42"], padding=True, return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.model.layers[0].self_attn.parameters())


def test_a_model_built_from_another_s_config_picks_its_own_attention():
    tokenizer = build_char_tokenizer()
    compressed = build_model(ModelConfig(preset="tiny", activation_compression="int8"), tokenizer)
    reference = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer, hf_config=compressed.config)
    assert (compressed.config._attn_implementation, reference.config._attn_implementation) == (ATTENTION, "sdpa")
