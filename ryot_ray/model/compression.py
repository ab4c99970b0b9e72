"""The BitLinear training step as one autograd function, and what it keeps for backward.

Forward: the SubLN, the int8 rounding of the activations and the product with the
ternary weight codes, summed exactly in int32 (`torch._int_mm`) and scaled once; the
same values as the fake-quantized reference (`plain_autograd`, float products of
rounded values), up to float rounding. Backward: the straight-through estimator, its two
products in bf16 where the CPU multiplies bf16 natively (AMX, AVX512_BF16) and in fp32
elsewhere (`BACKWARD_DTYPE`); `bench compression` reports the gradient error of each
mode against `plain_autograd`.

The elementwise work around the products (RMSNorm, rounding, scaling, the SubLN's
backward) is most of a small model's step; `Steps` does it, in the native library's
one-pass row kernels where it was built (`NATIVE_STEPS`) and in torch operations
otherwise (`TORCH_STEPS`, also the reference the native steps are tested against).

What the function keeps of the activations is the `activation_compression` knob, a
`Saver` picked when the layer is built:
- `none`: the normalized input in fp32; the backward is the reference's.
- `int8`: the activation codes, a quarter of the bits. The weight gradient multiplies the
  very activations the forward used; the SubLN's backward rebuilds its normalized input
  from them (activations / norm weight), off by the int8 rounding.
- `binary`: sign bits and one scale per token (the mean magnitude), 1/32 of the bits;
  lossy everywhere the activations are used.
The decoder's own RMSNorms (`RMSNormFunction`) keep their input and one rstd per token.
The FFN's silu(gate) · up (`SiluMul`) keeps its two inputs in fp32 for `none` (autograd
would keep three tensors) and as int8 codes for `int8` and `binary`, rounded as the
activations are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ryot_ray.kernels import training as native
from ryot_ray.kernels.native import kernels
from ryot_ray.model.quantize import int8_activations, straight_through

SIGN_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
NORM_WEIGHT_FLOOR = 1e-6  # below it a normalized input cannot be rebuilt: taken as 0
# bf16 GEMMs run several times faster than fp32 where the CPU has bf16 units (oneDNN's check)
BACKWARD_DTYPE = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def _quantize(x):
    codes, scale = int8_activations(x)
    return codes.to(torch.int8), scale


def _rms_norm(x, weight, eps):
    rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * rstd * weight, rstd  # F.rms_norm, with the rstd the backward needs


def _norm_quantize(x, norm_weight, eps, keep_normed):
    normed, rstd = _rms_norm(x, norm_weight, eps)
    return normed if keep_normed else None, *_quantize(normed), rstd


def _scale_sums(sums, scale, weight_scale, bias):
    out = torch.mul(sums, weight_scale / scale.reshape(-1, 1))
    return out if bias is None else out.add_(bias)


def _requantize(normed, dtype):
    codes, scale = int8_activations(normed)
    return (codes / scale).to(dtype)


def _silu_mul_backward(grad, gate, up):
    sig = torch.sigmoid(gate)
    return grad * up * (sig * (1 + gate * (1 - sig))), grad * (gate * sig)


def _subln_backward(grad, normalized, rstd, inverse, scaled):
    grad = grad.float()
    unit = normalized * (rstd if inverse is None else inverse)  # the input times rstd, rebuilt
    sums = (grad * unit).reshape(-1, unit.shape[-1]).sum(0)
    grad_unit = grad * scaled
    return grad_unit.sub_(unit * (grad_unit * unit).mean(-1, keepdim=True)).mul_(rstd), sums


@dataclass(frozen=True)
class Steps:
    """The elementwise steps around the products (see `kernels/training.py` for each one's
    contract)."""

    name: str
    rms_norm: Callable
    norm_quantize: Callable
    scale_sums: Callable
    requantize: Callable
    quantize: Callable
    dequantize: Callable
    subln_backward: Callable
    silu_mul: Callable
    silu_mul_backward: Callable


TORCH_STEPS = Steps("torch", _rms_norm, _norm_quantize, _scale_sums, _requantize, _quantize,
                    lambda codes, scale, dtype: (codes.float() / scale).to(dtype), _subln_backward,
                    lambda gate, up: F.silu(gate) * up, _silu_mul_backward)
NATIVE_STEPS = Steps("native", native.rms_norm, native.norm_quantize, native.scale_sums, native.requantize, native.quantize,
                     native.dequantize, native.subln_backward, native.silu_mul, native.silu_mul_backward)
DEFAULT_STEPS = NATIVE_STEPS if kernels()[0] is not None else TORCH_STEPS


class Fp32Keeper:
    """An FFN gate input kept as it is."""

    def keep(self, x: torch.Tensor, steps: Steps) -> tuple[torch.Tensor, ...]:
        return (x,)

    def restore(self, saved: tuple[torch.Tensor, ...], steps: Steps) -> torch.Tensor:
        return saved[0]


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
    exactly in int32, then scaled: x ≈ codes / scale, W ≈ weight_codes · weight_scale."""
    sums = torch._int_mm(codes.reshape(-1, codes.shape[-1]), weight_codes.t())
    return steps.scale_sums(sums, scale, weight_scale, bias).reshape(*codes.shape[:-1], -1)


