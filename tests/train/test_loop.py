"""The training loop run in this process (Ray Train local mode: no cluster, same APIs)."""

import math

from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from ryot_ray.config import Config
from ryot_ray.train.checkpoint import TrainingState
from ryot_ray.train.loop import EpochStats, _flag_anomalies, build_optimizer, train_loop_per_worker, worker_threads


def run_in_process(config: Config, loop=train_loop_per_worker) -> dict:
    trainer = TorchTrainer(loop, train_loop_config=config.to_dict(), scaling_config=ScalingConfig(num_workers=0))
    result = trainer.fit()
    assert result.return_value == result.metrics  # the loop returns its last report (a Tune trial reports it)
    return result.metrics


def test_epoch_metrics_are_added_after_each_evaluation(smoke_config):
    from functools import partial

    calls = []

    def epoch_metrics(model, tokenizer, config, problems):
        calls.append((model.training, len(problems)))
        return {"problems_seen_by_hook": len(problems)}

    smoke_config.train.epochs = 2
    metrics = run_in_process(smoke_config, partial(train_loop_per_worker, epoch_metrics=epoch_metrics))
    assert calls == [(False, metrics["problems"])] * 2  # after each epoch, on the model in eval mode
    assert metrics["problems_seen_by_hook"] == metrics["problems"] and metrics["measure_time_s"] > 0


def test_a_run_without_a_checkpoint_starts_from_the_given_weights(ray_cluster, smoke_config, tokenizer):
    from dataclasses import replace
    from functools import partial

    import torch

    from ryot_ray.model.build import build_model

    torch.manual_seed(123)  # not the run's seed: its own fresh model would differ
    start = build_model(replace(smoke_config.model, quantization="none"), tokenizer).state_dict()
    smoke_config.train.epochs, smoke_config.train.lr, smoke_config.train.lr_stage2 = 1, 0.0, 0.0  # no update
    trained = {}

    def keep_weights(model, tokenizer, config, problems):
        trained.update(model.state_dict())
        return {}

    run_in_process(smoke_config, partial(train_loop_per_worker, epoch_metrics=keep_weights,
                                         start_weights=ray_cluster.put(start)))
    for name, tensor in start.items():
        assert torch.equal(trained[name], tensor), name


def test_loop_learns_and_reports_every_metric(smoke_config):
    smoke_config.train.epochs = 3
    smoke_config.data.families = ["reverse"]
    metrics = run_in_process(smoke_config)
    assert metrics["epoch"] == 3 and metrics["status"] == "ok"
    assert metrics["step"] == 3 * math.ceil(200 / 16)
    assert metrics["train_loss"] < 0.75 * math.log(101)  # ln(vocabulary) at random init
    assert metrics["val_loss"] < metrics["train_loss"] + 0.5
    for key in ("tokens_per_s", "step_time_mean_s", "step_time_max_s", "peak_rss_mb", "epoch_time_s"):
        assert metrics[key] > 0, key
    assert metrics["step_time_max_s"] >= metrics["step_time_mean_s"]
    assert set(metrics["accuracy_by_level"]) == {"reverse:1"}
    assert metrics["test_problems"] > 0 and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_compression_knobs_report_accuracy_per_width_and_saved_activations(smoke_config):
    smoke_config.train.epochs = 1
    smoke_config.data.families = ["reverse"]
    smoke_config.model.mrl_depth = 2
    smoke_config.model.sparse_k = 0.5
    smoke_config.model.activation_compression = "int8"
    metrics = run_in_process(smoke_config)
    assert set(metrics["accuracy_by_width"]) == {"128", "64"}  # tiny: FFN of 128
    assert metrics["accuracy_by_width"]["128"] == metrics["accuracy"]
    assert set(metrics["test_accuracy_by_width"]) == {"128", "64"}
    compression = metrics["activation_compression"]
    assert compression["saved_activations"] == "int8"
    assert 3.5 < compression["overall"]["compression_ratio"] < 4.0  # int8 codes plus a scale per token
    assert 0 < compression["overall"]["reconstruction_error"] < 0.05
    assert len(compression["layers"]) == 2 * 7


def test_non_finite_loss_stops_with_diverged_status(smoke_config):
    smoke_config.model.quantization = "none"
    smoke_config.train.lr = 1e30
    smoke_config.train.warmup_steps = 0
    smoke_config.train.grad_clip = 0.0
    metrics = run_in_process(smoke_config)
    assert metrics["status"] == "diverged"
    assert metrics["epoch"] == 1 and metrics["step"] < math.ceil(200 / 16)
    assert math.isnan(metrics["train_loss"]) or not math.isfinite(metrics["train_loss"])


def test_anomalies_flag_spikes_against_recent_median():
    state, stats = TrainingState(), EpochStats()
    stats.losses = [1.0] * 20
    stats.step_times = [0.1] * 20
    _flag_anomalies(state, stats, loss=1.5, seconds=0.1, factor=3.0)
    assert state.anomalies == []
    _flag_anomalies(state, stats, loss=4.0, seconds=0.5, factor=3.0)
    assert [a["kind"] for a in state.anomalies] == ["loss_spike", "slow_step"]
    assert state.anomalies[0]["median"] == 1.0


def test_threads_follow_the_cpus_ray_assigned(monkeypatch, smoke_config):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_threads(smoke_config) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    smoke_config.train.cpus_per_worker = 2
    assert worker_threads(smoke_config) == 2


def test_weight_decay_only_on_matrices(smoke_config, tokenizer):
    from ryot_ray.model.build import build_model

    model = build_model(smoke_config.model, tokenizer)
    decay, other = build_optimizer(model, smoke_config).param_groups
    assert decay["decay"] and not other["decay"]
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in other["params"])
    assert sum(p.numel() for g in (decay, other) for p in g["params"]) == sum(
        p.numel() for p in model.parameters())


def test_a_short_last_accumulation_window_is_averaged_over_its_own_batches(smoke_config, tokenizer):
    """Three batches with grad_accum 2: the last step has one batch and must count as one."""
    import torch

    from ryot_ray.data.examples import collate, encode_problem
    from ryot_ray.data.tasks import generate
    from ryot_ray.model.build import build_model
    from ryot_ray.train.loop import train_epoch

    problems = generate("reverse", 1, "train", 12, seed=0)
    batches = [collate([encode_problem(tokenizer, p, True) for p in problems[i:i + 4]], tokenizer.pad_token_id)
               for i in (0, 4, 8)]

    def fresh():
        torch.manual_seed(0)
        model = build_model(smoke_config.model, tokenizer)
        return model, build_optimizer(model, smoke_config), TrainingState()

    smoke_config.train.grad_accum = 2
    together, optimizer, state = fresh()
    whole = train_epoch(together, batches, optimizer, state, 2, smoke_config)

    apart, optimizer, state = fresh()
    first = train_epoch(apart, batches[:2], optimizer, state, 2, smoke_config)
    smoke_config.train.grad_accum = 1
    last = train_epoch(apart, batches[2:], optimizer, state, 2, smoke_config)

    assert whole.losses == first.losses + last.losses
    for a, b in zip(together.parameters(), apart.parameters()):
        assert torch.equal(a, b)


def test_ray_train_s_per_report_dump_is_quieted():
    import logging

    from ryot_ray.train.loop import REPORT_LOGGER_SUFFIX, quiet_report_logging

    logger = logging.getLogger(f"/somewhere/site-packages/{REPORT_LOGGER_SUFFIX}")
    logger.setLevel(logging.INFO)
    quiet_report_logging()
    assert logger.level == logging.WARNING
