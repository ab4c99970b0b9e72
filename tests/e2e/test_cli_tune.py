"""`ryot-ray tune` driven as a user would: the smoke search on an embedded Ray cluster,
interrupted with Ctrl-C once ASHA has stopped the trial that learns nothing, then
resumed to the end. (Tune does not restore a scheduler's rungs, so ASHA is judged
before the interruption.)"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from ryot_ray.tune.objective import objective
from tests.e2e.test_cli_train import REPO, ryot_ray

pytestmark = pytest.mark.ray


def finished_trials(tune_dir) -> dict[str, tuple[float, int]]:
    """Trials that ended (TERMINATED in Tune's latest saved experiment state, what `--resume`
    reads): their learning rate and how many results they wrote."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    ended = {json.loads(trial)["trial_id"] for trial, _ in json.loads(states[-1].read_text())["trial_data"]
             if json.loads(trial)["status"] == "TERMINATED"} if states else set()
    finished = {}
    for path in tune_dir.glob("run_trial_*/result.json"):
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[-1])["trial_id"] in ended:
            finished[path.parent.name] = (json.loads(lines[-1])["config"]["train.lr"], len(lines))
    return finished


def running_trials(tune_dir) -> set[str]:
    """Trials started and not finished."""
    started = {path.name for path in tune_dir.glob("run_trial_*") if path.is_dir()}
    return started - set(finished_trials(tune_dir))


def time_to_interrupt(tune_dir) -> bool:
    """ASHA has stopped the trial that learns nothing and another trial is still running.
    Tune rewrites its files while we poll, so a file caught half written means "not yet"."""
    try:
        stuck_done = any(lr == 1e-7 for lr, _ in finished_trials(tune_dir).values())
        return stuck_done and bool(running_trials(tune_dir))
    except json.JSONDecodeError:
        return False


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    results = tmp_path_factory.mktemp("tune")
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    out, err = results / "driver.out", results / "driver.err"  # files: a full pipe would stall the driver
    with open(out, "w") as stdout, open(err, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-m", "ryot_ray", "tune", "--space", "search_spaces/smoke.yaml",
                                   "--results-dir", str(results), "--name", "smoke"],
                                  cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True)
        deadline = time.monotonic() + 400
        while not time_to_interrupt(results / "smoke" / "tune"):
            assert driver.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "the stuck trial did not finish in time"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=300)
    before = finished_trials(results / "smoke" / "tune")
    resumed = ryot_ray("tune", "--resume", "smoke", "--results-dir", str(results))
    return {"results": results, "directory": results / "smoke",
            "interrupted": (driver.returncode, out.read_text(), err.read_text()),
            "finished_before": before, "resumed": resumed}


def test_ctrl_c_stops_and_resume_reruns_nothing_finished(experiment):
    code, _, err = experiment["interrupted"]
    resumed = experiment["resumed"]
    assert code == 130 and "ryot-ray tune --resume smoke" in err, err[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(cached)" in resumed.stdout  # the reference was not trained again
    after = finished_trials(experiment["directory"] / "tune")
    assert 2 <= len(experiment["finished_before"]) < 5 and len(after) == 5
    for trial, finished in experiment["finished_before"].items():
        assert after[trial] == finished, f"{trial} was run again"


def test_reports_agree_with_each_other_and_the_formula(experiment):
    directory = experiment["directory"]
    summary = json.loads((directory / "tune_summary.json").read_text())
    validation = json.loads((directory / "inference_validation_report.json").read_text())
    best = summary["best"]
    assert summary["validated_trial"] == summary["best_trial"] == best["trial_id"]
    assert validation["checkpoint"] == best["checkpoint"] and f"train-{best['trial_id']}" in best["checkpoint"]
    assert best["objective"] == max(t["objective"] for t in summary["trials"] if "objective" in t)
    reference = summary["reference"]["accuracy"]
    for trial in summary["trials"]:
        assert trial["objective"] == pytest.approx(
            objective(trial["speedup"], trial["inference_accuracy"], reference, summary["accuracy_floor"]))
        assert trial["objective_by_epoch"][-1] == pytest.approx(trial["objective"])
        assert 1 <= len(trial["objective_by_epoch"]) <= trial["epochs"]
    assert summary["objective_formula"] in (directory / "summary.md").read_text()
    assert best["trial_id"] in summary["pareto_front"] or best["inference_accuracy"] < max(
        t["inference_accuracy"] for t in summary["trials"])


def test_asha_stopped_the_trial_that_learned_nothing(experiment):
    summary = json.loads((experiment["directory"] / "tune_summary.json").read_text())
    stopped = [t for t in summary["trials"] if t["status"] == "stopped early"]
    assert summary["stopped_early"] == len(stopped) >= 1
    assert any(t["params"]["train.lr"] == 1e-7 and t["epochs"] == 1 for t in stopped)
    assert all(t["epochs"] == 2 for t in summary["trials"] if t["status"] == "completed")


def test_every_report_and_plot_is_written(experiment):
    directory = experiment["directory"]
    for name in ("tune_summary.json", "inference_validation_report.json", "optimization_analysis.json",
                 "summary.md", "pareto_front.png", "search_space.yaml", "config.yaml"):
        assert (directory / name).is_file(), name
    markdown = (directory / "summary.md").read_text()
    assert "# Inference validation" in markdown and "# Search" in markdown and "| stopped early |" in markdown
    overhead = json.loads((directory / "tune_summary.json").read_text())["overhead"]
    assert 0 < overhead["ray_fraction"] < 1 and overhead["worker_setup_s"] > 0
    assert overhead["training_s"] + overhead["evaluation_and_measurement_s"] < overhead["trial_time_s"]


def event_tags(path) -> set[str]:
    """The scalar tags of a TensorBoard event file (TFRecord: length, crc, event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, tags, offset = path.read_bytes(), set(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = Event.FromString(data[offset + 12:offset + 12 + length])
        tags |= {value.tag for value in event.summary.value}
        offset += 16 + length
    return tags


def test_every_trial_s_figures_are_in_tensorboard(experiment):
    tune_dir = experiment["directory"] / "tune"
    assert f"tensorboard --logdir {tune_dir}" in experiment["resumed"].stdout
    trials = sorted(tune_dir.glob("run_trial_*"))
    assert len(trials) == 5
    for trial in trials:
        tags = set().union(*(event_tags(path) for path in trial.glob("events.out.tfevents.*")))
        assert {f"ray/tune/{name}" for name in ("objective", "speedup", "inference_accuracy", "train_loss")} <= tags
