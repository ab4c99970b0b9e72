"""The decoder's RMSNorms in a BitNet model, as one fused step each.

Same parameter (`weight`) and epsilon as the Llama (or BitNet) norm they replace, so checkpoints and
freezing see no difference; the step runs in the native library where it was built and
keeps the input (as the `activation_compression` knob's `norm_keeper` says: fp32 or bf16)
and one rstd per token for backward (`RMSNormFunction`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ryot_ray.model.compression import SAVERS
from ryot_ray.model.steps import DEFAULT_STEPS, Steps


class RMSNormFunction(torch.autograd.Function):
    """x · rstd · weight keeping x (as `keeper` keeps it) and rstd for backward (autograd
    keeps x and x · rstd in fp32)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, eps, steps, keeper):
        out, rstd = steps.rms_norm(x, weight, eps)
        if any(ctx.needs_input_grad):  # nothing is kept under no_grad (evaluation)
            ctx.steps, ctx.keeper, ctx.kept = steps, keeper, len(kept := keeper.keep(x, steps))
            ctx.save_for_backward(*kept, rstd, weight)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        *kept, rstd, weight = ctx.saved_tensors
        x = ctx.keeper.restore(kept, ctx.steps)
        grad_x, grad_weight = ctx.steps.subln_backward(grad, x, rstd, None, weight)
        return grad_x, grad_weight, None, None, None


class FusedRMSNorm(nn.Module):
    def __init__(self, norm: nn.Module, activation_compression: str = "none", steps: Steps = DEFAULT_STEPS):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self.keeper, self.steps = SAVERS[activation_compression].norm_keeper, steps
        self.activation_compression = activation_compression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Over x's width: a prefix of the weight at a nested FFN width."""
        return RMSNormFunction.apply(x, self.weight[: x.shape[-1]], self.variance_epsilon, self.steps, self.keeper)

    def extra_repr(self) -> str:
        return (f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, "
                f"saved activations: {self.activation_compression}, {self.steps.name} steps")


def fuse_norms(model: nn.Module, norm: type[nn.Module] = LlamaRMSNorm, activation_compression: str = "none") -> nn.Module:
    """Swap every RMSNorm of the model (of class `norm`: the architecture's) for a
    FusedRMSNorm with the same weight."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is norm:
                setattr(module, name, FusedRMSNorm(child, activation_compression))
    return model
