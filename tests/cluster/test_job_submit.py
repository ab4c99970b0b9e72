"""`ray job submit` of the smoke search on a real two-node cluster, its driver killed
mid-search and the search resubmitted with `--resume`: it finishes without rerunning a
finished trial, trials ran on both nodes, every report lands in the storage the job was
given, the dashboard wants the cluster's token and the trials' figures reach the metrics
export endpoint."""

import json
import re
import signal
import time

import psutil
import pytest

from tests.e2e.test_cli_tune import finished_trials, running_trials

pytestmark = [pytest.mark.ray, pytest.mark.cluster]


def job_driver(results) -> psutil.Process | None:
    """The job's Python driver itself (not the shell `ray job` starts it from)."""
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if argv[1:4] == ["-m", "ryot_ray", "tune"] and str(results) in argv:
            return process
    return None


def metric_lines(cluster, experiment: str) -> list[str]:
    """The experiment's trial gauges, as any node's metrics export endpoint serves them."""
    import urllib.request

    lines = []
    for url in cluster.metrics:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except OSError:  # the export port is not up yet
            continue
        lines += [line for line in text.splitlines()
                  if line.startswith("ray_ryot_trial_") and f'experiment="{experiment}"' in line]
    return lines


@pytest.fixture(scope="module")
def search(cluster, tmp_path_factory):
    results = tmp_path_factory.mktemp("cluster-results")
    tune_dir = results / "on-cluster" / "tune"
    submitted = cluster.submit("tune", "--space", "search_spaces/smoke.yaml", "--results-dir", str(results),
                               "--name", "on-cluster", wait=False, timeout=120)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    deadline, metrics = time.monotonic() + 500, []
    while True:
        metrics = metrics or metric_lines(cluster, "on-cluster")
        finished, running = finished_trials(tune_dir), running_trials(tune_dir)
        if len(finished) >= 2 and running and metrics:
            break
        assert time.monotonic() < deadline, f"finished {len(finished)}, running {running}, metric lines {metrics}"
        time.sleep(0.5)
    time.sleep(3)  # the experiment state is saved every second
    before = finished_trials(tune_dir)
    driver = job_driver(results)
    assert driver is not None
    driver.send_signal(signal.SIGKILL)
    resumed = cluster.submit("tune", "--resume", "on-cluster", "--results-dir", str(results))
    return {"directory": results / "on-cluster", "before": before, "resumed": resumed, "metrics": metrics}


def test_killed_driver_resumes_without_rerunning_finished_trials(search):
    resumed = search["resumed"]
    assert resumed.returncode == 0 and "succeeded" in resumed.stdout, resumed.stdout[-4000:]
    after = finished_trials(search["directory"] / "tune")
    assert len(after) == 5
    for trial, finished in search["before"].items():
        assert after[trial] == finished, f"{trial} was run again"


def test_trials_ran_on_both_nodes_and_reports_landed(search, cluster):
    summary = json.loads((search["directory"] / "tune_summary.json").read_text())
    nodes = {trial["node_id"] for trial in summary["trials"] if "node_id" in trial}
    assert nodes == set(cluster.node_ids().values()), summary["trials"]
    assert all(trial["cpu"]["model"] for trial in summary["trials"] if "cpu" in trial)
    validation = json.loads((search["directory"] / "inference_validation_report.json").read_text())
    assert validation["checkpoint"] == summary["best"]["checkpoint"]
    assert str(search["directory"]) in validation["checkpoint"]


def test_trial_figures_reach_the_metrics_endpoint(search):
    names = {re.match(r"ray_ryot_trial_(\w+)\{", line).group(1) for line in search["metrics"]}
    assert {"objective", "speedup", "inference_accuracy", "tokens_per_s", "epoch"} <= names
    assert all('trial="' in line for line in search["metrics"])


def test_the_dashboard_wants_the_cluster_s_token(cluster):
    assert cluster.get("/api/jobs/", token=False)[0] in (401, 403)
    assert cluster.get("/api/jobs/")[0] == 200
