"""ASHA against running every trial to `max_t` (FIFO): the same space, seeds and reference,
on the same cluster, in alternating order over the repeats (ASHA first, then FIFO first,
...), so neither always runs on a warmer machine.

The goal: ASHA reaches FIFO's best objective with at least half the total trial time.
It reaches it when its best objective is FIFO's best or above, within the noise of the
measurement: the relative spread of the speedup rounds behind either best objective (the
same configuration measured twice differs by about that much)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ryot_ray.machine import machine_facts
from ryot_ray.stats import spread
from ryot_ray.tune.space import SearchSpace
from ryot_ray.tune.summary import fallback_warning, interrupted, summarize
from ryot_ray.tune.tuner import Measurement, run_search, train_reference

SCHEDULERS = ("asha", "fifo")
GOAL_TRIAL_TIME_SAVED = 2.0


def _search(space: SearchSpace, name: str, directory: Path, reference, measurement: Measurement) -> dict:
    scheduled = dataclasses.replace(space, scheduler=dataclasses.replace(space.scheduler, name=name))
    start = time.perf_counter()
    results = run_search(scheduled, directory, reference, measurement)
    if interrupted(results, space.scheduler.max_t):
        raise KeyboardInterrupt
    summary = summarize(results, scheduled, reference, time.perf_counter() - start)
    return {
        "wall_time_s": summary["wall_time_s"],
        "trial_time_s": summary["overhead"]["trial_time_s"],
        "epochs": sum(t["epochs"] for t in summary["trials"]),
        "stopped_early": summary["stopped_early"],
        "best_objective": summary["best"]["objective"],
        "best_params": summary["best"]["params"],
        "best_spread": summary["best"]["speedup_spread"],
        "trials": [{key: t.get(key) for key in ("params", "status", "epochs", "objective", "speedup",
                                                "accuracy_retention")} for t in summary["trials"]],
        "kernel_paths": summary["kernel_paths"],
    }


def bench_tune(space: SearchSpace, directory: Path, references: Path, measurement: Measurement,
               repeats: int = 1) -> dict:
    reference = train_reference(space, references, measurement)
    runs: dict[str, list[dict]] = {name: [] for name in SCHEDULERS}
    for repeat in range(repeats):
        for name in SCHEDULERS if repeat % 2 == 0 else SCHEDULERS[::-1]:
            runs[name].append(_search(space, name, directory / f"{name}-{repeat + 1}", reference, measurement))
    pairs = list(zip(runs["asha"], runs["fifo"]))
    saved = spread([fifo["trial_time_s"] / asha["trial_time_s"] for asha, fifo in pairs])
    reached = all(reached_fifo_best(asha, fifo) for asha, fifo in pairs)
    return {
        "benchmark": "tune",
        "space": space.source,
        "samples": space.samples,
        "repeats": repeats,
        "reference_accuracy": reference.accuracy,
        "runs": runs,
        "trial_time_saved": saved,
        "wall_time_saved": spread([fifo["wall_time_s"] / asha["wall_time_s"] for asha, fifo in pairs]),
        "same_best_config": all(asha["best_params"] == fifo["best_params"] for asha, fifo in pairs),
        "reached_fifo_best": reached,
        "noise": [noise(asha, fifo) for asha, fifo in pairs],
        "goal": {"trial_time_saved_at_least": GOAL_TRIAL_TIME_SAVED, "reached_fifo_best": True,
                 "met": reached and saved["min"] >= GOAL_TRIAL_TIME_SAVED},
        "machine": machine_facts(),
    }


def noise(asha: dict, fifo: dict) -> float:
    """The objective's relative noise: the larger speedup spread of the two best trials."""
    return max(asha["best_spread"], fifo["best_spread"])


def reached_fifo_best(asha: dict, fifo: dict) -> bool:
    """Whether ASHA's best objective is at least FIFO's, less the measurement's noise."""
    return asha["best_objective"] >= fifo["best_objective"] - abs(fifo["best_objective"]) * noise(asha, fifo)


def table(result: dict) -> str:
    lines = [f"{result['space']}: {result['samples']} samples, {result['repeats']} repeat(s), "
             f"reference accuracy {result['reference_accuracy']:.3f}",
             "scheduler | repeat | wall s | trial s | epochs | stopped early | best objective | best knobs",
             "---|---|---|---|---|---|---|---"]
    for name, runs in result["runs"].items():
        for repeat, run in enumerate(runs, start=1):
            lines.append(f"{name} | {repeat} | {run['wall_time_s']:.0f} | {run['trial_time_s']:.0f} | {run['epochs']} "
                         f"| {run['stopped_early']} | {run['best_objective']:.3f} | {run['best_params']}")
    kernels = sorted({path for runs in result["runs"].values() for run in runs for path in run["kernel_paths"]})
    lines.append(f"trials measured with kernel path(s): {', '.join(kernels) or 'none reported'}")
    if warning := fallback_warning(kernels):
        lines.append(f"warning: {warning}")
    saved, wall = result["trial_time_saved"], result["wall_time_saved"]
    goal = result["goal"]
    lines.append(f"fifo / asha trial time: {saved['median']:.2f}x (min {saved['min']:.2f}, max {saved['max']:.2f}); "
                 f"wall time {wall['median']:.2f}x; ASHA reached FIFO's best objective within the "
                 f"measurement's noise ({max(result['noise']):.1%}): "
                 f"{'yes' if result['reached_fifo_best'] else 'no'}; same best configuration: "
                 f"{'yes' if result['same_best_config'] else 'no'}")
    lines.append(f"goal (FIFO's best reached, trial time saved >= {goal['trial_time_saved_at_least']:.0f}x "
                 f"in every repeat): "
                 f"{'met' if goal['met'] else 'NOT MET'}")
    return "\n".join(lines)
