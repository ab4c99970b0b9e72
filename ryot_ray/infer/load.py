"""Which path answers (the native step, or the model's own forward), and a native
engine over a frozen model. No torch: a deployed process loads its model with this.

Which path answers, and why, is `engine_path()`; every report carries it.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from ryot_ray.infer import native
from ryot_ray.infer.engine import Engine, TextCodec
from ryot_ray.infer.model_file import FrozenModel


@dataclass(frozen=True)
class EnginePath:
    name: str  # "native" or "torch"
    isa: str  # the native step's ISA path; "" for torch
    reason: str


def engine_path() -> EnginePath:
    library, detail = native.engine_library()
    if library is None or not native.available():
        return EnginePath("torch", "", f"the model's own forward: {detail}")
    from ryot_ray.kernels.native import ISAS, isa_number

    isa = ISAS[isa_number(None)]
    return EnginePath("native", isa, f"{detail}; whole-model step on {isa}")


def default_threads() -> int:
    """The CPUs this process may use (Ray sets OMP_NUM_THREADS to an actor's share)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    given = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(allowed, int(given))) if given.isdigit() else allowed


def fastest_team(model: native.NativeModel, candidates: list[int], steps: int = 8, rounds: int = 3) -> int:
    """The team size that decodes `model` fastest here, by the median step time of
    interleaved rounds. A small model can decode faster on one thread than on two: its
    steps are too short to pay for the barriers between ops."""
    if len(candidates) == 1:
        return candidates[0]
    prompt = 16
    teams = {count: native.NativeStep(model, 1, prompt + steps, count) for count in candidates}
    samples: dict[int, list[float]] = {count: [] for count in candidates}
    for round_ in range(rounds + 1):  # the first round warms up
        for count in candidates if round_ % 2 else candidates[::-1]:
            step = teams[count]
            step.step(list(range(3, 3 + prompt)), [0] * prompt, list(range(prompt)), [])
            for position in range(prompt, prompt + steps):
                started = time.perf_counter()
                step.step([5], [0], [position], [0])
                if round_:
                    samples[count].append(time.perf_counter() - started)
    for step in teams.values():
        step.close()
    return min(candidates, key=lambda count: statistics.median(samples[count]))


def native_engine(frozen: FrozenModel, slots: int, max_length: int, threads: int | None = None,
                  kv_cache: str = "fp32", isa: str | None = None) -> Engine:
    """An engine over a frozen model (needs no torch). Without `threads`, the team size
    that decodes this model fastest on this process's CPUs (`fastest_team`)."""
    model = native.NativeModel(frozen)
    threads = threads or fastest_team(model, list(range(1, default_threads() + 1)))
    step = native.NativeStep(model, slots, max_length, threads, kv_cache, isa)
    return Engine(step, TextCodec.from_record(frozen.tokenizer))
