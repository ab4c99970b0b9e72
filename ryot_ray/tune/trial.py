"""One Tune trial: the documented Train V2 pattern, a function that drives one TorchTrainer.

The trial's config is the search's base config with the sampled knobs and `max_t`
epochs. Rank 0 of the Train run adds the measured speedup and the objective to each
epoch's report (`epoch_metrics`), and `TrialReports` (on the Train controller) forwards
that report to Tune, where ASHA reads it, as it comes: all but the run's last, which
`run_trial` reports itself from what `fit()` returns (the loop's return value). Forwarded, the last one could reach
Tune's trainable after the function had ended, and the trainable ends a trial with the
last report it has seen. A run whose loss stops being finite ends the trial with its
last report's status `diverged`; the search goes on. The Train run is named after the
trial (`train-<trial id>`), so a restarted or resumed trial continues from its own last
checkpoint, and the dashboard's Train API lists it by that name.

The trial's actor is Tune's wrapper of `run_trial` with a `__repr__` of its trial id and
knobs: Ray shows an actor's repr on the dashboard's Actors page (column Repr) and in the
prefix of the log lines the actor prints, where Tune's own class would say `run_trial`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

import ray.tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.trainable import wrap_function

from ryot_ray.config import Config, with_overrides
from ryot_ray.train.loop import DIVERGED, train_loop_per_worker
from ryot_ray.train.run import torch_trainer

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_S = "0.5"  # Ray's 2 s default delays each epoch's report to ASHA by up to 2 s


@dataclass(frozen=True)
class TrialSetup:
    base: dict  # the run config every trial starts from
    max_t: int  # epochs of a trial that is never stopped
    storage: str  # where the Train runs keep their checkpoints
    epoch_metrics: Callable  # (model, tokenizer, config, problems) -> metrics, on rank 0
    start_weights: ray.ObjectRef | None = None  # the fp32 weights every trial starts from


class TrialReports(TuneReportCallback):
    """Forwards each report of a Train run to Tune as it comes, but the run's last one (at
    its last epoch, or diverged): `fit()` returns that one."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]
        if report.get("epoch", 0) < self.epochs and report.get("status") != DIVERGED:
            super().after_report(run_context, metrics, checkpoint)


def trial_config(base: Config, params: dict, epochs: int) -> Config:
    overrides = [f"{key}={json.dumps(value)}" for key, value in sorted(params.items())]
    return with_overrides(base, [*overrides, f"train.epochs={epochs}"], "trial")


def run_trial(params: dict, setup: TrialSetup) -> None:
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)  # read by the Train controller it starts
    config = trial_config(Config.from_dict(setup.base), params, setup.max_t)
    trial_id = ray.tune.get_context().get_trial_id()
    loop = partial(train_loop_per_worker, epoch_metrics=setup.epoch_metrics, run_id=f"trial-{trial_id}",
                   start_weights=setup.start_weights)
    trainer = torch_trainer(config, loop, f"train-{trial_id}", setup.storage,
                            callbacks=(TrialReports(config.train.epochs),))
    # A failure raises here and Tune starts the trial again (its FailureConfig); its Train
    # run continues from its checkpoint. A diverged run returns: its last report says so.
    result = trainer.fit()
    last = result.return_value  # rank 0's last report; it came with the latest checkpoint unless it diverged
    if last is not None:
        diverged = last.get("status") == DIVERGED
        ray.tune.report(last | ({CHECKPOINT_PATH_KEY: result.checkpoint.path} if result.checkpoint and not diverged
                                else {}))


def trial_trainable(setup: TrialSetup, resources: dict) -> type:
    """`run_trial` with `setup` and `resources`, as the Trainable class Tune makes of a
    function, named in the dashboard by its trial."""
    function = ray.tune.with_resources(ray.tune.with_parameters(run_trial, setup=setup), resources)

    class TuneTrial(wrap_function(function)):
        def __repr__(self) -> str:
            knobs = ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in sorted(self.config.items()))
            return f"trial {self.trial_id} ({knobs})"

    TuneTrial.__qualname__ = TuneTrial.__name__  # the Actors page's Class column
    return TuneTrial
