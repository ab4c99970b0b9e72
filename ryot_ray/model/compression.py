"""The BitLinear training step as one autograd function, and what training keeps for backward.

Forward: the SubLN, the int8 rounding of the activations and the product with the
ternary weight codes, summed exactly in int32 (`torch._int_mm`) and scaled once; the
same values as the fake-quantized reference (`plain_autograd`, float products of
rounded values), up to float rounding. Backward: the straight-through estimator, its two
products in bf16 where the CPU multiplies bf16 natively (AMX, AVX512_BF16) and in fp32
elsewhere (`BACKWARD_DTYPE`); `bench compression` reports the gradient error of each
mode against `plain_autograd`.

The elementwise work around the products (RMSNorm, rounding, scaling, the SubLN's
backward) is most of a small model's step: `steps.Steps` does it, natively where it can.

What the function keeps of the activations is the `activation_compression` knob, a
`Saver` picked when the layer is built:
- `none`: the normalized input in fp32; the backward is the reference's.
- `int8`: the activation codes, a quarter of the bits. The weight gradient multiplies the
  very activations the forward used; the SubLN's backward rebuilds its normalized input
  from them (activations / norm weight), off by the int8 rounding.
- `binary`: sign bits and one scale per token (the mean magnitude), 1/32 of the bits;
  lossy everywhere the activations are used.
Each saver also says how the FFN's act(gate) · up (`matryoshka.GateMul`) keeps its two
inputs (its `ffn_keeper`): in fp32 for `none` (autograd would keep three tensors), as
int8 codes for `int8` and `binary`, rounded as the activations are; and how the decoder's
RMSNorms keep theirs (`norm_keeper`, `norm.RMSNormFunction`): fp32 for `none`, bf16 for
the others (attention keeps bf16 inputs there too: `attention.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ryot_ray.model.quantize import int8_activations, straight_through
from ryot_ray.model.steps import Steps

SIGN_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
NORM_WEIGHT_FLOOR = 1e-6  # below it a normalized input cannot be rebuilt: taken as 0
# bf16 GEMMs run several times faster than fp32 where the CPU has bf16 units (oneDNN's check)
BACKWARD_DTYPE = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


class Fp32Keeper:
    """An input kept as it is."""

    def keep(self, x: torch.Tensor, steps: Steps) -> tuple[torch.Tensor, ...]:
        return (x,)

    def restore(self, saved: tuple[torch.Tensor, ...], steps: Steps) -> torch.Tensor:
        return saved[0]


class Bf16Keeper:
    """An input kept rounded to bf16: half the bytes, 8 bits of mantissa."""

    def keep(self, x: torch.Tensor, steps: Steps) -> tuple[torch.Tensor, ...]:
        return (x.to(torch.bfloat16),)

    def restore(self, saved: tuple[torch.Tensor, ...], steps: Steps) -> torch.Tensor:
        return saved[0].float()


class Int8Keeper:
    """An FFN gate input kept as int8 codes and a scale per token."""

    def keep(self, x: torch.Tensor, steps: Steps) -> tuple[torch.Tensor, ...]:
        return steps.quantize(x)

    def restore(self, saved: tuple[torch.Tensor, ...], steps: Steps) -> torch.Tensor:
        return steps.dequantize(*saved, torch.float32)


class Fp32Saver:
    """What autograd would keep: the normalized input in fp32."""

    name = "none"
    keeps_normed = True  # pack needs the normalized input
    ffn_keeper = Fp32Keeper()  # how the FFN's silu(gate) · up keeps its inputs
    norm_keeper = Fp32Keeper()  # how the decoder's RMSNorms keep theirs

    def pack(self, normed: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (normed,)

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int, steps: Steps,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the rounded activations the forward used, in `dtype`; the normalized input)."""
        return steps.requantize(saved[0], dtype), saved[0]


