import copy

import pytest
import torch

from ryot_ray.config import ModelConfig
from ryot_ray.data.examples import evaluation_problems
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.kernels.frozen import freeze
from ryot_ray.model.build import build_model
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import greedy_completions


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)


def test_greedy_matches_transformers_generate_with_mixed_lengths(trained):
    model, tokenizer, config, _ = trained
    prompts = [p.prompt for p in evaluation_problems(config.data, "validation", config.seed)][:6]
    prompts[1] = "rev ab|"  # a shorter prompt: left padding in the batch
    engine = Engine(model, tokenizer, max_batch=8, max_length=64)
    ours = engine.generate(prompts, SamplingConfig(max_new_tokens=8)).texts
    assert ours == greedy_completions(model, tokenizer, prompts, 8, 8)
    assert torch.isfinite(engine.keys).all() and torch.isfinite(engine.values).all()


def test_same_path_for_reference_and_frozen_models(trained, tokenizer):
    model, tokenizer, config, _ = trained
    torch.manual_seed(0)
    reference = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    prompts = ["rev abc|", "rev qwe|"]
    for candidate in (reference, freeze(copy.deepcopy(model)), model):
        engine = Engine(candidate, tokenizer, max_batch=2, max_length=32)
        got = engine.generate(prompts, SamplingConfig(max_new_tokens=6)).texts
        assert got == greedy_completions(candidate, tokenizer, prompts, 6, 2)


def test_timings_and_token_counts(trained):
    model, tokenizer, *_ = trained
    generation = Engine(model, tokenizer).generate(["rev abc|"], SamplingConfig(max_new_tokens=5))
    assert generation.ttft_s > 0
    assert len(generation.decode_step_s) == len(generation.token_ids[0]) - 1
    assert generation.prompt_tokens == len("rev abc|") + 1


def test_sampling_is_seeded_and_top_p_one_token_is_greedy(trained):
    model, tokenizer, *_ = trained
    engine = Engine(model, tokenizer, max_batch=4, max_length=32)
    prompts = ["rev abc|"] * 4
    hot = SamplingConfig(max_new_tokens=6, temperature=1.5, seed=7)
    assert engine.generate(prompts, hot).texts == engine.generate(prompts, hot).texts
    narrow = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)
    greedy = engine.generate(prompts, SamplingConfig(max_new_tokens=6)).texts
    assert engine.generate(prompts, narrow).texts == greedy


def test_stop_strings_cut_the_text(tokenizer):
    torch.manual_seed(1)
    untrained = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    engine = Engine(untrained, tokenizer)
    full = engine.generate(["rev abc|"], SamplingConfig(max_new_tokens=8)).texts[0]
    assert len(full) >= 4
    stopped = engine.generate(["rev abc|"], SamplingConfig(max_new_tokens=8, stop=(full[3],)))
    assert stopped.texts[0] == full[: full.index(full[3])]
    assert len(stopped.token_ids[0]) <= 4


def test_bad_requests(trained):
    model, tokenizer, *_ = trained
    engine = Engine(model, tokenizer, max_batch=1, max_length=16)
    with pytest.raises(ValueError, match="takes 1 to 1"):
        engine.generate(["a", "b"])
    with pytest.raises(ValueError, match="exceed the cache length"):
        engine.generate(["rev abcdefgh|"], SamplingConfig(max_new_tokens=8))


@pytest.mark.parametrize("frozen", [False, True])
def test_paths_share_one_prefill_and_equal_separate_runs(trained, frozen):
    model, tokenizer, *_ = trained
    if frozen:
        model = freeze(copy.deepcopy(model))
    engine = Engine(model, tokenizer, max_batch=5, max_length=40)
    hot = SamplingConfig(max_new_tokens=10, temperature=1.3, seed=11)
    paths = engine.generate_paths("rev abcd|", 5, hot)
    separate = [engine.generate(["rev abcd|"], SamplingConfig(max_new_tokens=10, temperature=1.3, seed=11 + i))
                for i in range(5)]
    assert paths.token_ids == [run.token_ids[0] for run in separate]
    assert len(set(paths.texts)) > 1  # the paths differ from each other
    with pytest.raises(ValueError, match="takes 1 to 5"):
        engine.generate_paths("rev abcd|", 6, hot)
