"""Per-CPU, per-shape choice of the kernel tile, measured on this machine and cached.

The rows per tile fix the packed layout, so they are chosen once per weight shape, by
decode speed (one token, weights streamed from memory: what a generated token costs).
Tokens per micro-tile only matter for prefill and are chosen for that layout. Candidates
are timed in interleaved rounds (order shuffled each round); the median decides. The
result is cached in the user cache directory under the CPU signature, so a node tunes
once and a model frozen later on the same CPU uses it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from ryot_ray.kernels.native import constants
from ryot_ray.kernels.pack import pack_ternary
from ryot_ray.kernels.ternary import native_linear
from ryot_ray.machine import cpu_facts
from ryot_ray.atomic import write_json_atomic
from ryot_ray.progress_bar import progress

DEFAULT_TILE = {"rows_per_tile": 2, "tokens_per_tile": 8}
PREFILL_TOKENS = 128
MAX_COPIES = 1024


def tokens_for(rows_per_tile: int) -> list[int]:
    """Tokens-per-tile candidates (powers of two from 2) the kernel really runs with this
    many rows per tile: their accumulators fit the registers."""
    limits = constants()
    candidates = [2 ** i for i in range(1, limits.max_tokens_per_tile.bit_length())]
    return [t for t in candidates if t <= limits.max_tokens_per_tile and t * rows_per_tile <= limits.max_accumulators]


def copies_to_fill(bytes_each: int, cycle_bytes: int) -> int:
    """How many copies of a weight to cycle through so reads come from memory, not cache
    (capped: a weight that small is served from cache whatever one does)."""
    return min(MAX_COPIES, max(1, -(-cycle_bytes // bytes_each)))


def cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ryot-ray" / f"autotune-{cpu_facts()['signature']}.json"


def load_cache(path: Path | None = None) -> dict:
    path = path or cache_path()
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def tile_for(k: int, n: int, cache: dict) -> dict:
    """The tile `cache` (from `load_cache`) holds for a [N, K] weight, or the default."""
    entry = cache.get(f"{k}x{n}")
    return {key: entry[key] for key in DEFAULT_TILE} if entry else dict(DEFAULT_TILE)


def time_interleaved(candidates: dict, x: torch.Tensor, rounds: int, calls: int,
                     order: random.Random) -> dict[str, list[float]]:
    """name -> one median seconds-per-call for each round.

    `candidates` maps a name to (weight copies, call(x, weight)). Each round runs every
    candidate in a shuffled order, `calls` calls each, each call on the next copy.
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(rounds):
        names = list(candidates)
        order.shuffle(names)
        for name in names:
            copies, call = candidates[name]
            seconds = []
            for i in range(calls):
                weight = copies[(round_ * calls + i) % len(copies)]
                start = time.perf_counter()
                call(x, weight)
                seconds.append(time.perf_counter() - start)
            samples[name].append(statistics.median(seconds))
    return samples


def _fastest(candidates: dict, x: torch.Tensor, rounds: int, calls: int, seed: int) -> dict[str, float]:
    samples = time_interleaved(candidates, x, rounds, calls, random.Random(seed))
    return {name: statistics.median(values) for name, values in samples.items()}


def autotune_shape(k: int, n: int, rounds: int = 5, calls: int = 5, cycle_bytes: int = 256 * 2**20,
                   seed: int = 0) -> dict:
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(seed))
    copies = {}
    choices = constants().tile_rows
    for rows in choices:
        one = pack_ternary(codes, 0.02, rows)
        count = copies_to_fill(one.data.nbytes, cycle_bytes)
        copies[rows] = [one] + [pack_ternary(codes, 0.02, rows) for _ in range(count - 1)]
    decode = _fastest({f"rows={r}": (copies[r], lambda x, w: native_linear(x, w, 1)) for r in choices},
                      torch.randn(1, k), rounds, calls, seed)
    rows = min(choices, key=lambda r: decode[f"rows={r}"])
    prefill = _fastest({f"tokens={t}": (copies[rows][:2], lambda x, w, t=t: native_linear(x, w, t))
                        for t in tokens_for(rows)}, torch.randn(PREFILL_TOKENS, k), rounds, 1, seed)
    tokens = min(tokens_for(rows), key=lambda t: prefill[f"tokens={t}"])
    return {
        "rows_per_tile": rows,
        "tokens_per_tile": tokens,
        "decode_microseconds": {name: 1e6 * s for name, s in decode.items()},
        f"prefill_{PREFILL_TOKENS}_microseconds": {name: 1e6 * s for name, s in prefill.items()},
    }


def autotune(shapes, rounds: int = 5, calls: int = 5, path: Path | None = None, **kwargs) -> dict:
    """Tune every (K, N) shape, merge into the cache file and return this run's entries."""
    path = path or cache_path()
    entries = {f"{k}x{n}": autotune_shape(k, n, rounds, calls, **kwargs)
               for k, n in progress(shapes, "autotuning shapes")}
    write_json_atomic(path, {**load_cache(path), **entries})
    return entries


def tune_missing(shapes, **kwargs) -> None:
    """Tune, on this node, the (K, N) shapes its cache does not hold yet."""
    cached = load_cache()
    missing = sorted({(k, n) for k, n in shapes if f"{k}x{n}" not in cached})
    if missing:
        autotune(missing, **kwargs)


def table(result: dict) -> str:
    lines = [f"tiles tuned on this CPU, cached in {result['cache']}",
             f"{'K x N':<12}{'rows/tile':>10}{'tokens/tile':>12}  decode µs by rows per tile"]
    for shape, entry in result["shapes"].items():
        decode = "  ".join(f"{name.split('=')[1]}: {us:.0f}" for name, us in entry["decode_microseconds"].items())
        lines.append(f"{shape:<12}{entry['rows_per_tile']:>10}{entry['tokens_per_tile']:>12}  {decode}")
    return "\n".join(lines)
