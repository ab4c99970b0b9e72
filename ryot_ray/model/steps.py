"""The elementwise steps of training around the products: a BitLinear's RMSNorm and int8
rounding, scaling its integer sums, rebuilding its activations, the SubLN's backward; the
decoder's RMSNorms; the FFN's SiLU gate.

They are most of a small model's step. `NATIVE_STEPS` runs each as one pass over rows
that stay in cache (`kernels/training.py`), where the native library was built with its
vector path for this CPU; `TORCH_STEPS` runs them as torch operations, the reference the
native ones are tested against and the path everywhere else (`DEFAULT_STEPS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ryot_ray.kernels import training as native
from ryot_ray.model.quantize import int8_activations


def _quantize(x):
    codes, scale = int8_activations(x)
    return codes.to(torch.int8), scale


def _rms_norm(x, weight, eps):
    rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * rstd * weight, rstd  # F.rms_norm, with the rstd the backward needs


def _norm_quantize(x, norm_weight, eps, keep_normed):
    normed, rstd = _rms_norm(x, norm_weight, eps)
    return normed if keep_normed else None, *_quantize(normed), rstd


def _scale_sums(sums, scale, weight_scale, bias, out):
    torch.mul(sums, weight_scale / scale, out=out)
    return out if bias is None else out.add_(bias)


def _requantize(normed, dtype):
    codes, scale = int8_activations(normed)
    return (codes / scale).to(dtype)


def _dequantize(codes, scale, dtype):
    return (codes.float() / scale).to(dtype)


def _silu_mul(gate, up):
    return F.silu(gate) * up


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


TORCH_STEPS = Steps("torch", _rms_norm, _norm_quantize, _scale_sums, _requantize, _quantize, _dequantize,
                    _subln_backward, _silu_mul, _silu_mul_backward)
NATIVE_STEPS = Steps("native", native.rms_norm, native.norm_quantize, native.scale_sums, native.requantize,
                     native.quantize, native.dequantize, native.subln_backward, native.silu_mul,
                     native.silu_mul_backward)
DEFAULT_STEPS = NATIVE_STEPS if native.vectorized() else TORCH_STEPS