class FusedBitLinear(torch.autograd.Function):
    """SubLN, int8 rounding and the integer product forward; the straight-through backward.
    Written for few passes over the activations: the elementwise work, not the products,
    is most of a small model's step."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, norm_weight, eps, weight, weight_codes, weight_scale, bias, saver, backward_dtype, steps):
        normed, codes, scale, rstd = steps.norm_quantize(x, norm_weight, eps, saver.keeps_normed)
        saved = saver.pack(normed, codes, scale)
        ctx.saver, ctx.count, ctx.has_bias, ctx.dtype, ctx.steps = saver, len(saved), bias is not None, backward_dtype, steps
        ctx.save_for_backward(*saved, rstd, norm_weight, weight_codes, weight_scale)
        return integer_linear(codes, scale, weight_codes, weight_scale, bias, steps)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        *saved, rstd, norm_weight, weight_codes, weight_scale = ctx.saved_tensors
        width = norm_weight.shape[0]
        activations, normalized = ctx.saver.unpack(tuple(saved[: ctx.count]), width, ctx.steps, ctx.dtype)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        grad = grad.to(ctx.dtype)
        # straight through the rounding of the weight, to the latent weight
        grad_weight = (grad.reshape(-1, grad.shape[-1]).t() @ activations.reshape(-1, width)).float()
        # straight through the rounding of the activations: grad_normed = codes_grad · weight_scale
        codes_grad = grad @ weight_codes.to(ctx.dtype)
        usable = norm_weight.abs() > NORM_WEIGHT_FLOOR
        inverse = torch.where(usable, 1.0 / torch.where(usable, norm_weight, 1.0), 0.0)
        grad_x, sums = ctx.steps.subln_backward(codes_grad, normalized, rstd, inverse, norm_weight * weight_scale)
        return grad_x, sums.mul_(weight_scale), None, grad_weight, None, None, grad_bias, None, None, None


class SiluMul(torch.autograd.Function):
    """The FFN's silu(gate) · up, keeping its two inputs (not autograd's three tensors) the
    way the saved-activation knob says: fp32 for `none`, int8 codes for `int8` and `binary`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, gate, up, keeper, steps):
        kept_gate = keeper.keep(gate, steps)
        ctx.keeper, ctx.steps, ctx.count = keeper, steps, len(kept_gate)
        ctx.save_for_backward(*kept_gate, *keeper.keep(up, steps))
        return steps.silu_mul(gate, up)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        gate = ctx.keeper.restore(saved[: ctx.count], ctx.steps)
        up = ctx.keeper.restore(saved[ctx.count:], ctx.steps)
        return *ctx.steps.silu_mul_backward(grad, gate, up), None, None


class RMSNormFunction(torch.autograd.Function):
    """x · rstd · weight keeping x and rstd for backward (autograd keeps x and x · rstd)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, eps, steps):
        out, rstd = steps.rms_norm(x, weight, eps)
        ctx.steps = steps
        ctx.save_for_backward(x, rstd, weight)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        grad_x, grad_weight = ctx.steps.subln_backward(grad, x, rstd, None, weight)
        return grad_x, grad_weight, None, None
