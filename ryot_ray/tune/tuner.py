"""The search: one reference training per experiment, then Ray Tune with ASHA over the space.

The reference (the base config in full precision: dense, full width, same data and
epochs) is trained once and cached by the hash of its config under
`<results>/references/`, so a second experiment on the same base config, or a resumed
one, reuses it. Its accuracy on the problems a trial measures is the denominator of
every trial's accuracy retention. With `start_from: reference` its weights are also where
every trial starts: they go to the object store once, so trials on any node read them.

A trial asks for no CPU of its own, only the memory its driver process uses (the Train
workers it starts hold the CPUs), and at most as many trials run at once as the
cluster has CPUs for their workers, so trials never wait on each other's placement
groups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from ryot_ray.config import Config, with_overrides
from ryot_ray.atomic import write_json_atomic
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.run import REPORT_FILE, run_training
from ryot_ray.tune.objective import EpochObjective
from ryot_ray.tune.metrics import TrialMetrics
from ryot_ray.tune.progress import TrialProgress
from ryot_ray.tune.space import Knob, SearchSpace
from ryot_ray.tune.trial import TrialSetup, trial_trainable

log = logging.getLogger(__name__)
METRIC = "objective"
TUNE_RUN = "tune"  # Tune's experiment folder inside the experiment's directory
TRAIN_RUNS = "train-runs"  # the trials' Ray Train runs
REFERENCE_RECORD = "reference_accuracy-{problems}-problems.json"  # its accuracy, per number measured
TRIAL_DRIVER = {"CPU": 0, "memory": 256 * 2**20}  # Tune needs some resource in a trial's bundle
STATE_SAVE_S = "1"
DRIVERS_FILE = "driver_jobs.json"  # the Ray job (and cluster head) of this search's last driver
HEAD_RESOURCE = "node:__internal_head__"  # the resource only Ray's head node has


class SearchError(RuntimeError):
    """The search cannot give meaningful results (e.g. a reference that learned nothing)."""


@dataclass(frozen=True)
class Measurement:
    """How trials are measured; the CLI passes the validation stage's functions."""

    per_epoch: Callable[..., dict]  # (model, tokenizer, config, problems) -> inference_accuracy, speedup, ...
    reference_accuracy: Callable[[Path], float]  # a trained reference checkpoint -> its accuracy


@dataclass
class Reference:
    checkpoint: Path
    accuracy: float
    config_hash: str
    trained_now: bool


def reference_config(space: SearchSpace) -> Config:
    """The Phase 1 reference of the search: the base config in fp32, no knobs, `max_t` epochs."""
    return with_overrides(space.base, [
        "model.quantization=none", "model.mrl_depth=1", "model.sparse_k=1.0",
        "model.activation_compression=none", f"train.epochs={space.scheduler.max_t}",
    ], f"{space.source}: reference")


def reference_dir(config: Config, cache: Path) -> tuple[Path, str]:
    """Where the reference of `config` is cached, and the hash that names it."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"reference-{digest}", digest


def train_reference(space: SearchSpace, cache: Path, measurement: Measurement) -> Reference:
    """The search's reference: trained once per config, measured once per number of problems."""
    config = reference_config(space)
    directory, digest = reference_dir(config, cache)
    record = directory / REFERENCE_RECORD.format(problems=space.measure_problems)
    if record.is_file():
        data = json.loads(record.read_text())
        return Reference(Path(data["checkpoint"]), data["accuracy"], digest, trained_now=False)
    checkpoint = _finished_training(directory)
    trained_now = checkpoint is None
    if trained_now:
        outcome = run_training(config, directory)
        if outcome.checkpoint is None or outcome.status != "finished":
            raise SearchError(f"the reference training did not finish ({outcome.status}); see {outcome.report_path}")
        checkpoint = outcome.checkpoint
    accuracy = measurement.reference_accuracy(checkpoint)
    if accuracy == 0:
        raise SearchError(f"the reference ({checkpoint}) answers none of the measured problems, so "
                          "accuracy retention is undefined: train longer (scheduler.max_t) or on more data")
    write_json_atomic(record, {"checkpoint": str(checkpoint), "accuracy": accuracy, "config_hash": digest,
                               "measured_problems": space.measure_problems})
    return Reference(checkpoint, accuracy, digest, trained_now)


def _finished_training(directory: Path) -> Path | None:
    """The checkpoint of a reference training that finished in `directory` earlier."""
    report = directory / REPORT_FILE
    if not report.is_file():
        return None
    data = json.loads(report.read_text())
    return Path(data["checkpoint"]) if data["status"] == "finished" and data["checkpoint"] else None


def tune_domain(knob: Knob):
    values = list(knob.values)  # constants are folded into the base config by load_space
    if knob.kind == "grid":
        return ray.tune.grid_search(values)
    if knob.kind == "choice":
        return ray.tune.choice(values)
    return getattr(ray.tune, knob.kind)(*values)  # uniform, loguniform, randint: [low, high)


