"""`ray job submit` of the smoke search on a real two-node cluster, its driver killed
mid-search and the search resubmitted with `--resume`: it finishes without rerunning a
finished trial, trials ran on both nodes, every report lands in the storage the job was
given, the dashboard wants the cluster's token and the trials' figures reach the metrics
export endpoint. Then the dashboard as a user sees it, in headless Chromium: the job by
its experiment's name, every trial's actor by its trial id and knobs, every trial's Train
run with its workers, the validator, and screenshots of them in results/dashboard/."""

import json
import re
import signal
import time

from pathlib import Path

import psutil
import pytest

from ryot_ray.tune.metrics import FIGURES, GRAFANA_FILE, RAY_GRAFANA_DASHBOARDS
from tests.cluster.conftest import SCREENSHOTS
from tests.e2e.test_cli_tune import finished_trials, running_trials

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
EXPERIMENT = "on-cluster"
TRAIN_RUNS_API = "/api/train/v2/runs/v1"  # the dashboard's Train V2 API; its web pages have no Train view


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
                               "--name", EXPERIMENT, wait=False, timeout=120, job_name=EXPERIMENT)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    deadline, metrics = time.monotonic() + 500, []
    while True:
        metrics = metrics or metric_lines(cluster, EXPERIMENT)
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
    resumed = cluster.submit("tune", "--resume", EXPERIMENT, "--results-dir", str(results), job_name=EXPERIMENT)
    return {"directory": results / EXPERIMENT, "before": before, "resumed": resumed, "metrics": metrics}


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
    assert names == set(FIGURES)  # what the Grafana dashboard plots
    assert all('trial="' in line for line in search["metrics"])


def test_the_grafana_dashboard_is_beside_ray_s_on_the_head_node(search, cluster):
    session = Path(cluster.temp_dirs["node_head"]) / "session_latest"
    assert (session / RAY_GRAFANA_DASHBOARDS / GRAFANA_FILE).is_file()
    assert (session / RAY_GRAFANA_DASHBOARDS / "train_grafana_dashboard.json").is_file()  # Ray's own, beside it
    assert (search["directory"] / GRAFANA_FILE).is_file()


def test_the_dashboard_wants_the_cluster_s_token(cluster):
    assert cluster.get("/api/jobs/", token=False)[0] in (401, 403)
    assert cluster.get("/api/jobs/")[0] == 200


@pytest.mark.browser
def test_the_jobs_page_finds_the_search_by_its_experiment_name(search, cluster, dashboard):
    from playwright.sync_api import expect

    dashboard.goto(cluster.dashboard + "/#/jobs")
    dashboard.get_by_role("textbox", name="Name").fill(EXPERIMENT)
    rows = dashboard.get_by_role("row").filter(has_text=f"--name {EXPERIMENT}")
    expect(rows).to_have_count(1)  # the first submission; the resumed one says --resume
    expect(dashboard.get_by_role("row").filter(has_text=f"--resume {EXPERIMENT}")).to_have_count(1)
    dashboard.screenshot(path=SCREENSHOTS / "jobs.png", full_page=True)


@pytest.mark.browser
def test_every_trial_and_the_validator_are_named_on_the_actors_page(search, cluster, dashboard):
    from playwright.sync_api import expect

    summary = json.loads((search["directory"] / "tune_summary.json").read_text())
    dashboard.goto(cluster.dashboard + "/#/actors")
    dashboard.get_by_label("Page Size").fill("100")
    dashboard.get_by_role("textbox", name="Class").fill("TuneTrial")
    for trial in summary["trials"]:
        expect(dashboard.get_by_text(f"trial {trial['trial_id']} (").first).to_be_visible()
    dashboard.screenshot(path=SCREENSHOTS / "trials.png", full_page=True)
    dashboard.get_by_role("textbox", name="Class").fill("InferenceValidator")
    expect(dashboard.get_by_text(f"validator of train-{summary['best']['trial_id']}/checkpoint_")).to_be_visible()


@pytest.mark.browser
def test_every_trial_s_train_run_is_in_the_dashboard_with_its_workers(search, cluster, dashboard):
    from playwright.sync_api import expect

    summary = json.loads((search["directory"] / "tune_summary.json").read_text())
    runs: dict[str, list[dict]] = {}
    for run in dashboard.goto(cluster.dashboard + TRAIN_RUNS_API).json()["train_runs"]:
        runs.setdefault(run["name"], []).append(run)  # a resumed trial's run has one per driver
    assert {f"train-{trial['trial_id']}" for trial in summary["trials"]} <= set(runs)
    best = runs[f"train-{summary['best']['trial_id']}"]
    finished = [run for run in best if run["status"] == "FINISHED"]
    assert finished, [(run["status"], run["status_detail"]) for run in best]
    (worker,) = finished[0]["attempts"][-1]["workers"]  # the smoke space trains on one worker
    dashboard.goto(cluster.dashboard + f"/#/actors/{worker['actor_id']}")
    expect(dashboard.get_by_text("RayTrainWorker").first).to_be_visible()
    expect(dashboard.get_by_text(worker["actor_id"]).first).to_be_visible()
    dashboard.screenshot(path=SCREENSHOTS / "train_worker.png", full_page=True)
