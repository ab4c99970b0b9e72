"""The per-epoch measurement a Tune trial ranks by, on tiny trained checkpoints."""

import dataclasses

import pytest
import torch
from native_marks import needs_native

from ryot_ray.data.examples import evaluation_problems
from ryot_ray.stats import median_uncertainty
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import exact_match, level_key
from ryot_ray.validate.deployment import decode_step_times, forced_work_speedups
from ryot_ray.validate.trial import TrialMeasurement, reference_accuracy, speed_rounds, spread_subset


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
    metrics = TrialMeasurement(problems=8, budget_s=1.0)(model, tokenizer, config, problems)
    chosen = spread_subset(problems, 8)
    # the frozen ternary engine answers as the QAT model does through transformers
    assert metrics["inference_accuracy"] == exact_match(model, tokenizer, chosen, config.data.scratchpad, 8)["accuracy"]
    assert metrics["measured_problems"] == 8 and metrics["paths_per_problem"] == 1
    assert metrics["threads"] == torch.get_num_threads()
    rounds = metrics["speedup_rounds"]
    assert metrics["speedup"] == rounds["median"] and len(rounds["samples"]) >= 3
    assert metrics["speedup_spread"] == pytest.approx(median_uncertainty(rounds["samples"]))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"  # measured a copy; training goes on


class CountingEngine:
    """Records the forced work it is given."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append((len(prompts), sampling.max_new_tokens, sampling.ignore_eos))

    def generate_paths(self, prompt, paths, sampling):
        self.calls.append((paths, sampling.max_new_tokens, sampling.ignore_eos))


def test_both_models_do_the_same_forced_work_and_rounds_stop_once_they_agree():
    optimized, reference = CountingEngine(), CountingEngine()
    work = [("p1", 7, 1), ("p2", 12, 3)]
    rounds = speed_rounds(optimized, reference, work, spread_goal=10.0, budget_s=60, round_s=0.0)
    assert len(rounds) == 3  # settled as soon as the minimum of rounds was reached
    assert optimized.calls[1:] == [(1, 7, True), (3, 12, True)] * 3  # its own paths, the correct length
    assert reference.calls[1:] == [(1, 7, True), (1, 12, True)] * 3  # one greedy path, the same lengths
    assert len(speed_rounds(optimized, reference, work, spread_goal=0.0, budget_s=0.0, round_s=0.0)) == 1  # no time


def test_paths_follow_the_trial_s_inference_config(checkpoint):
    model, tokenizer, config, problems = checkpoint
    config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, rlvr_paths=3,
                                                                        adaptive_paths=False))
    metrics = TrialMeasurement(problems=4, budget_s=0.5)(model, tokenizer, config, problems)
    assert metrics["paths_per_problem"] == 3


def test_forced_work_is_priced_by_the_step_times_of_its_paths():
    times = {"reference": [0.010, 0.012], "optimized": {1: [0.002, 0.003], 2: [0.004, 0.004]}}
    work = [(10, 1), (30, 2)]  # (tokens, paths)
    assert forced_work_speedups(times, work) == pytest.approx(
        [40 * 0.010 / (10 * 0.002 + 30 * 0.004), 40 * 0.012 / (10 * 0.003 + 30 * 0.004)])


@needs_native
def test_speed_at_a_preset_prices_the_trial_s_work_at_that_shape_once(checkpoint):
    model, tokenizer, config, problems = checkpoint
    config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, rlvr_paths=2,
                                                                        adaptive_paths=False))
    metrics = TrialMeasurement(problems=4, budget_s=0.5, speed_at="tiny")(model, tokenizer, config, problems)
    times = decode_step_times(config, "tiny", torch.get_num_threads(), 0.05, 0.5)  # the trial's, cached
    assert set(times["optimized"]) == {1, 2} and len(times["reference"]) >= 1
    assert metrics["speed_at"] == "tiny" and metrics["paths_per_problem"] == 2
    assert metrics["speedup_rounds"]["samples"] == pytest.approx(
        forced_work_speedups(times, [(tokens, 2) for tokens in _correct_lengths(tokenizer, config, problems, 4)]))


def _correct_lengths(tokenizer, config, problems, count):
    from ryot_ray.validate.validator import completion_tokens

    return [completion_tokens(tokenizer, p, config.data.scratchpad) + 1 for p in spread_subset(problems, count)]


def test_reference_accuracy_is_its_greedy_exact_match_on_the_same_problems(trained_reference):
    model, tokenizer, config, _ = load_checkpoint(trained_reference)
    chosen = spread_subset(evaluation_problems(config.data, "validation", config.seed), 8)
    expected = exact_match(model, tokenizer, chosen, config.data.scratchpad, 8)["accuracy"]
    assert reference_accuracy(trained_reference, problems=8) == expected
