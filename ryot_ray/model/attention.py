"""Attention that keeps its inputs in bf16 for backward and recomputes the product there.

torch's scaled-dot-product attention keeps q, k, v and its output in fp32 for backward: in
a BitNet model whose linears keep int8 activations, the largest tensors training holds.
`RecomputedAttention` runs the same forward (transformers' `sdpa` path, mask and all),
keeps only q, k and v rounded to bf16, and in backward runs that forward again from them
under autograd: half of q, k, v's bytes and none of the output's, for one more attention
forward per layer. The gradients are those of the bf16-rounded inputs (`bench
compression` reports the error against plain autograd).

It is the attention of a model whose `activation_compression` is not `none`, picked when
the model is built (`pick_attention`), under the name `ATTENTION` in transformers'
attention registry; evaluation and generation (no gradient) run `sdpa`.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "ryot_bf16_saved_sdpa"
SAVED_DTYPE = torch.bfloat16


class RecomputedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, module, mask, options):
        with torch.no_grad():
            out, _ = sdpa_attention_forward(module, query, key, value, mask, **options)
        ctx.module, ctx.mask, ctx.options = module, mask, options
        ctx.save_for_backward(*(t.to(SAVED_DTYPE) for t in (query, key, value)))
        return out

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.float().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            out, _ = sdpa_attention_forward(ctx.module, *inputs, ctx.mask, **ctx.options)
        grads = torch.autograd.grad(out, inputs, grad)
        return *grads, None, None, None


def recomputed_attention(module, query, key, value, attention_mask, **options):
    """transformers' attention interface: (output, no attention weights)."""
    if not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **options)
    return RecomputedAttention.apply(query, key, value, module, attention_mask, options), None


AttentionInterface.register(ATTENTION, recomputed_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as `sdpa`


def pick_attention(model: PreTrainedModel, activation_compression: str) -> PreTrainedModel:
    model.set_attn_implementation("sdpa" if activation_compression == "none" else ATTENTION)
    return model
