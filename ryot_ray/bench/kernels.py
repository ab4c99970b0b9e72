"""Linear-layer kernels side by side: fp32, bf16, torch int8 and the ternary kernel.

For each (K, N) shape and token count M, every path computes the same y = x W^T and is
timed in interleaved rounds (the path order shuffled each round). Each path cycles
through enough copies of its weight to exceed `cycle_bytes`, so weights come from DRAM
as they do when a whole model is decoded, not from the cache. Beside them: the read
roofline, the time to read the 2-bit weights once with the same threads.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ryot_ray.progress_bar import progress
from ryot_ray.stats import spread
from ryot_ray.kernels.autotune import copies_to_fill, time_interleaved
from ryot_ray.kernels.pack import pack_ternary
from ryot_ray.kernels.ternary import kernel_path, native_isas, native_linear, read_bytes, torch_int8_linear
from ryot_ray.machine import machine_facts

SHAPES = ((2048, 2048), (2048, 5632), (5632, 2048), (4096, 11008))  # (K, N)
TOKENS = (1, 16, 64, 256)
CYCLE_BYTES = 256 * 2**20


def _paths(k: int, n: int, rows_per_tile: int, tokens_per_tile: int, threads: int,
           cycle_bytes: int) -> dict[str, tuple[list, Callable]]:
    """name -> (weight copies, call(x, weight)); every path sees the same ternary weight."""
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    scale = 0.02
    dense = codes.float() * scale
    paths: dict[str, tuple[list, Callable]] = {
        "fp32": ([dense.clone() for _ in range(copies_to_fill(dense.nbytes, cycle_bytes))], F.linear),
        "bf16": ([dense.bfloat16() for _ in range(copies_to_fill(dense.nbytes // 2, cycle_bytes))],
                 lambda x, w: F.linear(x.bfloat16(), w)),
        "torch_int8": ([codes.clone() for _ in range(copies_to_fill(codes.nbytes, cycle_bytes))],
                       lambda x, w: torch_int8_linear(x, w, scale)),
    }
    if native_isas():
        packed = pack_ternary(codes, scale, rows_per_tile)
        copies = [pack_ternary(codes, scale, rows_per_tile)
                  for _ in range(copies_to_fill(packed.data.nbytes, cycle_bytes))]
        paths["ternary"] = (copies, lambda x, w: native_linear(x, w, tokens_per_tile, threads=threads))
        # its own copies: reading what the kernel just read would time the cache
        paths["read_roofline"] = ([pack_ternary(codes, scale, rows_per_tile) for _ in copies],
                                  lambda x, w: read_bytes(w.data, threads))
    return paths


def bench_kernels(
    shapes=SHAPES, tokens=TOKENS, rounds: int = 5, calls: int = 5, rows_per_tile: int = 2,
    tokens_per_tile: int = 8, threads: int | None = None, cycle_bytes: int = CYCLE_BYTES, seed: int = 0,
) -> dict:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    order = random.Random(seed)
    rows = []
    for k, n in progress(shapes, "kernel shapes"):
        for m in tokens:
            per_token_tile = 1 if m == 1 else tokens_per_tile
            paths = _paths(k, n, rows_per_tile, per_token_tile, threads, cycle_bytes)
            x = torch.randn(m, k)
            for name, (weights, call) in paths.items():
                call(x, weights[0])  # warm-up
            seconds = time_interleaved(paths, x, rounds, calls, order)
            row = {"k": k, "n": n, "m": m, "microseconds": {}, "speedup_vs_fp32": {}}
            for name, values in seconds.items():
                row["microseconds"][name] = spread([v * 1e6 for v in values])
                if name not in ("fp32", "read_roofline"):
                    row["speedup_vs_fp32"][name] = spread([f / v for f, v in zip(seconds["fp32"], values)])
            if "ternary" in seconds:
                row["ternary_vs_torch_int8"] = spread(
                    [i / t for i, t in zip(seconds["torch_int8"], seconds["ternary"])])
                row["ternary_fraction_of_roofline"] = spread(
                    [r / t for r, t in zip(seconds["read_roofline"], seconds["ternary"])])
                row["ternary_vs_bf16"] = spread([b / t for b, t in zip(seconds["bf16"], seconds["ternary"])])
            rows.append(row)
            del paths
    return {
        "benchmark": "kernels",
        "threads": threads,
        "rows_per_tile": rows_per_tile,
        "tokens_per_tile": tokens_per_tile,
        "rounds": rounds,
        "calls_per_round": calls,
        "cycle_bytes": cycle_bytes,
        "kernel_path": vars(kernel_path()),
        "rows": rows,
        "machine": machine_facts(),
    }


def table(result: dict) -> str:
    names = ["fp32", "bf16", "torch_int8", "ternary", "read_roofline"]
    lines = [f"linear kernels, {result['threads']} thread(s), median µs of {result['rounds']} interleaved rounds; "
             f"ternary path: {result['kernel_path']['name']} {result['kernel_path']['isa']}",
             f"{'K x N':<12}{'M':>5}" + "".join(f"{n:>14}" for n in names)
             + f"{'vs fp32':>10}{'vs int8':>10}{'vs bf16':>10}{'roofline':>10}"]
    for row in result["rows"]:
        cells = "".join(
            f"{row['microseconds'][n]['median']:>14.1f}" if n in row["microseconds"] else f"{'-':>14}"
            for n in names)
        extra = ""
        if "ternary_vs_torch_int8" in row:
            extra = (f"{row['speedup_vs_fp32']['ternary']['median']:>9.1f}x"
                     f"{row['ternary_vs_torch_int8']['median']:>9.1f}x"
                     f"{row['ternary_vs_bf16']['median']:>9.1f}x"
                     f"{100 * row['ternary_fraction_of_roofline']['median']:>9.0f}%")
        lines.append(f"{row['k']}x{row['n']:<7}{row['m']:>5}{cells}{extra}")
    return "\n".join(lines)
