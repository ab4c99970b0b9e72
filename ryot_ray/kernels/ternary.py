"""Ternary matmul paths: the native library (C, ISA-dispatched) and a pure-torch fallback.

The native library is built from `ternary.c` when the package is installed. If it is
missing or cannot load, every call takes the torch path (`torch._int_mm` on int8 codes,
4x the memory of 2-bit) and `kernel_path()` says so, and why.

Every path takes an input narrower than the weight as a Matryoshka width prefix: x with
K <= in_features uses the first K input columns. The sparse paths (Q-Sparse) keep the
`keep` largest entries of each input row by magnitude, the lower index on equal
magnitudes, and read only those columns of the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ryot_ray.kernels.native import ISAS, constants, isa_number, kernels, native_isas, required
from ryot_ray.kernels.pack import PackedColumns, PackedTernary, round_up
from ryot_ray.machine import cpu_flags
from ryot_ray.model.quantize import int8_activations

__all__ = ["ISAS", "native_isas"]


@dataclass(frozen=True)
class KernelPath:
    name: str  # "native" or "torch-int8"
    isa: str  # best ISA the native path uses; "" for torch
    reason: str


def read_bytes(data: torch.Tensor, threads: int | None = None) -> int:
    """Read every byte of `data` once (the read roofline); returns a checksum."""
    library = required(kernels())
    usable = data.numel() * data.element_size() // 256 * 256
    return library.ryot_read_bytes(data.data_ptr(), usable, threads or torch.get_num_threads())


def kernel_path() -> KernelPath:
    library, detail = kernels()
    if library is None:
        return KernelPath("torch-int8", "", detail)
    isa = ISAS[library.ryot_best_isa()]
    flags = ", ".join(sorted(f for f in cpu_flags() if "vnni" in f or f in ("avx2", "avx512bw"))) or "none"
    return KernelPath("native", isa, f"{detail}; best ISA on this CPU: {isa} (flags: {flags})")


def _check_tile(packed: PackedTernary, tokens_per_tile: int) -> None:
    limits = constants()
    if packed.rows_per_tile not in limits.tile_rows:
        raise ValueError(f"rows_per_tile must be one of {limits.tile_rows}, got {packed.rows_per_tile}")
    if not 1 <= tokens_per_tile <= limits.max_tokens_per_tile:
        raise ValueError(f"tokens_per_tile must be 1..{limits.max_tokens_per_tile}, got {tokens_per_tile}")


def _width(k: int, in_features: int) -> None:
    if not 1 <= k <= in_features:
        raise ValueError(f"input has {k} features, the weight expects 1..{in_features} (a width prefix)")


def _out_width(out_features: int | None, packed_out: int) -> int:
    if out_features is None:
        return packed_out
    if not 1 <= out_features <= packed_out:
        raise ValueError(f"out_features must be 1..{packed_out}, got {out_features}")
    return out_features


def _fp32_rows(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D input [M, K], got shape {tuple(x.shape)}")
    return x.contiguous().float()


def _norm_args(norm: tuple[torch.Tensor, float] | None, k: int) -> tuple[int | None, float]:
    """The fused RMSNorm over the first k features uses the first k entries of its weight."""
    if norm is None:
        return None, 0.0
    weight, eps = norm
    if weight.dtype != torch.float32 or not weight.is_contiguous() or weight.numel() < k:
        raise ValueError(f"the norm weight must be contiguous fp32 with at least {k} entries (see fused_norm)")
    return weight.data_ptr(), eps


def native_linear(
    x: torch.Tensor, packed: PackedTernary, tokens_per_tile: int = 1,
    isa: str | None = None, threads: int | None = None, norm: tuple[torch.Tensor, float] | None = None,
    out_features: int | None = None,
) -> torch.Tensor:
    """y = x W^T for 2-D fp32 `x` [M, K]; activations quantized to int8 inside the call.

    With `norm` = (weight, eps) from `fused_norm`, the RMSNorm runs inside the call too:
    one call instead of a chain of small torch ops that cost more than the matmul itself
    at decode sizes. Matryoshka widths: K < in_features uses the first K columns of the
    weight, `out_features` its first rows; both read only that part of the packed data.
    """
    library = required(kernels())
    _check_tile(packed, tokens_per_tile)
    x = _fp32_rows(x)
    m, k = x.shape
    _width(k, packed.in_features)
    n = _out_width(out_features, packed.out_features)
    norm_weight, eps = _norm_args(norm, k)
    y = torch.empty((m, n), dtype=torch.float32)
    status = library.ryot_ternary_linear(
        x.data_ptr(), m, k, packed.data.data_ptr(), packed.padded_in, n, packed.rows_per_tile,
        tokens_per_tile, packed.scale, isa_number(isa), threads or torch.get_num_threads(), y.data_ptr(),
        norm_weight, eps,
    )
    if status != 0:
        raise RuntimeError(f"ternary kernel failed with status {status}")
    return y


def fused_norm(norm: torch.nn.RMSNorm) -> tuple[torch.Tensor, float]:
    """(weight, eps) of an RMSNorm, checked once, for `native_linear(norm=...)`."""
    if norm.weight is None:
        raise ValueError("the fused RMSNorm needs an elementwise weight")
    eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
    return norm.weight.detach().float().contiguous(), float(eps)


def native_accumulate(
    x_codes: torch.Tensor, packed: PackedTernary, tokens_per_tile: int = 1,
    isa: str | None = None, threads: int = 1, out_features: int | None = None,
) -> torch.Tensor:
    """The exact integer core: sum_k (w + 1) * x_q for int8 `x_codes` [M, K], with the
    width prefixes of `native_linear`."""
    library = required(kernels())
    _check_tile(packed, tokens_per_tile)
    m, k = x_codes.shape
    _width(k, packed.in_features)
    n = _out_width(out_features, packed.out_features)
    k_padded, n_padded = round_up(k, constants().group), round_up(n, constants().group * packed.rows_per_tile)
    padded = torch.zeros((m, k_padded), dtype=torch.int8)
    padded[:, :k] = x_codes
    acc = torch.empty((m, n_padded), dtype=torch.int32)
    status = library.ryot_ternary_accumulate(
        padded.data_ptr(), m, k_padded, packed.data.data_ptr(), packed.padded_in, n_padded,
        packed.rows_per_tile, tokens_per_tile, isa_number(isa), threads, acc.data_ptr(),
    )
    if status != 0:
        raise RuntimeError(f"ternary kernel failed with status {status}")
    return acc[:, :n]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes and scales, as BitLinear computes them."""
    codes, scale = int8_activations(x)
    return codes.to(torch.int8), scale


