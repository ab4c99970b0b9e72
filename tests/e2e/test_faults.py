"""Faults a run must survive, or refuse by name, driven through the real CLI on an
embedded Ray cluster: a Train worker SIGKILLed mid-epoch, and a checkpoint damaged on
disk before a resume."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import train_workers
from tests.e2e.test_cli_train import REPO, ryot_ray

pytestmark = [pytest.mark.ray, pytest.mark.fault]


def test_a_killed_worker_is_replaced_and_the_run_finishes(tmp_path):
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    storage = tmp_path / "killed" / "ray" / "killed"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "ryot_ray", "train", "--config", "configs/smoke.yaml",
                                   "--set", "train.epochs=4", "--set", "data.train_per_level=1000",
                                   "--results-dir", str(tmp_path), "--name", "killed"],
                                  cwd=REPO, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 180
        while not list(storage.glob("checkpoint_2*/state.json")):  # epoch 1's checkpoint is written whole
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)  # the Train controller registers it within its 0.1 s poll; kill inside epoch 2
        (worker,) = train_workers(psutil.Process(driver.pid).children(recursive=True))  # of this run's own Ray
        worker.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=300) == 0, (tmp_path / "err").read_text()[-3000:]
    report = json.loads((tmp_path / "killed" / "training_metrics_report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3, 4]
    assert len(report["worker_restarts"]) == 1 and report["worker_restarts"][0]["epoch"] >= 1
    assert "worker group restarted 1 time(s)" in (tmp_path / "out").read_text()


def test_a_damaged_checkpoint_is_named_and_never_replaced_by_fresh_weights(tmp_path):
    done = ryot_ray("train", "--config", "configs/smoke.yaml", "--set", "train.epochs=1",
                    "--results-dir", str(tmp_path), "--name", "damaged")
    assert done.returncode == 0, done.stderr[-3000:]
    (latest,) = (tmp_path / "damaged" / "ray" / "damaged").glob("checkpoint_2*")
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resumed = ryot_ray("train", "--resume", "damaged", "--set", "train.epochs=2", "--set", "train.max_failures=0",
                       "--results-dir", str(tmp_path))  # no retries: each would refuse the same file
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    ours = [line for line in resumed.stderr.splitlines() if line.startswith("ryot-ray: ")]  # beside Ray's logs
    assert len(ours) == 1 and ours[0].startswith(f"ryot-ray: error: {weights}: truncated or corrupted"), ours
    report = json.loads((tmp_path / "damaged" / "training_metrics_report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1]  # the first run's report is kept as it was
