"""Each trial's latest figures as Ray metrics, tagged by experiment and trial: what the
dashboard's Metrics view (Prometheus and Grafana) and any scraper of a node's metrics
export port see while the search runs. Ray adds the `ray_` prefix to the names."""

from __future__ import annotations

import functools

from ray.tune import Callback
from ray.util.metrics import Gauge

FIGURES = {
    "objective": "the trial's objective at its latest epoch",
    "inference_accuracy": "exact match of the trial's inference configuration",
    "speedup": "reference time / trial time to answer the measured problems",
    "tokens_per_s": "training tokens per second of the trial's Train workers",
    "epoch": "epochs the trial has trained",
}
PREFIX = "ryot_trial_"
TAGS = ("experiment", "trial")


@functools.cache
def gauges() -> dict[str, Gauge]:
    """Made once per process, on first use (a Gauge does not travel inside a pickle)."""
    return {name: Gauge(PREFIX + name, description, tag_keys=TAGS) for name, description in FIGURES.items()}


class TrialMetrics(Callback):
    def __init__(self, experiment: str):
        self.experiment = experiment

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tags = {"experiment": self.experiment, "trial": trial.trial_id}
        for name, gauge in gauges().items():
            if isinstance(result.get(name), (int, float)):
                gauge.set(float(result[name]), tags=tags)
