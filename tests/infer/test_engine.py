"""Generation over the model step: the native step and the model's own forward (the
fallback) answer as `transformers` `generate()` does."""

import pytest
import torch

from ryot_ray.config import InferenceConfig, ModelConfig
from ryot_ray.data.examples import evaluation_problems
from ryot_ray.infer.engine import Engine, SamplingConfig, TextCodec
from ryot_ray.infer.engines import model_engine
from ryot_ray.infer.fallback import TorchStep
from ryot_ray.infer.freeze import tokenizer_record
from ryot_ray.model.build import build_model
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import greedy_completions
from native_marks import needs_native


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)


@pytest.fixture(scope="module")
def reference(trained_reference):
    return load_checkpoint(trained_reference)


def fallback(model, tokenizer, slots=8, max_length=64) -> Engine:
    return Engine(TorchStep(model, slots, max_length), TextCodec.from_record(tokenizer_record(tokenizer)))


def native(model, tokenizer, slots=8, max_length=64, **inference) -> Engine:
    return model_engine(model, tokenizer, InferenceConfig(**inference), slots, max_length)


def prompts_of(config, count=6):
    prompts = [p.prompt for p in evaluation_problems(config.data, "validation", config.seed)][:count]
    prompts[1] = "rev ab|"  # a shorter prompt in the batch
    return prompts


@needs_native
@pytest.mark.parametrize("which", ["trained", "reference"])
def test_native_greedy_matches_generate_batch_1_and_4(which, request):
    model, tokenizer, config, _ = request.getfixturevalue(which)
    prompts = prompts_of(config, 8)
    want = greedy_completions(model, tokenizer, prompts, 10, 8)
    engine = native(model, tokenizer)
    one = [engine.generate([p], SamplingConfig(max_new_tokens=10)).texts[0] for p in prompts]
    four = engine.generate(prompts[:4], SamplingConfig(max_new_tokens=10)).texts
    four += engine.generate(prompts[4:], SamplingConfig(max_new_tokens=10)).texts
    assert one == want and four == want


def test_fallback_greedy_matches_generate_with_mixed_lengths(trained):
    model, tokenizer, config, _ = trained
    prompts = prompts_of(config)
    got = fallback(model, tokenizer).generate(prompts, SamplingConfig(max_new_tokens=8)).texts
    assert got == greedy_completions(model, tokenizer, prompts, 8, 8)


@needs_native
def test_native_and_fallback_agree_on_a_nested_sparse_model(trained_nested_sparse):
    model, tokenizer, config, _ = load_checkpoint(trained_nested_sparse)
    prompts = prompts_of(config, 4)
    own_forward = fallback(model, tokenizer)
    for level in (0, 1):
        own_forward.use_width(level)
        engines = [native(model, tokenizer, ffn_level=level), own_forward]
        texts = [engine.generate(prompts, SamplingConfig(max_new_tokens=8)).texts for engine in engines]
        assert texts[0] == texts[1], level


def test_timings_and_token_counts(trained):
    model, tokenizer, *_ = trained
    generation = fallback(model, tokenizer).generate(["rev abc|"], SamplingConfig(max_new_tokens=5))
    assert generation.ttft_s > 0
    assert len(generation.decode_step_s) == len(generation.token_ids[0]) - 1
    assert generation.prompt_tokens == [len("rev abc|") + 1]


@needs_native
def test_sampling_is_seeded_and_top_p_one_token_is_greedy(trained):
    model, tokenizer, *_ = trained
    engine = native(model, tokenizer, slots=4, max_length=32)
    prompts = ["rev abc|"] * 4
    hot = SamplingConfig(max_new_tokens=6, temperature=1.5, seed=7)
    assert engine.generate(prompts, hot).texts == engine.generate(prompts, hot).texts
    assert len(set(engine.generate(prompts, hot).texts)) > 1  # rows draw from their own generators
    narrow = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)
    greedy = engine.generate(prompts, SamplingConfig(max_new_tokens=6)).texts
    assert engine.generate(prompts, narrow).texts == greedy


def test_stop_strings_cut_the_text(tokenizer):
    torch.manual_seed(1)
    untrained = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    engine = fallback(untrained, tokenizer)
    full = engine.generate(["rev abc|"], SamplingConfig(max_new_tokens=8)).texts[0]
    assert len(full) >= 4
    stopped = engine.generate(["rev abc|"], SamplingConfig(max_new_tokens=8, stop=(full[3],)))
    assert stopped.texts[0] == full[: full.index(full[3])]
    assert len(stopped.token_ids[0]) <= 4


@needs_native
def test_bad_requests(trained):
    model, tokenizer, *_ = trained
    engine = native(model, tokenizer, slots=1, max_length=16)
    with pytest.raises(ValueError, match="takes 1 to 1"):
        engine.generate(["a", "b"])
    with pytest.raises(ValueError, match="exceed the cache length"):
        engine.generate(["rev abcdefgh|"], SamplingConfig(max_new_tokens=8))
    with pytest.raises(ValueError, match="width level 1"):
        engine.use_width(1)


@pytest.mark.parametrize("path", [pytest.param("native", marks=needs_native), "fallback"])
def test_paths_share_one_prefill_and_equal_separate_runs(trained, path):
    model, tokenizer, *_ = trained
    engine = native(model, tokenizer, 5, 40) if path == "native" else fallback(model, tokenizer, 5, 40)
    hot = SamplingConfig(max_new_tokens=10, temperature=1.3, seed=11)
    paths = engine.generate_paths("rev abcd|", 5, hot)
    separate = [engine.generate(["rev abcd|"], SamplingConfig(max_new_tokens=10, temperature=1.3, seed=11 + i))
                for i in range(5)]
    assert paths.token_ids == [run.token_ids[0] for run in separate]
    assert len(set(paths.texts)) > 1  # the paths differ from each other
    with pytest.raises(ValueError, match="takes 1 to 5"):
        engine.generate_paths("rev abcd|", 6, hot)


@needs_native
def test_a_prefill_longer_than_a_step_goes_in_chunks(trained):
    model, tokenizer, *_ = trained
    whole = native(model, tokenizer, 2, 64)
    chunked = native(model, tokenizer, 2, 64)
    chunked.model_step.max_rows = 3  # the engine splits the prompts' rows into steps of 3
    prompts = ["rev abcdefgh|", "rev xy|"]
    sampling = SamplingConfig(max_new_tokens=8)
    assert chunked.generate(prompts, sampling).texts == whole.generate(prompts, sampling).texts
