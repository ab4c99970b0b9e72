"""Run one Ray Train job and write its training report and final checkpoint.

Layout of `results/<experiment>/`: `config.yaml` (what was asked, for `--resume`),
`ray/` (Ray Train's run storage with every epoch's checkpoint), `checkpoint/` (the
latest good checkpoint) and `training_metrics_report.json`.

Every Train run ryot-ray starts has Ray Train's state tracking on, so the dashboard's
Train API (`/api/train/v2/runs/v1`) lists it by name with its attempts and workers.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchTrainer

from ryot_ray.atomic import write_json_atomic
from ryot_ray.config import Config
from ryot_ray.machine import machine_facts
from ryot_ray.memory import training_allocator_env
from ryot_ray.train.experiment import CONFIG_FILE
from ryot_ray.train.checkpoint import CheckpointError, TrainingState, atomic_directory, read_checkpoint_record
from ryot_ray.train.loop import DIVERGED, train_loop_per_worker

REPORT_FILE = "training_metrics_report.json"
STATE_TRACKING_ENV = "RAY_TRAIN_ENABLE_STATE_TRACKING"  # read by TorchTrainer.fit in this process


def _damaged_checkpoint(error: WorkerGroupError) -> CheckpointError | None:
    """A worker's refusal of a damaged checkpoint, as the one line it is (not a traceback)."""
    for failure in error.worker_failures.values():
        cause = getattr(failure, "cause", failure)  # a RayTaskError carries the worker's exception
        if isinstance(cause, CheckpointError):
            return CheckpointError(cause.args[0])
    return None


def worker_restarts(state: TrainingState, run_id: str) -> list[dict]:
    """Where this run's worker group started again after a failure (its first start is
    the run's own, fresh or resumed)."""
    return [start for start in state.starts if start["run"] == run_id][1:]


@dataclass
class TrainingOutcome:
    status: str  # finished | diverged
    report_path: Path
    checkpoint: Path | None
    report: dict


def torch_trainer(config: Config, loop, name: str, storage: str, callbacks: tuple = ()) -> TorchTrainer:
    """The run's TorchTrainer: its workers' CPUs, its storage, its worker restarts; `name`
    is the run's name in the dashboard and its folder in `storage`."""
    os.environ.setdefault(STATE_TRACKING_ENV, "1")
    return TorchTrainer(
        loop,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=False,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            # Train's own INFO lines (resources requested, worker group started, model
            # moved to cpu, checkpoint created) stay in the session's log files
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": training_allocator_env()},
        ),
    )


def run_training(config: Config, directory: Path) -> TrainingOutcome:
    """Train (resuming from `directory/ray` when it holds this run) and report."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    run_id = uuid.uuid4().hex
    trainer = torch_trainer(config, partial(train_loop_per_worker, run_id=run_id, progress=True), directory.name,
                            str(directory / "ray"))
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except WorkerGroupError as error:
        raise _damaged_checkpoint(error) or error
    wall_time = time.perf_counter() - start

    history: list[dict] = []
    state = TrainingState()
    checkpoint_dir = None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as source:
            state = TrainingState(**read_checkpoint_record(Path(source))["state"])
            checkpoint_dir = directory / "checkpoint"
            with atomic_directory(checkpoint_dir) as target:
                shutil.copytree(source, target, dirs_exist_ok=True)
        history = list(state.history)
    status = result.metrics.get("status", "ok") if result.metrics else "ok"
    if status == DIVERGED:
        history.append(result.metrics)
    report = {
        "experiment": directory.name,
        "status": "diverged" if status == "diverged" else "finished",
        "wall_time_s": wall_time,
        "workers": config.train.workers,
        "cpus_per_worker": config.train.cpus_per_worker,
        "seed": config.seed,
        "config": config.to_dict(),
        "machine": state.machine or machine_facts(),
        "epochs": history,
        "test": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("test_")},
        "anomalies": state.anomalies,
        "worker_restarts": worker_restarts(state, run_id),
        "checkpoint": str(checkpoint_dir) if checkpoint_dir else None,
    }
    report_path = directory / REPORT_FILE
    write_json_atomic(report_path, report)
    return TrainingOutcome(report["status"], report_path, checkpoint_dir, report)
