"""The elementwise steps of BitLinear training in the native library (`training.c`).

Each is one pass over rows that stay in cache; torch takes several passes and a temporary
per operation for the same values (`model/compression.TorchSteps` is that reference).
Tensors in are contiguous, rows along the last dimension; the work runs on torch's
thread count.
"""

from __future__ import annotations

import torch

from ryot_ray.kernels.native import kernels, required

_BF16 = {torch.bfloat16: 1, torch.float32: 0}


def _rows(x: torch.Tensor) -> tuple[int, int]:
    return x.numel() // x.shape[-1], x.shape[-1]


def norm_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float, keep_normed: bool):
    """(x normalized by its RMS times `weight` or None, its int8 codes, per-row scales
    127 / absmax, per-row 1 / RMS)."""
    library = required(kernels())
    x = x.contiguous()
    rows, k = _rows(x)
    codes = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(*x.shape[:-1], 1)
    rstd = torch.empty(*x.shape[:-1], 1)
    normed = torch.empty_like(x) if keep_normed else None
    library.ryot_train_norm_quantize(x.data_ptr(), rows, k, weight.contiguous().data_ptr(), eps,
                                     torch.get_num_threads(), codes.data_ptr(), scale.data_ptr(),
                                     rstd.data_ptr(), normed.data_ptr() if keep_normed else None)
    return normed, codes, scale, rstd


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x normalized by its RMS times `weight`, per-row 1 / RMS)."""
    library = required(kernels())
    x = x.contiguous()
    rows, k = _rows(x)
    out, rstd = torch.empty_like(x), torch.empty(*x.shape[:-1], 1)
    library.ryot_train_rms_norm(x.data_ptr(), rows, k, weight.contiguous().data_ptr(), eps, torch.get_num_threads(),
                                out.data_ptr(), rstd.data_ptr())
    return out, rstd


def scale_sums(sums: torch.Tensor, scale: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """sums · weight_scale / scale (+ bias), in fp32, written over the int32 sums."""
    library = required(kernels())
    rows, n = _rows(sums)
    out = sums.view(torch.float32)
    library.ryot_train_scale_sums(sums.data_ptr(), rows, n, scale.data_ptr(), float(weight_scale),
                                  None if bias is None else bias.contiguous().data_ptr(),
                                  torch.get_num_threads(), out.data_ptr())
    return out


def requantize(normed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The int8-rounded values of `normed` (round(x · scale) / scale per row), in `dtype`."""
    library = required(kernels())
    rows, k = _rows(normed)
    out = torch.empty(normed.shape, dtype=dtype)
    library.ryot_train_requantize(normed.data_ptr(), rows, k, torch.get_num_threads(), _BF16[dtype], out.data_ptr())
    return out


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-row scales 127 / absmax): x ≈ codes / scale."""
    library = required(kernels())
    rows, k = _rows(x)
    codes = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(*x.shape[:-1], 1)
    library.ryot_train_quantize(x.contiguous().data_ptr(), rows, k, torch.get_num_threads(), codes.data_ptr(),
                                scale.data_ptr())
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes / scale per row, in `dtype`."""
    library = required(kernels())
    rows, k = _rows(codes)
    out = torch.empty(codes.shape, dtype=dtype)
    library.ryot_train_dequantize(codes.data_ptr(), rows, k, scale.data_ptr(), torch.get_num_threads(),
                                  _BF16[dtype], out.data_ptr())
    return out


def subln_backward(grad: torch.Tensor, normalized: torch.Tensor, rstd: torch.Tensor, inverse: torch.Tensor | None,
                   scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of y = x · rstd · weight given grad_y (fp32 or bf16) and the normalized
    input: (grad_x, the sum over rows of grad_y · x · rstd). `inverse` is 1 / weight (0 where
    the weight is too small to divide by), or None where `normalized` is x itself; `scaled`
    the weight times the scale of what follows."""
    library = required(kernels())
    grad, normalized = grad.contiguous(), normalized.contiguous()
    rows, k = _rows(normalized)
    grad_x = torch.empty(normalized.shape)
    sums = torch.empty(k)
    status = library.ryot_train_subln_backward(
        grad.data_ptr(), _BF16[grad.dtype], normalized.data_ptr(), rows, k, rstd.data_ptr(),
        None if inverse is None else inverse.contiguous().data_ptr(), scaled.contiguous().data_ptr(),
        torch.get_num_threads(),
        grad_x.data_ptr(), sums.data_ptr())
    if status != 0:
        raise MemoryError("ryot_train_subln_backward could not allocate its per-thread sums")
    return grad_x, sums


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up."""
    library = required(kernels())
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    library.ryot_train_silu_mul(gate.data_ptr(), up.data_ptr(), gate.numel(), torch.get_num_threads(), out.data_ptr())
    return out


def silu_mul_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of silu(gate) · up with respect to gate and up."""
    library = required(kernels())
    grad, gate, up = grad.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    library.ryot_train_silu_mul_backward(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), gate.numel(),
                                         torch.get_num_threads(), grad_gate.data_ptr(), grad_up.data_ptr())
    return grad_gate, grad_up