class Int8Saver:
    name = "int8"
    keeps_normed = False
    ffn_keeper = Int8Keeper()
    norm_keeper = Bf16Keeper()  # the residual stream: int8 would lose its small values

    def pack(self, normed: torch.Tensor | None, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return codes, scale

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int, steps: Steps,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        normalized = steps.dequantize(*saved, torch.float32)
        return normalized if dtype == torch.float32 else steps.dequantize(*saved, dtype), normalized


class BinarySaver:
    name = "binary"
    keeps_normed = False
    ffn_keeper = Int8Keeper()  # the gate's sign alone would lose the SiLU's slope
    norm_keeper = Bf16Keeper()

    def pack(self, normed: torch.Tensor | None, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        signs = F.pad(codes >= 0, (0, -codes.shape[-1] % 8)).unflatten(-1, (-1, 8))
        bits = (signs.to(torch.uint8) * SIGN_BITS).sum(-1, dtype=torch.uint8)
        return bits, codes.abs().mean(-1, keepdim=True, dtype=torch.float32) / scale

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int, steps: Steps,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        bits, magnitude = saved
        signs = (bits.unsqueeze(-1) & SIGN_BITS).ne(0).flatten(-2)[..., :width]
        activations = torch.where(signs, magnitude, -magnitude)
        return activations.to(dtype), activations


SAVERS = {saver.name: saver for saver in (Fp32Saver(), Int8Saver(), BinarySaver())}


def stored_bits(saved: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() * 8 for t in saved)


def plain_autograd(x, norm_weight, eps, weight, weight_codes, weight_scale, bias, saver, backward_dtype, steps):
    """The reference BitLinear computation (fake quantization in fp32); autograd keeps
    what it keeps. `saver`, `backward_dtype` and `steps` are the fused layer's, unused here."""
    x = F.rms_norm(x, (x.shape[-1],), norm_weight, eps)
    codes, scale = int8_activations(x.detach())
    x = straight_through(x, codes / scale)
    return F.linear(x, straight_through(weight, weight_codes.float() * weight_scale), bias)


def integer_linear(codes: torch.Tensor, scale: torch.Tensor, weight_codes: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None, steps: Steps) -> torch.Tensor:
    """int8 activation codes (one scale per token) times int8 ternary weight codes, summed
    exactly in int32, then scaled: x ≈ codes / scale, W ≈ weight_codes · weight_scale. The
    sums are written into the output's memory and scaled in their place (no second tensor
    of the output's size)."""
    out = torch.empty(*codes.shape[:-1], weight_codes.shape[0])
    sums = out.view(torch.int32)
    torch._int_mm(codes.reshape(-1, codes.shape[-1]), weight_codes.t(), out=sums.view(-1, sums.shape[-1]))
    return steps.scale_sums(sums, scale, weight_scale, bias, out)


def _keep(ctx, saved: tuple[torch.Tensor, ...], saver, bias, backward_dtype, steps, *tensors: torch.Tensor) -> None:
    """What a fused layer's backward needs: the saver's tensors (`saved`), then `tensors`."""
    ctx.saver, ctx.count, ctx.has_bias = saver, len(saved), bias is not None
    ctx.dtype, ctx.steps = backward_dtype, steps
    ctx.save_for_backward(*saved, *tensors)


def _product_backward(ctx, grad: torch.Tensor, width: int):
    """The backward of the integer product, straight through the weight's rounding to the
    latent weight: (the output gradient in the backward dtype, the weight's and the bias's
    gradients, the normalized input the saver rebuilds)."""
    activations, normalized = ctx.saver.unpack(tuple(ctx.saved_tensors[: ctx.count]), width, ctx.steps, ctx.dtype)
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    grad = grad.to(ctx.dtype)
    grad_weight = (grad.reshape(-1, grad.shape[-1]).t() @ activations.reshape(-1, width)).float()
    return grad, grad_weight, grad_bias, normalized


class FusedBitLinear(torch.autograd.Function):
    """SubLN, int8 rounding and the integer product forward; the straight-through backward.
    Written for few passes over the activations: the elementwise work, not the products,
    is most of a small model's step."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, norm_weight, eps, weight, weight_codes, weight_scale, bias, saver, backward_dtype, steps):
        training = any(ctx.needs_input_grad)  # nothing is kept under no_grad (evaluation)
        normed, codes, scale, rstd = steps.norm_quantize(x, norm_weight, eps, training and saver.keeps_normed)
        if training:
            _keep(ctx, saver.pack(normed, codes, scale), saver, bias, backward_dtype, steps,
                  rstd, norm_weight, weight_codes, weight_scale)
        return integer_linear(codes, scale, weight_codes, weight_scale, bias, steps)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        rstd, norm_weight, weight_codes, weight_scale = ctx.saved_tensors[ctx.count:]
        grad, grad_weight, grad_bias, normalized = _product_backward(ctx, grad, norm_weight.shape[0])
        # straight through the rounding of the activations: grad_normed = codes_grad · weight_scale
        codes_grad = grad @ weight_codes.to(ctx.dtype)
        usable = norm_weight.abs() > NORM_WEIGHT_FLOOR
        inverse = torch.where(usable, 1.0 / torch.where(usable, norm_weight, 1.0), 0.0)
        grad_x, sums = ctx.steps.subln_backward(codes_grad, normalized, rstd, inverse, norm_weight * weight_scale)
        return grad_x, sums.mul_(weight_scale), None, grad_weight, None, None, grad_bias, None, None, None


class FusedQuantizedLinear(torch.autograd.Function):
    """FusedBitLinear without the SubLN, for a block that norms a linear's input in a layer
    of its own (the BitNet b1.58 2B4T block): int8 rounding and the integer product
    forward; backward straight through both roundings."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, weight_codes, weight_scale, bias, saver, backward_dtype, steps):
        codes, scale = steps.quantize(x)
        if any(ctx.needs_input_grad):  # nothing is kept under no_grad (evaluation)
            _keep(ctx, saver.pack(x, codes, scale), saver, bias, backward_dtype, steps, weight_codes, weight_scale)
        return integer_linear(codes, scale, weight_codes, weight_scale, bias, steps)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        weight_codes, weight_scale = ctx.saved_tensors[ctx.count:]
        grad, grad_weight, grad_bias, _ = _product_backward(ctx, grad, weight_codes.shape[1])
        grad_x = (grad @ weight_codes.to(ctx.dtype)).float().mul_(weight_scale)
        return grad_x, grad_weight, None, None, grad_bias, None, None, None


def plain_quantized_autograd(x, weight, weight_codes, weight_scale, bias, saver, backward_dtype, steps):
    """The reference of `FusedQuantizedLinear` (fake quantization in fp32, autograd)."""
    codes, scale = int8_activations(x.detach())
    x = straight_through(x, codes / scale)
    return F.linear(x, straight_through(weight, weight_codes.float() * weight_scale), bias)
