"""A node leaving mid-search: two trials run from a driver joined with `--address`, one
on each node, both starting from the reference's weights (the second node reads them
from the driver's object store); once both have checkpointed their first epoch, the
second node is stopped (its raylet and every process it started, SIGKILL). Its trial
starts again on the head from that checkpoint, and the experiment completes."""

import json
import subprocess
import sys
import time

import pytest

from tests.cluster.conftest import REPO, processes_of
from tests.conftest import train_workers

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

SPACE = """config: {repo}/configs/smoke.yaml
samples: 1
scheduler: {{name: fifo, max_t: 3}}
accuracy_floor: 0.5
measure_problems: 8
start_from: reference
space:
  data.train_per_level: 1500
  train.lr: {{grid: [3.0e-3, 2.0e-3]}}
"""


def test_a_search_survives_its_second_node_leaving(cluster, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(repo=REPO))
    results = tmp_path / "results"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "ryot_ray", "tune", "--space", str(space),
                                   "--address", cluster.address, "--results-dir", str(results), "--name", "lost"],
                                  cwd=REPO, env=cluster.env, stdout=out, stderr=err)
        deadline = time.monotonic() + 300
        runs = results / "lost" / "train-runs"
        while not (train_workers(processes_of(cluster.temp_dirs["node_second"]))  # both trials past epoch 1
                   and len([run for run in runs.glob("train-*") if list(run.glob("checkpoint_2*/state.json"))]) == 2):
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)  # registered by the Train controllers
        cluster.stop_node("node_second")
        assert driver.wait(timeout=600) == 0, (tmp_path / "err").read_text()[-3000:]
    summary = json.loads((results / "lost" / "tune_summary.json").read_text())
    assert [trial["status"] for trial in summary["trials"]] == ["completed", "completed"], summary["trials"]
    # the trial whose worker was on the lost node restarted once, from its checkpoint (the
    # other one too, if its driver or Train controller happened to live there)
    restarts = [trial["restarts"] for trial in summary["trials"]]
    assert 1 <= sum(restarts) and max(restarts) == 1, restarts
    assert (results / "lost" / "inference_validation_report.json").is_file()
