"""The decoder's RMSNorms in a BitNet model, as one fused step each.

Same parameter (`weight`) and epsilon as the Llama norm they replace, so checkpoints and
freezing see no difference; the step runs in the native library where it was built and
keeps the input and one rstd per token for backward (`compression.RMSNormFunction`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ryot_ray.model.compression import DEFAULT_STEPS, RMSNormFunction, Steps


class FusedRMSNorm(nn.Module):
    def __init__(self, norm: LlamaRMSNorm, steps: Steps = DEFAULT_STEPS):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RMSNormFunction.apply(x, self.weight, self.variance_epsilon, self.steps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, {self.steps.name} steps"


def fuse_norms(model: nn.Module) -> nn.Module:
    """Swap every Llama RMSNorm of the model for a FusedRMSNorm with the same weight."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is LlamaRMSNorm:
                setattr(module, name, FusedRMSNorm(child))
    return model
