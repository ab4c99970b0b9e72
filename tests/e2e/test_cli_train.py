"""`ryot-ray train` driven as a user would: a subprocess, an embedded Ray, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


def ryot_ray(*args, cwd=REPO):
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    return subprocess.run([sys.executable, "-m", "ryot_ray", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_smoke_then_resume(tmp_path):
    done = ryot_ray("train", "--config", "configs/smoke.yaml", "--results-dir", str(tmp_path), "--name", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray dashboard: http://127.0.0.1:" in done.stdout and "`ray get-auth-token` prints it" in done.stdout
    assert "epoch 2: train loss" in done.stdout and "test exact match" in done.stdout
    live = [line for line in done.stderr.splitlines() if "RayTrainWorker" in line]  # as it happened, from rank 0
    assert any("epoch 1: step " in line for line in live) and any("epoch 2: train loss" in line for line in live)
    report = json.loads((tmp_path / "smoke" / "training_metrics_report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert (tmp_path / "smoke" / "checkpoint" / "model.safetensors").is_file()

    resumed = ryot_ray("train", "--resume", "smoke", "--set", "train.epochs=3", "--results-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "smoke" / "training_metrics_report.json").read_text())
    assert [e["epoch"] for e in again["epochs"]] == [1, 2, 3]
    assert again["epochs"][:2] == report["epochs"]  # kept, not retrained
    assert again["epochs"][2]["step"] > report["epochs"][1]["step"]


def test_bad_config_exits_2_before_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: enormous\n")
    done = ryot_ray("train", "--config", str(bad), "--results-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"ryot-ray: error: {bad}: model.preset: 'enormous' is not one of tiny, small, base, 1b"
    ]
    assert "dashboard" not in done.stdout
