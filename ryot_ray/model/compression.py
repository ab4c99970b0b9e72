"""What a BitLinear keeps of its activations for the backward pass.

Plain autograd (`none`) keeps fp32 copies: the SubLN's input, the normalized and the
rounded activations. The compressed modes run the SubLN, the int8 rounding and the
matmul as one autograd function that keeps a `Saver`'s form of the rounded
activations, one scale per token, and the int8 ternary weight codes:
- `int8`: the activation codes themselves, a quarter of the bits. The weight gradient is
  exact (it multiplies the very activations the forward pass used); the SubLN's
  backward rebuilds its normalized input from them (activations / norm weight), which
  is off by the int8 rounding.
- `binary`: sign bits and one scale per token (the mean magnitude), 1/32 of the bits;
  lossy everywhere the activations are used. `ryot-ray bench compression` measures the
  gradient error of both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ryot_ray.model.quantize import int8_activations, straight_through

SIGN_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
NORM_WEIGHT_FLOOR = 1e-6  # below it a normalized input cannot be rebuilt: taken as 0


class Fp32Saver:
    """What autograd would keep: the rounded activations as fp32."""

    name = "none"

    def pack(self, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (codes / scale,)

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int) -> torch.Tensor:
        return saved[0]


class Int8Saver:
    name = "int8"

    def pack(self, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return codes.to(torch.int8), scale

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int) -> torch.Tensor:
        codes, scale = saved
        return codes.float() / scale


class BinarySaver:
    name = "binary"

    def pack(self, codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        signs = F.pad(codes >= 0, (0, -codes.shape[-1] % 8)).unflatten(-1, (-1, 8))
        bits = (signs.to(torch.uint8) * SIGN_BITS).sum(-1, dtype=torch.uint8)
        return bits, codes.abs().mean(-1, keepdim=True) / scale

    def unpack(self, saved: tuple[torch.Tensor, ...], width: int) -> torch.Tensor:
        bits, magnitude = saved
        signs = (bits.unsqueeze(-1) & SIGN_BITS).ne(0).flatten(-2)[..., :width]
        return torch.where(signs, magnitude, -magnitude)


SAVERS = {saver.name: saver for saver in (Fp32Saver(), Int8Saver(), BinarySaver())}


def stored_bits(saved: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() * 8 for t in saved)


def plain_autograd(x, norm_weight, eps, weight, weight_codes, weight_scale, bias, saver):
    """The reference BitLinear computation; autograd keeps what it keeps."""
    x = F.rms_norm(x, (x.shape[-1],), norm_weight, eps)
    codes, scale = int8_activations(x.detach())
    x = straight_through(x, codes / scale)
    return F.linear(x, straight_through(weight, weight_codes * weight_scale), bias)


class CompressedBitLinear(torch.autograd.Function):
    """SubLN, int8 rounding and ternary matmul; the same forward as `plain_autograd`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, norm_weight, eps, weight, weight_codes, weight_scale, bias, saver):
        normed = F.rms_norm(x, (x.shape[-1],), norm_weight, eps)
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        codes, scale = int8_activations(normed)
        saved = saver.pack(codes, scale)
        ctx.saver, ctx.count, ctx.has_bias = saver, len(saved), bias is not None
        ctx.save_for_backward(*saved, rstd, norm_weight, weight_codes.to(torch.int8), weight_scale)
        return F.linear(codes / scale, weight_codes * weight_scale, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        *saved, rstd, norm_weight, weight_codes, weight_scale = ctx.saved_tensors
        width = norm_weight.shape[0]
        activations = ctx.saver.unpack(tuple(saved[: ctx.count]), width)
        rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = rows.t() @ activations.reshape(-1, width)  # straight through to the latent weight
        grad_bias = rows.sum(0) if ctx.has_bias else None
        grad_normed = grad @ (weight_codes.float() * weight_scale)  # straight through the rounding
        usable = norm_weight.abs() > NORM_WEIGHT_FLOOR
        unit = torch.where(usable, activations / torch.where(usable, norm_weight, 1.0), 0.0)
        grad_norm_weight = (grad_normed * unit).reshape(-1, width).sum(0)
        grad_unit = grad_normed * norm_weight
        grad_x = rstd * (grad_unit - unit * (grad_unit * unit).mean(-1, keepdim=True))
        return grad_x, grad_norm_weight, None, grad_weight, None, None, grad_bias, None


QUANTIZED_LINEARS = {
    "none": plain_autograd,
    "int8": CompressedBitLinear.apply,
    "binary": CompressedBitLinear.apply,
}