def torch_int8_linear(x: torch.Tensor, codes: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """int8 x int8 -> int32 with `torch._int_mm`; `codes` is [N, K] int8, passed as its
    transposed view (for one token 2-2.6x faster than a [K, N] copy); `scale` is one
    float or one per output row. x [M, K'] with K' < K uses the first K' columns (a
    width prefix; a row prefix is `codes[:n]`)."""
    _width(x.shape[-1], codes.shape[1])
    x_codes, x_scale = quantize_int8(x.float())
    return torch._int_mm(x_codes, codes[:, : x.shape[-1]].t()).float() * (scale / x_scale)


def _check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")


def native_sparse_quantize(
    x: torch.Tensor, keep: int, norm: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse path's front half: (indices [M, keep'] int32 ascending, their int8 codes,
    per-token scales [M, 1]) for the keep' = min(keep, K) largest entries of each
    (RMS-normed) row, quantized with the whole row's absmax as the dense path does."""
    library = required(kernels())
    _check_keep(keep)
    x = _fp32_rows(x)
    m, k = x.shape
    keep = min(keep, k)
    norm_weight, eps = _norm_args(norm, k)
    index = torch.empty((m, keep), dtype=torch.int32)
    codes = torch.empty((m, keep), dtype=torch.int8)
    scale = torch.empty((m, 1), dtype=torch.float32)
    status = library.ryot_sparse_quantize(
        x.data_ptr(), m, k, keep, norm_weight, eps, index.data_ptr(), codes.data_ptr(), scale.data_ptr(),
    )
    if status != 0:
        raise RuntimeError(f"sparse quantize failed with status {status}")
    return index, codes, scale


