"""Each trial's latest figures as Ray metrics, tagged by experiment and trial: what the
dashboard's Metrics view (Prometheus and Grafana) and any scraper of a node's metrics
export port see while the search runs. Ray adds the `ray_` prefix to the names.

The Grafana dashboard of these figures is made from the same table, so it always shows
what the search exports; it goes next to Ray's own dashboards in the session's Grafana
folder (which Ray's Grafana set-up provisions) and beside the experiment's reports.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ray.tune import Callback
from ray.util.metrics import Gauge

from ryot_ray.atomic import write_json_atomic

FIGURES = {
    "objective": "the trial's objective at its latest epoch",
    "speedup": "reference time / trial time to answer the measured problems",
    "inference_accuracy": "exact match of the trial's inference configuration",
    "accuracy_retention": "the trial's exact match / the reference's",
    "tokens_per_s": "training tokens per second of the trial's Train workers",
    "epoch": "epochs the trial has trained",
}
PREFIX = "ryot_trial_"
TAGS = ("experiment", "trial")
GRAFANA_FILE = "ryot_ray_grafana_dashboard.json"
GRAFANA_UID = "ryot-ray-trials"
RAY_GRAFANA_DASHBOARDS = Path("metrics", "grafana", "dashboards")  # inside a Ray session's directory


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


def _variable(name: str, query: str) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": "${datasource}", "refresh": 2,
            "query": {"query": query, "refId": name}, "definition": query, "includeAll": True, "multi": True,
            "allValue": ".*", "current": {"text": ["All"], "value": ["$__all"]}}


def grafana_dashboard() -> dict:
    """A Grafana dashboard with one time series per figure, a line per trial, filtered by
    experiment and trial (Grafana's dashboard JSON model, Prometheus data source)."""
    first = f"ray_{PREFIX}{next(iter(FIGURES))}"
    panels = [{
        "id": index + 1, "type": "timeseries", "title": name.replace("_", " "), "description": description,
        "datasource": "${datasource}", "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "targets": [{"refId": "A", "legendFormat": "{{trial}}",
                     "expr": f'ray_{PREFIX}{name}{{experiment=~"$experiment", trial=~"$trial"}}'}],
    } for index, (name, description) in enumerate(FIGURES.items())]
    return {
        "uid": GRAFANA_UID, "title": "ryot-ray trials", "tags": ["ryot-ray", "tune"], "editable": True,
        "schemaVersion": 39, "refresh": "5s", "time": {"from": "now-1h", "to": "now"}, "panels": panels,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 2},
            _variable("experiment", f"label_values({first}, experiment)"),
            _variable("trial", f'label_values({first}{{experiment=~"$experiment"}}, trial)'),
        ]},
    }


def write_grafana_dashboard(directory: Path, session_dir: Path | None) -> list[Path]:
    """Write the dashboard beside the experiment and, where this process runs on the head
    node, into the session's Grafana folder; returns where it went."""
    folders = [directory]
    if session_dir and (session_dir / RAY_GRAFANA_DASHBOARDS).is_dir():  # not from a driver off the head node
        folders.append(session_dir / RAY_GRAFANA_DASHBOARDS)
    dashboard = grafana_dashboard()
    for folder in folders:
        write_json_atomic(folder / GRAFANA_FILE, dashboard)
    return [folder / GRAFANA_FILE for folder in folders]
