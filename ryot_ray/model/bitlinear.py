"""BitLinear: the BitNet b1.58 linear layer for quantization-aware training.

Weights are quantized per tensor to {-1, 0, +1} times their absolute mean; activations
per token to int8 by their absolute maximum, after an RMSNorm inside the layer (SubLN).
The straight-through estimator lets gradients pass the rounding unchanged, so the
latent fp32 weights keep learning. The layer runs as one autograd function
(`compression.FusedBitLinear`: integer forward, straight-through backward); what it
keeps for backward is the `activation_compression` knob, picked when the layer is built,
as are its elementwise steps (native where the library was built).

The weight's ternary codes are made once per change of the weight, not per forward: they
are cached with the weight's version counter, which every in-place update (an optimizer
step, a load) advances; micro-batches of one accumulated step share them.

A BitLinear can run on a prefix of its weight (the first `rows` outputs, and as many
inputs as `x` has): the nested widths of a Matryoshka FFN share one weight that way.

`BareBitLinear` is the same layer without its own RMSNorm, for a block that norms the
input in a layer of its own (the BitNet b1.58 2B4T block: `architecture: bitnet`); its
parameters are then exactly those of the `nn.Linear` it replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from ryot_ray.model.compression import (BACKWARD_DTYPE, SAVERS, FusedBitLinear, FusedQuantizedLinear,
                                       plain_autograd, plain_quantized_autograd)
from ryot_ray.model.quantize import ternarize
from ryot_ray.model.steps import DEFAULT_STEPS, Steps


class BitLinear(nn.Linear):
    reference = staticmethod(plain_autograd)  # the fused function's computation in plain autograd

    def __init__(self, in_features: int, out_features: int, bias: bool = False, eps: float = 1e-6,
                 activation_compression: str = "none", backward_dtype: torch.dtype = BACKWARD_DTYPE,
                 steps: Steps = DEFAULT_STEPS):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = nn.RMSNorm(in_features, eps=eps)
        self.saver = SAVERS[activation_compression]
        self.backward_dtype = backward_dtype
        self.steps = steps
        self.quantized_linear = FusedBitLinear.apply
        self._ternary: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation_compression: str = "none") -> BitLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    activation_compression=activation_compression)
        layer.weight.data.copy_(linear.weight.data)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight's int8 ternary codes and scale, made again only when the weight changed."""
        key = (self.weight._version, self.weight.data_ptr())
        if self._ternary is None or self._ternary[0] != key:
            codes, scale = ternarize(self.weight.detach())
            self._ternary = key, codes.to(torch.int8), scale
        return self._ternary[1:]

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        cols = x.shape[-1]
        codes, scale = self.ternary_weight()
        bias = None if self.bias is None else self.bias[:rows]
        return self.quantized_linear(x, self.norm.weight[:cols], self.norm.eps, self.weight[:rows, :cols],
                                     codes[:rows, :cols], scale, bias, self.saver, self.backward_dtype, self.steps)

    def rounded_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(what the layer rounds: its normalized input; the int8 codes; their scales)."""
        return self.steps.norm_quantize(x, self.norm.weight[: x.shape[-1]], self.norm.eps, True)[:3]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, saved activations: {self.saver.name}, {self.steps.name} steps"


class BareBitLinear(BitLinear):
    """A BitLinear without the SubLN: int8 rounding of the input as it comes."""

    reference = staticmethod(plain_quantized_autograd)

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 activation_compression: str = "none", backward_dtype: torch.dtype = BACKWARD_DTYPE,
                 steps: Steps = DEFAULT_STEPS):
        super().__init__(in_features, out_features, bias, activation_compression=activation_compression,
                         backward_dtype=backward_dtype, steps=steps)
        del self.norm
        self.quantized_linear = FusedQuantizedLinear.apply

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        cols = x.shape[-1]
        codes, scale = self.ternary_weight()
        bias = None if self.bias is None else self.bias[:rows]
        return self.quantized_linear(x, self.weight[:rows, :cols], codes[:rows, :cols], scale, bias, self.saver,
                                     self.backward_dtype, self.steps)

    def rounded_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x, *self.steps.quantize(x)
