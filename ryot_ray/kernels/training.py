"""The elementwise steps of training in the native library (`training.c`): those around a
BitLinear's products, the RMSNorm, and the FFN's SiLU gate.

Each is one pass over rows that stay in cache; torch takes several passes and a temporary
per operation for the same values (`model/steps.TORCH_STEPS` is that reference). Rows run
along the last dimension; inputs are made contiguous fp32 (codes int8) and checked
against each other's sizes before a pointer reaches C. The work runs on torch's thread
count.
"""

from __future__ import annotations

import torch

from ryot_ray.kernels.native import kernels, required

_BF16 = {torch.bfloat16: 1, torch.float32: 0}


def vectorized() -> bool:
    """Whether the library's training steps run in AVX-512 here (else scalar C, which
    torch's vectorized operations can outrun)."""
    library, _ = kernels()
    return library is not None and bool(library.ryot_train_vectorized())


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _rows(x: torch.Tensor) -> tuple[int, int]:
    return x.numel() // x.shape[-1], x.shape[-1]


def _per_row(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.numel() != rows:
        raise ValueError(f"{what} has {t.numel()} values for {rows} rows")
    return _f32(t)


def _per_column(t: torch.Tensor, k: int, what: str) -> torch.Tensor:
    if t.numel() != k:
        raise ValueError(f"{what} has {t.numel()} values for rows of {k}")
    return _f32(t)


def _row_values(x: torch.Tensor) -> torch.Tensor:
    """A per-row column (scale, rstd) for x's rows."""
    return torch.empty(*x.shape[:-1], 1, dtype=torch.float32)


def norm_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float, keep_normed: bool):
    """(x normalized by its RMS times `weight` or None, its int8 codes, per-row scales
    127 / absmax, per-row 1 / RMS)."""
    library = required(kernels())
    x = _f32(x)
    rows, k = _rows(x)
    weight = _per_column(weight, k, "the norm weight")
    codes, scale, rstd = torch.empty(x.shape, dtype=torch.int8), _row_values(x), _row_values(x)
    normed = torch.empty_like(x) if keep_normed else None
    library.ryot_train_norm_quantize(x.data_ptr(), rows, k, weight.data_ptr(), eps, torch.get_num_threads(),
                                     codes.data_ptr(), scale.data_ptr(), rstd.data_ptr(),
                                     normed.data_ptr() if keep_normed else None)
    return normed, codes, scale, rstd


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x normalized by its RMS times `weight`, per-row 1 / RMS)."""
    library = required(kernels())
    x = _f32(x)
    rows, k = _rows(x)
    weight = _per_column(weight, k, "the norm weight")
    out, rstd = torch.empty_like(x), _row_values(x)
    library.ryot_train_rms_norm(x.data_ptr(), rows, k, weight.data_ptr(), eps, torch.get_num_threads(),
                                out.data_ptr(), rstd.data_ptr())
    return out, rstd


def scale_sums(sums: torch.Tensor, scale: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               out: torch.Tensor) -> torch.Tensor:
    """int32 sums · weight_scale / scale (+ bias) into `out` (fp32, the sums' shape; it may be
    the sums' own memory)."""
    library = required(kernels())
    if sums.dtype != torch.int32 or out.dtype != torch.float32 or out.shape != sums.shape:
        raise ValueError(f"scale_sums takes int32 sums into fp32 of their shape, got {sums.dtype} "
                         f"{tuple(sums.shape)} into {out.dtype} {tuple(out.shape)}")
    if not (sums.is_contiguous() and out.is_contiguous()):
        raise ValueError("scale_sums needs contiguous sums and output")
    rows, n = _rows(sums)
    scale = _per_row(scale, rows, "the scale")
    bias = None if bias is None else _per_column(bias, n, "the bias")
    library.ryot_train_scale_sums(sums.data_ptr(), rows, n, scale.data_ptr(), float(weight_scale),
                                  None if bias is None else bias.data_ptr(), torch.get_num_threads(), out.data_ptr())
    return out


def requantize(normed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The int8-rounded values of `normed` (round(x · scale) / scale per row), in `dtype`."""
    library = required(kernels())
    normed = _f32(normed)
    rows, k = _rows(normed)
    out = torch.empty(normed.shape, dtype=dtype)
    library.ryot_train_requantize(normed.data_ptr(), rows, k, torch.get_num_threads(), _BF16[dtype], out.data_ptr())
    return out


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-row scales 127 / absmax): x ≈ codes / scale."""
    library = required(kernels())
    x = _f32(x)
    rows, k = _rows(x)
    codes, scale = torch.empty(x.shape, dtype=torch.int8), _row_values(x)
    library.ryot_train_quantize(x.data_ptr(), rows, k, torch.get_num_threads(), codes.data_ptr(), scale.data_ptr())
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes / scale per row, in `dtype`."""
    library = required(kernels())
    codes = codes.to(torch.int8).contiguous()
    rows, k = _rows(codes)
    scale = _per_row(scale, rows, "the scale")
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
    normalized = _f32(normalized)
    rows, k = _rows(normalized)
    if grad.shape != normalized.shape:
        raise ValueError(f"the gradient's shape {tuple(grad.shape)} is not the input's {tuple(normalized.shape)}")
    grad = grad.contiguous() if grad.dtype == torch.bfloat16 else _f32(grad)
    rstd, scaled = _per_row(rstd, rows, "rstd"), _per_column(scaled, k, "the scaled weight")
    inverse = None if inverse is None else _per_column(inverse, k, "the inverse weight")
    grad_x, sums = torch.empty_like(normalized), torch.empty(k, dtype=torch.float32)
    status = library.ryot_train_subln_backward(
        grad.data_ptr(), _BF16[grad.dtype], normalized.data_ptr(), rows, k, rstd.data_ptr(),
        None if inverse is None else inverse.data_ptr(), scaled.data_ptr(), torch.get_num_threads(),
        grad_x.data_ptr(), sums.data_ptr())
    if status != 0:
        raise MemoryError("ryot_train_subln_backward could not allocate its per-thread sums")
    return grad_x, sums


def _same_size(*tensors: torch.Tensor) -> None:
    if len({t.shape for t in tensors}) != 1:
        raise ValueError(f"the gate's tensors differ in shape: {[tuple(t.shape) for t in tensors]}")


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up."""
    library = required(kernels())
    _same_size(gate, up)
    gate, up = _f32(gate), _f32(up)
    out = torch.empty_like(gate)
    library.ryot_train_silu_mul(gate.data_ptr(), up.data_ptr(), gate.numel(), torch.get_num_threads(), out.data_ptr())
    return out


def silu_mul_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of silu(gate) · up with respect to gate and up."""
    library = required(kernels())
    _same_size(grad, gate, up)
    grad, gate, up = _f32(grad), _f32(gate), _f32(up)
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    library.ryot_train_silu_mul_backward(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), gate.numel(),
                                         torch.get_num_threads(), grad_gate.data_ptr(), grad_up.data_ptr())
    return grad_gate, grad_up