def native_sparse_accumulate(
    x_codes: torch.Tensor, index: torch.Tensor, packed: PackedColumns, isa: str | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """The exact integer core of the sparse path: sum_i w[n, index[m, i]] * x_codes[m, i]
    for int8 `x_codes` and column indices `index`, both [M, keep]."""
    library = required(kernels())
    if x_codes.ndim != 2 or x_codes.shape != index.shape:
        raise ValueError(f"x_codes {tuple(x_codes.shape)} and index {tuple(index.shape)} must both be [M, keep]")
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < packed.in_features:
        raise ValueError(f"column indices must be in 0..{packed.in_features - 1}")
    m, keep = x_codes.shape
    x_codes = x_codes.to(torch.int8).contiguous()
    index = index.to(torch.int32).contiguous()
    acc = torch.empty((m, packed.padded_out), dtype=torch.int32)
    status = library.ryot_sparse_accumulate(
        x_codes.data_ptr(), index.data_ptr(), m, keep, packed.data.data_ptr(), packed.padded_out,
        isa_number(isa), threads, acc.data_ptr(),
    )
    if status != 0:
        raise RuntimeError(f"sparse kernel failed with status {status}")
    return acc[:, : packed.out_features]


def native_sparse_linear(
    x: torch.Tensor, packed: PackedColumns, keep: int, norm: tuple[torch.Tensor, float] | None = None,
    isa: str | None = None, threads: int | None = None,
) -> torch.Tensor:
    """y = x_s W^T where x_s keeps the `keep` largest entries of each row of fp32 `x`
    [M, K] (after the fused RMSNorm, when given) and reads only those columns of W; with
    K < in_features, the first K columns (a width prefix). The quantization is the dense
    path's, so on a row whose other entries are zero it equals `native_linear` exactly."""
    library = required(kernels())
    _check_keep(keep)
    x = _fp32_rows(x)
    m, k = x.shape
    _width(k, packed.in_features)
    norm_weight, eps = _norm_args(norm, k)
    y = torch.empty((m, packed.out_features), dtype=torch.float32)
    status = library.ryot_sparse_linear(
        x.data_ptr(), m, k, min(keep, k), packed.data.data_ptr(), packed.out_features, packed.scale,
        isa_number(isa), threads or torch.get_num_threads(), y.data_ptr(), norm_weight, eps,
    )
    if status != 0:
        raise RuntimeError(f"sparse kernel failed with status {status}")
    return y


def sparse_quantize_int8(x: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch twin of `native_sparse_quantize` (no norm): a stable sort by magnitude keeps
    the lower index on equal magnitudes, as the native selection does."""
    _check_keep(keep)
    x = x.float()
    keep = min(keep, x.shape[-1])
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[:, :keep]
    index = order.sort(dim=-1).values
    codes, scale = quantize_int8(x)
    return index.to(torch.int32), codes.gather(1, index), scale


def torch_sparse_linear(x: torch.Tensor, columns: torch.Tensor, scale: float, keep: int) -> torch.Tensor:
    """The fallback of `native_sparse_linear` (norm `x` first) on the int8 codes column by
    column, `columns` = codes.t().contiguous() [K, N]: a kept column is then one
    contiguous row to gather (gathering columns of [N, K] costs more than the dense
    matmul). Per token, an int8 matmul of its kept codes with its kept columns."""
    _width(x.shape[-1], columns.shape[0])
    index, x_codes, x_scale = sparse_quantize_int8(x, keep)
    acc = torch.cat([
        torch._int_mm(row_codes[None], columns.index_select(0, row_index))
        for row_codes, row_index in zip(x_codes, index.long())
    ])
    return acc.float() * (scale / x_scale)
