"""The per-epoch measurement a Tune trial ranks by, on tiny trained checkpoints."""

import dataclasses
import pytest
import torch

from ryot_ray.data.examples import evaluation_problems
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import exact_match, level_key
from ryot_ray.validate.trial import TrialMeasurement, reference_accuracy, spread_subset


def test_the_subset_reaches_every_level():
    from ryot_ray.config import DataConfig

    problems = evaluation_problems(DataConfig(families=["add", "reverse"], difficulties=[1, 2], eval_per_level=8),
                                   "validation", seed=0)
    chosen = spread_subset(problems, 8)
    assert len(chosen) == 8 and len({level_key(p) for p in chosen}) == 4
    assert spread_subset(problems, 1000) == problems


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint):
    model, tokenizer, config, _ = load_checkpoint(trained_checkpoint)
    return model, tokenizer, config, evaluation_problems(config.data, "validation", config.seed)


def test_greedy_accuracy_is_the_verifier_s_on_the_frozen_model(checkpoint):
    model, tokenizer, config, problems = checkpoint
    metrics = TrialMeasurement(problems=8)(model, tokenizer, config, problems)
    chosen = spread_subset(problems, 8)
    # the frozen ternary engine answers as the QAT model does through transformers
    assert metrics["inference_accuracy"] == exact_match(model, tokenizer, chosen, config.data.scratchpad, 8)["accuracy"]
    assert metrics["measured_problems"] == 8 and metrics["paths_per_problem"] == 1
    assert metrics["threads"] == torch.get_num_threads()
    assert metrics["speedup"] == pytest.approx(metrics["reference_answer_time_s"] / metrics["answer_time_s"])
    spread = metrics["speedup_per_problem"]
    assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"  # measured a copy; training goes on


def test_paths_follow_the_trial_s_inference_config(checkpoint):
    model, tokenizer, config, problems = checkpoint
    config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, rlvr_paths=3,
                                                                        adaptive_paths=False))
    metrics = TrialMeasurement(problems=4)(model, tokenizer, config, problems)
    assert metrics["paths_per_problem"] == 3


def test_reference_accuracy_is_its_greedy_exact_match_on_the_same_problems(trained_reference):
    model, tokenizer, config, _ = load_checkpoint(trained_reference)
    chosen = spread_subset(evaluation_problems(config.data, "validation", config.seed), 8)
    expected = exact_match(model, tokenizer, chosen, config.data.scratchpad, 8)["accuracy"]
    assert reference_accuracy(trained_reference, problems=8) == expected