def concurrent_trials(space: SearchSpace) -> int:
    """Trials whose workers fit in the cluster's CPUs at the same time (at least one)."""
    def most(key: str, base: int) -> int:
        return max((max(k.values) for k in space.knobs if k.key == key), default=base)

    per_trial = most("train.workers", space.base.train.workers) * most("train.cpus_per_worker",
                                                                        space.base.train.cpus_per_worker)
    return max(1, int(ray.cluster_resources().get("CPU", 0) // per_trial))


def _scheduler(space: SearchSpace):
    if space.scheduler.name == "fifo":
        return FIFOScheduler()
    # by epoch, not Tune's iteration count: a resumed trial's Train run continues its epochs
    # A trial at max_t ends by itself (its function returns), not stopped by ASHA: its Train
    # run then ends FINISHED in the dashboard, not ABORTED as a stopped trial's does.
    return ASHAScheduler(time_attr="epoch", max_t=space.scheduler.max_t,
                         grace_period=space.scheduler.grace_period,
                         reduction_factor=space.scheduler.reduction_factor, stop_last_trials=False)


def _search_algorithm(space: SearchSpace, concurrent: int):
    """Seeded, and limited to `concurrent` trials at once (Tune ignores
    `max_concurrent_trials` when it is handed a variant generator)."""
    if space.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=space.base.seed), max_concurrent=concurrent)
    return BasicVariantGenerator(random_state=space.base.seed, max_concurrent=concurrent)


def run_search(space: SearchSpace, directory: Path, reference: Reference, measurement: Measurement,
               resume: bool = False) -> ray.tune.ResultGrid:
    """Run (or, with `resume`, continue) the search; returns Tune's results."""
    setup = TrialSetup(
        base=space.base.to_dict(),
        max_t=space.scheduler.max_t,
        storage=str(directory / TRAIN_RUNS),
        epoch_metrics=EpochObjective(measurement.per_epoch, reference.accuracy, space.accuracy_floor),
        start_weights=ray.put(load_checkpoint(reference.checkpoint)[0].state_dict())
        if space.start_from == "reference" else None,
    )
    # A diverged epoch's report has no objective; Tune would end the whole search over it.
    # Without the strict check ASHA skips that report and the trial ends, status "diverged".
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune saves the experiment state every 10 s by default; a driver killed in between
    # would lose trials that had finished and --resume would start them again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_S)
    trainable = trial_trainable(setup, TRIAL_DRIVER)
    released = release_earlier_drivers(directory)
    if released:
        log.warning("released %d placement group(s) that an earlier, stopped driver of this search left behind",
                    released)
    path = directory / TUNE_RUN
    if resume and ray.tune.Tuner.can_restore(str(path)):
        tuner = ray.tune.Tuner.restore(str(path), trainable, resume_unfinished=True)  # errored: kept as they ended
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space={knob.key: tune_domain(knob) for knob in space.knobs},
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=space.samples, scheduler=_scheduler(space),
                search_alg=_search_algorithm(space, concurrent_trials(space)),
            ),
            run_config=ray.tune.RunConfig(
                name=TUNE_RUN, storage_path=str(directory), verbose=0,
                # a trial whose driver died with its node starts again elsewhere
                failure_config=ray.tune.FailureConfig(max_failures=space.base.train.max_failures),
                callbacks=[TrialProgress(space.scheduler.max_t), TrialMetrics(directory.name)]),
        )
    results = tuner.fit()
    released = release_placement_groups(ray.get_runtime_context().get_job_id())
    if released:
        log.warning("released %d placement group(s) that stopped trials' Train runs left behind", released)
    return results


def release_placement_groups(job: str) -> int:
    """Remove the placement groups the Ray job `job` still holds.

    Called for this job once every trial has ended: a trial Tune stops while its Train run
    is shutting down can leave the worker group's placement group behind (Ray Train's
    cleaner has already stopped by then); the CPUs it holds would keep the validator from
    ever starting. Only `job`'s are removed: a placement group's id ends with the id of the
    job that created it (Ray's ID layout).
    """
    leftover = [pg_id for pg_id, pg in placement_group_table().items()
                if pg["state"] == "CREATED" and pg_id.endswith(job)]
    for pg_id in leftover:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    return len(leftover)


def release_earlier_drivers(directory: Path) -> int:
    """Release what earlier drivers of this search left on this cluster; record this one.

    A driver killed mid-search (SIGKILL, a lost node) can leave its trials' placement
    groups behind after its job ended; their CPUs would keep the resumed trials waiting
    for ever. A search runs one driver at a time, so the placement groups of its earlier
    drivers' jobs on the same cluster (same head node) are released; nothing else is.
    """
    path = directory / DRIVERS_FILE
    earlier = json.loads(path.read_text()) if path.is_file() else []
    head = next(node["NodeID"] for node in ray.nodes() if node["Alive"] and HEAD_RESOURCE in node["Resources"])
    current = {"head": head, "job": ray.get_runtime_context().get_job_id()}
    released = sum(release_placement_groups(driver["job"]) for driver in earlier
                   if driver["head"] == head and driver != current)
    write_json_atomic(path, [driver for driver in earlier if driver["head"] != head] + [current])
    return released
