"""How a search space becomes Tune's param space, scheduler and search, and how the
reference is chosen and cached. (The search itself runs in tests/e2e/test_cli_tune.py.)"""

import json

import pytest

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from ryot_ray.tune.space import Knob, load_space
from ryot_ray.tune.tuner import (REFERENCE_RECORD, Measurement, _scheduler, _search_algorithm, reference_config,
                                 reference_dir, train_reference, tune_domain)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_each_kind_becomes_its_tune_domain():
    assert tune_domain(Knob("train.lr", "grid", (1e-3, 2e-3))) == {"grid_search": [1e-3, 2e-3]}
    assert tune_domain(Knob("model.sparse_k", "choice", (1.0, 0.5))).categories == [1.0, 0.5]
    loguniform = tune_domain(Knob("train.lr", "loguniform", (1e-4, 1e-2)))
    assert (loguniform.lower, loguniform.upper) == (1e-4, 1e-2) and "LogUniform" in str(loguniform.sampler)
    randint = tune_domain(Knob("inference.rlvr_paths", "randint", (1, 5)))
    assert (randint.lower, randint.upper) == (1, 5)


def test_the_reference_is_the_base_in_fp32_for_max_t_epochs(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("scheduler: {max_t: 3}\nspace:\n  sparse_k: {choice: [0.5, 0.25]}\n  mrl_depth: 2\n"
                    "  data.train_per_level: 50\n")
    space = load_space(path, REPO / "configs/smoke.yaml")
    reference = reference_config(space)
    assert reference.model.quantization == "none" and reference.model.mrl_depth == 1
    assert reference.model.sparse_k == 1.0 and reference.train.epochs == 3
    assert reference.data.train_per_level == 50  # the same data as every trial


def test_a_cached_reference_is_reused_without_training(tmp_path):
    space = load_space(REPO / "search_spaces/smoke.yaml")
    directory, digest = reference_dir(reference_config(space), tmp_path)
    directory.mkdir(parents=True)
    (directory / REFERENCE_RECORD.format(problems=space.measure_problems)).write_text(
        json.dumps({"checkpoint": "somewhere", "accuracy": 0.25}))

    def never(*args):
        raise AssertionError("measured again")

    reference = train_reference(space, tmp_path, Measurement(never, never))
    assert (reference.accuracy, reference.config_hash, reference.trained_now) == (0.25, digest, False)
    smaller = load_space(REPO / "search_spaces/smoke.yaml")
    smaller.base.data.train_per_level = 10
    assert reference_dir(reference_config(smaller), tmp_path)[1] != digest  # another config, another reference


def test_other_measured_problems_measure_the_trained_reference_again(tmp_path):
    from ryot_ray.train.run import REPORT_FILE

    space = load_space(REPO / "search_spaces/smoke.yaml")
    directory, _ = reference_dir(reference_config(space), tmp_path)
    directory.mkdir(parents=True)
    (directory / REPORT_FILE).write_text(json.dumps({"status": "finished", "checkpoint": str(tmp_path / "ckpt")}))
    (directory / REFERENCE_RECORD.format(problems=space.measure_problems + 1)).write_text(
        json.dumps({"checkpoint": "x", "accuracy": 0.9}))
    measured = []
    reference = train_reference(space, tmp_path, Measurement(None, lambda path: measured.append(path) or 0.5))
    assert measured == [tmp_path / "ckpt"] and reference.accuracy == 0.5 and not reference.trained_now
    assert (directory / REFERENCE_RECORD.format(problems=space.measure_problems)).is_file()


def test_scheduler_and_search_follow_the_space():
    space = load_space(REPO / "search_spaces/smoke.yaml")
    asha = _scheduler(space)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 2
    assert not asha._stop_last_trials  # a trial at max_t ends by itself: its Train run FINISHED
    space.scheduler.name, space.search = "fifo", "optuna"
    space.knobs = [k for k in space.knobs if k.kind != "grid"]
    assert isinstance(_scheduler(space), FIFOScheduler)
    limited = _search_algorithm(space, concurrent=3)
    assert isinstance(limited.searcher, OptunaSearch) and limited.max_concurrent == 3
    space.search = "random"
    assert _search_algorithm(space, concurrent=2).max_concurrent == 2


@pytest.mark.ray
def test_placement_groups_left_by_this_job_are_released(ray_cluster):
    from ray.util.placement_group import placement_group, placement_group_table

    from ryot_ray.tune.tuner import release_placement_groups

    left = placement_group([{"CPU": 1}])
    ray_cluster.get(left.ready())
    assert ray_cluster.available_resources().get("CPU", 0) == 1
    job = ray_cluster.get_runtime_context().get_job_id()
    assert release_placement_groups(job) == 1
    assert placement_group_table()[left.id.hex()]["state"] == "REMOVED"
    assert release_placement_groups(job) == 0


EARLIER_DRIVER = """
import ray
from ray.util.placement_group import placement_group
ray.init(address="{address}")
left = placement_group([{{"CPU": 1}}], lifetime="detached")  # outlives this driver, as a killed search's did
ray.get(left.ready())
print(ray.get_runtime_context().get_job_id(), left.id.hex())
"""


@pytest.mark.ray
def test_a_resumed_search_releases_what_its_earlier_driver_left_and_nothing_else(ray_cluster, tmp_path):
    import json
    import subprocess
    import sys

    from ray.util.placement_group import placement_group, placement_group_table

    from ryot_ray.tune.tuner import DRIVERS_FILE, release_earlier_drivers

    address = ray_cluster.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-c", EARLIER_DRIVER.format(address=address)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    earlier_job, earlier_group = done.stdout.split()[-2:]
    mine = placement_group([{"CPU": 1}])  # the current driver's own stays
    ray_cluster.get(mine.ready())
    assert release_earlier_drivers(tmp_path) == 0  # a new search: nothing earlier
    (driver,) = json.loads((tmp_path / DRIVERS_FILE).read_text())
    assert driver["job"] == ray_cluster.get_runtime_context().get_job_id()
    another_cluster = {"head": "0" * 56, "job": earlier_job}
    (tmp_path / DRIVERS_FILE).write_text(json.dumps([another_cluster]))
    assert release_earlier_drivers(tmp_path) == 0  # the same job id on another cluster is not ours
    (tmp_path / DRIVERS_FILE).write_text(json.dumps([{**driver, "job": earlier_job}]))
    assert release_earlier_drivers(tmp_path) == 1
    assert placement_group_table()[earlier_group]["state"] == "REMOVED"
    assert placement_group_table()[mine.id.hex()]["state"] == "CREATED"
    assert json.loads((tmp_path / DRIVERS_FILE).read_text()) == [driver]
    assert release_earlier_drivers(tmp_path) == 0  # its own are never released this way
    ray_cluster.util.remove_placement_group(mine)


def test_trials_start_from_the_trained_reference_when_the_space_says_so(ray_cluster, tmp_path):
    """A trial that keeps the reference's fp32 layers and never updates them answers
    exactly as the reference does; from scratch it would answer nothing."""
    from ryot_ray.cli import _measurement
    from ryot_ray.tune.tuner import run_search

    path = tmp_path / "space.yaml"
    path.write_text("samples: 1\nscheduler: {name: fifo, max_t: 2}\nmeasure_problems: 16\nstart_from: reference\n"
                    "space:\n  data.train_per_level: 600\n  model.quantization: {grid: [none]}\n"
                    "  train.lr: {grid: [0.0]}\n  train.lr_stage2: {grid: [0.0]}\n")
    space = load_space(path, REPO / "configs/smoke.yaml")
    measurement = _measurement(space)
    reference = train_reference(space, tmp_path / "references", measurement)
    (result,) = run_search(space, tmp_path / "search", reference, measurement)
    assert result.metrics["accuracy_retention"] == pytest.approx(1.0)
