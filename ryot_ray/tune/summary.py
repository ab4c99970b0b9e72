"""What a finished search says: every trial's last figures, how it ended, where its time
went, the Pareto front of speedup against accuracy, and the best trial.

Times come from Tune's clock (seconds between a trial's reports, from the trial function's
start) and the worker's own timers: setting up (model, data, process group), training,
evaluation and the objective's measurement. What is left is Ray's part: starting the
trial's Train controller and worker processes, checkpointing, reporting, and any restart.
"""

from __future__ import annotations

import ray.tune

from ryot_ray.stats import spread
from ryot_ray.train.loop import DIVERGED  # the trial has no objective for that epoch
from ryot_ray.tune.objective import FORMULA
from ryot_ray.tune.space import SearchSpace
from ryot_ray.tune.tuner import METRIC, Reference, SearchError

STOPPED_EARLY = "stopped early"
TIMERS = ("setup_time_s", "epoch_time_s", "eval_time_s", "measure_time_s")
FIGURES = ("objective", "speedup", "inference_accuracy", "accuracy_retention", "accuracy", "speedup_rounds", "speedup_spread",
           "paths_per_problem", "node", "node_id", "cpu", "kernel_path", "threads")


def interrupted(results: ray.tune.ResultGrid, max_t: int) -> bool:
    """True when some trial neither ended nor failed: the driver was stopped. Tune marks the
    trials it stops on Ctrl-C terminated too. A trial ended when it trained `max_t` epochs,
    diverged, or Tune stopped it (its last result is `done`); a trial whose function
    returned carries `done` only until the search is restored, so epochs decide there."""
    def ended(metrics: dict) -> bool:
        return bool(metrics.get("done")) or metrics.get("epoch", 0) >= max_t or metrics.get("status") == DIVERGED

    return any(result.error is None and not ended(result.metrics or {}) for result in results)


def _column(frame, name: str) -> list[float]:
    """A report column's values (a report without it, e.g. a diverged epoch's objective, left out)."""
    return [float(v) for v in frame[name].dropna()] if name in frame else []


def overhead(frame) -> dict:
    """Where a trial's time went, from its per-epoch reports. Tune's `time_this_iter_s`
    adds up across restarts (`time_total_s` starts again with each); a replayed report
    (a run restarted after its last checkpoint) carries timers already counted."""
    if frame is None or frame.empty:
        return {}
    worked = frame[~frame["replayed"].eq(True)] if "replayed" in frame else frame
    setup, training, evaluation, measurement = (sum(_column(worked, name)) for name in TIMERS)
    first_report = float(frame["time_total_s"].iloc[0])
    first_work = sum(float(worked[name].iloc[0]) for name in TIMERS if name in worked and not worked.empty)
    trial = sum(_column(frame, "time_this_iter_s"))
    return {
        "trial_s": trial,
        "first_report_s": first_report,
        "ray_start_up_s": first_report - first_work,
        "worker_setup_s": setup,
        "training_s": training,
        "evaluation_s": evaluation,
        "measurement_s": measurement,
        "ray_s": trial - setup - training - evaluation - measurement,
    }


def trial_record(result: ray.tune.Result, space: SearchSpace) -> dict:
    metrics = result.metrics or {}
    epochs = int(metrics.get("epoch", 0))
    if result.error is not None:
        status = "errored"
    elif metrics.get("status") == DIVERGED:
        status = DIVERGED
    elif epochs < space.scheduler.max_t:
        status = STOPPED_EARLY
    else:
        status = "completed"
    frame = result.metrics_dataframe
    record = {
        "trial_id": metrics.get("trial_id") or result.path.rsplit("/", 1)[-1],
        "params": {knob.key: (result.config or {}).get(knob.key) for knob in space.knobs},
        "status": status,
        "epochs": epochs,
        "restarts": max(0, int(metrics.get("worker_group_starts", 1)) - 1),  # worker group or trial started again
        **{name: metrics[name] for name in FIGURES if name in metrics},
        "objective_by_epoch": _column(frame, METRIC) if frame is not None else [],
        "checkpoint": metrics.get("checkpoint_path"),
        "overhead": overhead(frame),
    }
    if result.error is not None:
        record["error"] = str(result.error).strip().splitlines()[-1][:300]
    return record


def pareto_front(trials: list[dict]) -> list[str]:
    """Trials no other trial beats on both speedup and inference accuracy."""
    measured = [t for t in trials if "speedup" in t and "inference_accuracy" in t]

    def dominated(trial: dict) -> bool:
        return any(o["speedup"] >= trial["speedup"] and o["inference_accuracy"] >= trial["inference_accuracy"]
                   and (o["speedup"], o["inference_accuracy"]) != (trial["speedup"], trial["inference_accuracy"])
                   for o in measured)

    return [t["trial_id"] for t in measured if not dominated(t)]


def fallback_warning(kernel_paths: list[str]) -> str | None:
    """A trial whose node could not load the native library measured the torch fallback's
    speed, not the ternary kernels': say so wherever its speedups are shown."""
    fallback = [path for path in kernel_paths if not path.startswith("native")]
    if not fallback:
        return None
    return (f"some trials measured their speed with the {', '.join(fallback)} kernel path: the native ternary "
            "library did not load on their node, so their speedups are the torch fallback's "
            "(`ryot-ray info` on that node says why)")


def summarize(results: ray.tune.ResultGrid, space: SearchSpace, reference: Reference, wall_time_s: float) -> dict:
    trials = [trial_record(result, space) for result in results]
    ranked = [t for t in trials if t["status"] not in ("errored", DIVERGED) and METRIC in t]
    if not ranked:
        raise SearchError(f"no trial reported an objective ({len(trials)} trials: "
                          + ", ".join(sorted({t['status'] for t in trials})) + "); each trial's folder under tune/ says why")
    best = max(ranked, key=lambda t: (t[METRIC], t["speedup"]))  # below the floor, ties go to the faster
    timed = [t["overhead"] for t in trials if t["overhead"]]
    trial_time = sum(o["trial_s"] for o in timed)
    return {
        "space": space.source,
        "objective_formula": FORMULA,
        "accuracy_floor": space.accuracy_floor,
        "scheduler": vars(space.scheduler),
        "search": space.search,
        "samples": space.samples,
        "speed_at": space.speed_at,
        "reference": {"checkpoint": str(reference.checkpoint), "accuracy": reference.accuracy,
                      "config_hash": reference.config_hash, "trained_in_this_run": reference.trained_now,
                      "trials_start_from_it": space.start_from == "reference"},
        "wall_time_s": wall_time_s,
        "trials": trials,
        "kernel_paths": sorted({t["kernel_path"] for t in trials if t.get("kernel_path")}),
        "threads": sorted({t["threads"] for t in trials if t.get("threads")}),
        "stopped_early": sum(t["status"] == STOPPED_EARLY for t in trials),
        "errored": sum(t["status"] == "errored" for t in trials),
        "diverged": sum(t["status"] == DIVERGED for t in trials),
        "pareto_front": pareto_front(trials),
        "best_trial": best["trial_id"],
        "best": best,
        "overhead": {
            "trial_time_s": trial_time,
            "training_s": sum(o["training_s"] for o in timed),
            "worker_setup_s": sum(o["worker_setup_s"] for o in timed),
            "evaluation_and_measurement_s": sum(o["evaluation_s"] + o["measurement_s"] for o in timed),
            "ray_s": sum(o["ray_s"] for o in timed),
            "ray_fraction": sum(o["ray_s"] for o in timed) / trial_time if trial_time else None,
            "first_report_s": spread([o["first_report_s"] for o in timed]) if timed else None,
        },
    }
