"""`ryot-ray bench tune`: the same tiny space under ASHA and under FIFO, on a real local Ray."""

import json

import pytest

from tests.e2e.test_cli_train import ryot_ray


def _run(best_objective: float, best_spread: float) -> dict:
    return {"best_objective": best_objective, "best_spread": best_spread}


def test_asha_reaches_fifo_best_when_its_best_objective_is_fifo_s_within_the_noise():
    from ryot_ray.bench.tune import reached_fifo_best

    assert reached_fifo_best(_run(2.0, 0.01), _run(2.0, 0.01))
    assert reached_fifo_best(_run(1.95, 0.01), _run(2.0, 0.03))  # 2.5 % below, 3 % noise
    assert not reached_fifo_best(_run(1.95, 0.01), _run(2.0, 0.02))  # 2.5 % below, 2 % noise
    assert reached_fifo_best(_run(-0.21, 0.05), _run(-0.2, 0.01))  # below the floor: objectives are negative
    assert not reached_fifo_best(_run(-0.3, 0.05), _run(-0.2, 0.01))


# The stuck learning rate starts third, when a trial has passed the first rung: ASHA stops it.
SPACE = """config: {config}
samples: 1
scheduler: {{name: asha, max_t: 2, grace_period: 1, reduction_factor: 2}}
accuracy_floor: 0.5
measure_problems: 8
space:
  data.train_per_level: 600
  train.lr: {{grid: [3.0e-3, 2.0e-3, 1.0e-7]}}
"""


@pytest.mark.ray
def test_asha_stops_what_fifo_runs_to_the_end_on_the_same_trials(tmp_path):
    from tests.conftest import SMOKE

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(config=SMOKE))
    done = ryot_ray("bench", "tune", "--space", str(space), "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next((tmp_path / "bench").glob("tune-*.json")).read_text())
    (asha,), (fifo,) = result["runs"]["asha"], result["runs"]["fifo"]
    assert [t["params"] for t in asha["trials"]] == [t["params"] for t in fifo["trials"]]
    assert fifo["epochs"] == 3 * 2 and fifo["stopped_early"] == 0
    stuck = next(t for t in asha["trials"] if t["params"]["train.lr"] == 1e-7)
    assert stuck["status"] == "stopped early" and stuck["epochs"] == 1 and asha["epochs"] < fifo["epochs"]
    assert len(result["trial_time_saved"]["samples"]) == 1
    assert "fifo / asha trial time" in done.stdout and "goal (FIFO's best reached" in done.stdout
    assert asha["kernel_paths"] == fifo["kernel_paths"] and "measured with kernel path(s): native" in done.stdout
