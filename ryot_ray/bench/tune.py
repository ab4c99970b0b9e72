"""ASHA against running every trial to `max_t`: the same space, seeds and reference,
one search after the other on the same cluster."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ryot_ray.machine import machine_facts
from ryot_ray.tune.space import SearchSpace
from ryot_ray.tune.summary import interrupted, summarize
from ryot_ray.tune.tuner import Measurement, run_search, train_reference


def bench_tune(space: SearchSpace, directory: Path, references: Path, measurement: Measurement) -> dict:
    reference = train_reference(space, references, measurement)
    runs = {}
    for name in ("asha", "fifo"):
        scheduled = dataclasses.replace(space, scheduler=dataclasses.replace(space.scheduler, name=name))
        start = time.perf_counter()
        results = run_search(scheduled, directory / name, reference, measurement)
        if interrupted(results):
            raise KeyboardInterrupt
        summary = summarize(results, scheduled, reference, time.perf_counter() - start)
        runs[name] = {
            "wall_time_s": summary["wall_time_s"],
            "trial_time_s": summary["overhead"]["trial_time_s"],
            "epochs": sum(t["epochs"] for t in summary["trials"]),
            "stopped_early": summary["stopped_early"],
            "best_objective": summary["best"]["objective"],
            "best_params": summary["best"]["params"],
            "trials": [{key: t.get(key) for key in ("params", "status", "epochs", "objective")}
                       for t in summary["trials"]],
        }
    asha, fifo = runs["asha"], runs["fifo"]
    return {
        "benchmark": "tune",
        "space": space.source,
        "samples": space.samples,
        "reference_accuracy": reference.accuracy,
        "runs": runs,
        "trial_time_saved": fifo["trial_time_s"] / asha["trial_time_s"],
        "wall_time_saved": fifo["wall_time_s"] / asha["wall_time_s"],
        "same_best_config": asha["best_params"] == fifo["best_params"],
        "machine": machine_facts(),
    }


def table(result: dict) -> str:
    lines = [f"{result['space']}: {result['samples']} samples, reference accuracy {result['reference_accuracy']:.3f}",
             "scheduler | wall s | trial s | epochs | stopped early | best objective",
             "---|---|---|---|---|---"]
    for name, run in result["runs"].items():
        lines.append(f"{name} | {run['wall_time_s']:.0f} | {run['trial_time_s']:.0f} | {run['epochs']} "
                     f"| {run['stopped_early']} | {run['best_objective']:.3f}")
    lines.append(f"fifo / asha: trial time {result['trial_time_saved']:.2f}x, wall time {result['wall_time_saved']:.2f}x; "
                 f"same best configuration: {'yes' if result['same_best_config'] else 'no'}")
    return "\n".join(lines)
