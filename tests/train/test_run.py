"""Ray Train on a real local cluster: two workers, DDP over gloo, checkpoints."""

import json

import pytest
import torch

from ryot_ray.cli import main
from ryot_ray.config import load_config
from ryot_ray.data.examples import encode_problem, evaluation_problems
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import exact_match, mean_loss
from ryot_ray.memory import training_allocator_env
from ryot_ray.train.run import REPORT_FILE, run_training, torch_trainer

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_worker_config():
    from pathlib import Path

    from ryot_ray.config import load_config

    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    return load_config(smoke, ["train.workers=2", "train.epochs=3", "data.families=[reverse, add]"])


@pytest.fixture(scope="module")
def first_run(ray_cluster, two_worker_config, tmp_path_factory):
    return run_training(two_worker_config, tmp_path_factory.mktemp("results") / "first")


def test_two_workers_lower_the_loss_and_write_the_report(first_run):
    report = json.loads(first_run.report_path.read_text())
    assert first_run.status == "finished" and report["status"] == "finished"
    losses = [epoch["train_loss"] for epoch in report["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5
    assert report["workers"] == 2
    assert report["machine"]["cpu"]["logical_cpus"] >= 1 and report["machine"]["torch_threads"] == 1
    assert set(report["test"]) == {"test_accuracy", "test_accuracy_by_family", "test_accuracy_by_level", "test_problems"}
    assert first_run.report_path.name == REPORT_FILE


def test_checkpoint_reloads_to_the_reported_evaluation(first_run, tokenizer):
    model, tokenizer, config, state = load_checkpoint(first_run.checkpoint)
    last = state.history[-1]
    assert state.epoch == 3 and state.status == "finished"
    problems = evaluation_problems(config.data, "validation", config.seed)
    with torch.no_grad():
        again = exact_match(model, tokenizer, problems, config.data.scratchpad, config.eval.batch_size)
        loss = mean_loss(model, [encode_problem(tokenizer, p, True) for p in problems],
                         tokenizer.pad_token_id, config.eval.batch_size)
    assert again["accuracy_by_level"] == last["accuracy_by_level"]
    assert loss == pytest.approx(last["val_loss"], rel=1e-5)


def test_same_config_seed_and_workers_give_the_same_losses(first_run, two_worker_config, tmp_path):
    second = run_training(two_worker_config, tmp_path / "second")
    keys = ("train_loss", "val_loss", "accuracy", "test_accuracy")
    first_epochs = [{k: e.get(k) for k in keys} for e in first_run.report["epochs"]]
    assert [{k: e.get(k) for k in keys} for e in second.report["epochs"]] == first_epochs


def test_info_lists_the_cluster(capsys, ray_cluster):
    assert main(["info"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["ray_cluster"]["total"]["CPU"] == 2.0 and facts["ray_cluster"]["nodes"] == 1


def test_the_run_is_in_ray_train_s_state_by_the_experiment_s_name(first_run):
    """What the dashboard's Train API (`/api/train/v2/runs/v1`) reads: Train's state actor."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    runs = [run for run in ray.get(get_state_actor().get_train_runs.remote()).values() if run.name == "first"]
    assert len(runs) == 1 and runs[0].status == "FINISHED"
    (attempt,) = ray.get(get_state_actor().get_train_run_attempts.remote())[runs[0].id].values()
    assert len(attempt.workers) == 2


def test_train_workers_get_the_allocator_settings_of_this_machine():
    trainer = torch_trainer(load_config("configs/smoke.yaml"), lambda config: None, "allocator", "/tmp/unused")
    assert trainer.run_config.worker_runtime_env == {"env_vars": training_allocator_env()}
