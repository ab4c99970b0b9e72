"""Ternary matmul paths: the native library (C, ISA-dispatched) and a pure-torch fallback.

The native library is built from `ternary.c` when the package is installed. If it is
missing or cannot load, every call takes the torch path (`torch._int_mm` on int8 codes,
4x the memory of 2-bit) and `kernel_path()` says so, and why.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from dataclasses import dataclass

import torch

from ryot_ray.kernels.pack import PackedTernary
from ryot_ray.machine import cpu_flags

ISAS = ("scalar", "avx2", "avx_vnni", "avx512_vnni")  # index = the library's ISA number
LIBRARY_MODULE = "ryot_ray.kernels._ternary"
MAX_ROWS_PER_TILE = 8
MAX_TOKENS_PER_TILE = 8
EPS = 1e-5


@dataclass(frozen=True)
class KernelPath:
    name: str  # "native" or "torch-int8"
    isa: str  # best ISA the native path uses; "" for torch
    reason: str


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    spec = importlib.util.find_spec(LIBRARY_MODULE)
    if spec is None or spec.origin is None:
        return None, "the native library was not built at install time (no C compiler?)"
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError as error:
        return None, f"the native library {spec.origin} cannot be loaded ({error})"
    c = ctypes
    library.ryot_best_isa.restype = c.c_int
    library.ryot_isa_supported.restype = c.c_int
    library.ryot_isa_supported.argtypes = [c.c_int]
    library.ryot_ternary_linear.restype = c.c_int
    library.ryot_ternary_linear.argtypes = [
        c.c_void_p, c.c_int64, c.c_int64, c.c_void_p, c.c_int64, c.c_int64, c.c_int64,
        c.c_float, c.c_int, c.c_int, c.c_void_p, c.c_void_p, c.c_float,
    ]
    library.ryot_ternary_accumulate.restype = c.c_int
    library.ryot_ternary_accumulate.argtypes = [
        c.c_void_p, c.c_int64, c.c_int64, c.c_void_p, c.c_int64, c.c_int64, c.c_int64,
        c.c_int, c.c_int, c.c_void_p,
    ]
    library.ryot_read_bytes.restype = c.c_uint64
    library.ryot_read_bytes.argtypes = [c.c_void_p, c.c_int64, c.c_int]
    return library, spec.origin


def read_bytes(data: torch.Tensor, threads: int | None = None) -> int:
    """Read every byte of `data` once (the read roofline); returns a checksum."""
    library, detail = _library()
    if library is None:
        raise RuntimeError(detail)
    usable = data.numel() * data.element_size() // 256 * 256
    return library.ryot_read_bytes(data.data_ptr(), usable, threads or torch.get_num_threads())


def native_isas() -> list[str]:
    """The ISA paths the native library can run on this CPU, best last."""
    library, _ = _library()
    return [isa for number, isa in enumerate(ISAS) if library and library.ryot_isa_supported(number)]


def kernel_path() -> KernelPath:
    library, detail = _library()
    if library is None:
        return KernelPath("torch-int8", "", detail)
    isa = ISAS[library.ryot_best_isa()]
    flags = ", ".join(sorted(f for f in cpu_flags() if "vnni" in f or f in ("avx2", "avx512bw"))) or "none"
    return KernelPath("native", isa, f"{detail}; best ISA on this CPU: {isa} (flags: {flags})")


@functools.cache
def _best_isa_number() -> int:
    return _library()[0].ryot_best_isa()


def _isa_number(isa: str | None) -> int:
    if isa is None:
        return _best_isa_number()
    if isa not in native_isas():
        raise ValueError(f"ISA path {isa} is not available on this CPU (available: {', '.join(native_isas())})")
    return ISAS.index(isa)


def _check_tile(packed: PackedTernary, tokens_per_tile: int) -> None:
    if not 1 <= packed.rows_per_tile <= MAX_ROWS_PER_TILE:
        raise ValueError(f"rows_per_tile must be 1..{MAX_ROWS_PER_TILE}, got {packed.rows_per_tile}")
    if not 1 <= tokens_per_tile <= MAX_TOKENS_PER_TILE:
        raise ValueError(f"tokens_per_tile must be 1..{MAX_TOKENS_PER_TILE}, got {tokens_per_tile}")


def native_linear(
    x: torch.Tensor, packed: PackedTernary, tokens_per_tile: int = 1,
    isa: str | None = None, threads: int | None = None, norm: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """y = x W^T for 2-D fp32 `x` [M, K]; activations quantized to int8 inside the call.

    With `norm` = (weight, eps) from `fused_norm`, the RMSNorm runs inside the call too:
    one call instead of a chain of small torch ops that cost more than the matmul itself
    at decode sizes.
    """
    library, detail = _library()
    if library is None:
        raise RuntimeError(detail)
    _check_tile(packed, tokens_per_tile)
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.contiguous().float()
    m, k = x.shape
    if k != packed.in_features:
        raise ValueError(f"input has {k} features, the weight expects {packed.in_features}")
    y = torch.empty((m, packed.out_features), dtype=torch.float32)
    status = library.ryot_ternary_linear(
        x.data_ptr(), m, k, packed.data.data_ptr(), packed.out_features, packed.rows_per_tile,
        tokens_per_tile, packed.scale, _isa_number(isa), threads or torch.get_num_threads(), y.data_ptr(),
        None if norm is None else norm[0].data_ptr(), 0.0 if norm is None else norm[1],
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
    isa: str | None = None, threads: int = 1,
) -> torch.Tensor:
    """The exact integer core: sum_k (w + 1) * x_q for int8 `x_codes` [M, K]."""
    library, detail = _library()
    if library is None:
        raise RuntimeError(detail)
    _check_tile(packed, tokens_per_tile)
    m = x_codes.shape[0]
    padded = torch.zeros((m, packed.padded_in), dtype=torch.int8)
    padded[:, : packed.in_features] = x_codes
    acc = torch.empty((m, packed.padded_out), dtype=torch.int32)
    status = library.ryot_ternary_accumulate(
        padded.data_ptr(), m, packed.padded_in, packed.data.data_ptr(), packed.padded_out,
        packed.rows_per_tile, tokens_per_tile, _isa_number(isa), threads, acc.data_ptr(),
    )
    if status != 0:
        raise RuntimeError(f"ternary kernel failed with status {status}")
    return acc[:, : packed.out_features]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes and scales, as BitLinear computes them."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round().clamp(-128, 127).to(torch.int8), scale


def torch_int8_linear(x: torch.Tensor, codes: torch.Tensor, scale: float) -> torch.Tensor:
    """The fallback: int8 x int8 -> int32 with `torch._int_mm`; `codes` is [N, K] int8,
    passed as its transposed view (for one token 2-2.6x faster than a [K, N] copy)."""
    x_codes, x_scale = quantize_int8(x.float())
    return torch._int_mm(x_codes, codes.t()).float() * (scale / x_scale)
