"""The Phase 1 targets judged at the shape a user deploys, not at the trained model's.

The targets (TTFT, tokens/s, memory) describe a deployed model of about a billion
parameters; the model a search trains is far smaller. Speed does not depend on trained
values, so this section builds a model of the deployment shape (`validate.deploy_preset`:
a preset, or a local `transformers` config) with random weights: ternary with the
optimized configuration's knobs (nested width, sparse_k, tile, int8 head, KV cache
format, paths), and fp32 of the same shape. Both are frozen for the same native step and
measured interleaved: TTFT at a 128-token prompt, decode tokens/s of one path and of the
configuration's paths as one batch, and the peak RSS of a fresh process answering from
each frozen file alone. The integrated speedup there is the product of two measured
factors: the per-token speedup at that shape and the token-count ratio (paths x tokens
per answer) of the trained model against its reference on the test problems.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import PretrainedConfig

from ryot_ray.config import Config, ConfigError, ModelConfig, Phase1Targets
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.infer.deployed import answer_with_file
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.infer.engines import tune_tiles
from ryot_ray.infer.freeze import freeze
from ryot_ray.infer.load import native_engine
from ryot_ray.infer.speed import digit_prompt, engine_speed
from ryot_ray.memory import in_fresh_process
from ryot_ray.model.build import ARCHITECTURES, PRESETS, build_model, model_config
from ryot_ray.stats import median_uncertainty, spread
from ryot_ray.validate.verdicts import phase1_verdicts

PROMPT_TOKENS = 128  # the prompt TTFT is judged at
NEW_TOKENS = 64  # tokens per timed answer


def deployment_shape(name: str, where: str = "validate.deploy_preset",
                     model: ModelConfig = ModelConfig()) -> PretrainedConfig:
    """A preset's shape in the model's architecture (its FFN gate and tying), or a local
    `transformers` config of it (a config.json or its directory; nothing is downloaded);
    `where` names the setting in errors."""
    architecture = model.architecture
    if name in PRESETS:
        return model_config(name, build_char_tokenizer(), architecture, model.ffn_activation, model.tie_embeddings)
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(f"{where}: {name!r} is neither a preset ({', '.join(PRESETS)}) "
                          "nor a local transformers config")
    try:
        return ARCHITECTURES[architecture].config.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{where}: {path}: {error}") from None


def frozen_pair(config: Config, shape: PretrainedConfig) -> dict:
    """The optimized configuration and the fp32 reference at `shape`, random weights, frozen."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(config.seed)
    architecture = config.model.architecture
    knobs = ModelConfig(architecture=architecture, quantization="bitnet", mrl_depth=config.model.mrl_depth,
                        sparse_k=config.model.sparse_k)
    bitnet = build_model(knobs, tokenizer, hf_config=shape)
    tune_tiles(bitnet, config.inference)
    inference = config.inference
    optimized = freeze(bitnet, tokenizer, inference.tile_size, inference.int8_embeddings, sparse=True)
    del bitnet
    reference = freeze(build_model(ModelConfig(architecture=architecture, quantization="none"), tokenizer,
                                   hf_config=shape), tokenizer)
    return {"optimized": optimized, "reference": reference}


def _forced(engine: Engine, prompt: str, paths: int, new_tokens: int = NEW_TOKENS) -> float:
    """Median seconds per decode step of `paths` paths (one batch) of a forced-length answer."""
    sampling = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)
    steps = engine.generate_paths(prompt, paths, sampling).decode_step_s
    return statistics.median(steps)


TRIAL_PROMPT_TOKENS = 16  # about a task prompt's length
TRIAL_STEPS = 16  # decode steps timed per path count and round
_step_times: dict[tuple, dict] = {}  # per process: a trial's knobs are measured once


def decode_step_times(config: Config, preset: str, threads: int, spread_goal: float, budget_s: float,
                      min_rounds: int = 3) -> dict:
    """Median decode-step seconds at `preset` (random weights) for the fp32 reference with
    one path and for the optimized configuration with every path count up to its
    `rlvr_paths`, per round, rounds interleaved until the one-path speedup's median is
    known within `spread_goal` or `budget_s` is spent. Measured once per process and knobs:
    speed at a fixed shape does not change as a trial trains."""
    inference = config.inference
    key = (preset, config.seed, config.model.architecture, config.model.ffn_activation, config.model.tie_embeddings,
           config.model.mrl_depth, config.model.sparse_k, inference.tile_size,
           inference.int8_embeddings, inference.kv_cache, inference.ffn_level, inference.rlvr_paths, threads)
    if key not in _step_times:
        frozen = frozen_pair(config, deployment_shape(preset, model=config.model))
        counts = range(1, max(inference.rlvr_paths, 1) + 1)
        max_length = TRIAL_PROMPT_TOKENS + TRIAL_STEPS + 2
        optimized = native_engine(frozen["optimized"], counts[-1], max_length, threads, inference.kv_cache)
        optimized.use_width(inference.ffn_level)
        reference = native_engine(frozen["reference"], 1, max_length, threads)
        del frozen
        prompt = digit_prompt(TRIAL_PROMPT_TOKENS)
        times: dict = {"reference": [], "optimized": {paths: [] for paths in counts}}
        started = time.perf_counter()
        _forced(optimized, prompt, counts[-1], 2)  # warm-up
        _forced(reference, prompt, 1, 2)
        while True:
            turns = ["reference", *counts]
            for turn in turns if len(times["reference"]) % 2 else turns[::-1]:
                if turn == "reference":
                    times["reference"].append(_forced(reference, prompt, 1, TRIAL_STEPS))
                else:
                    times["optimized"][turn].append(_forced(optimized, prompt, turn, TRIAL_STEPS))
            ratios = [r / o for r, o in zip(times["reference"], times["optimized"][1])]
            settled = len(ratios) >= min_rounds and median_uncertainty(ratios) <= spread_goal
            if settled or time.perf_counter() - started > budget_s:
                break
        for engine in (optimized, reference):
            engine.model_step.close()
        _step_times[key] = {**times, "time_s": time.perf_counter() - started}
    return _step_times[key]


def forced_work_speedups(times: dict, work: list[tuple[int, int]]) -> list[float]:
    """Per round, the reference's time for `work` ((tokens, paths) per problem, one path
    each) over the optimized configuration's (its paths as one batch), from step times."""
    tokens = sum(count for count, _ in work)
    return [tokens * reference / sum(count * times["optimized"][paths][round_] for count, paths in work)
            for round_, reference in enumerate(times["reference"])]


def measure_deployment(config: Config, preset: str, targets: Phase1Targets, retention: float | None,
                       token_ratio: float | None, rounds: int, memory: bool) -> dict:
    started = time.perf_counter()
    shape = deployment_shape(preset, model=config.model)
    frozen = frozen_pair(config, shape)
    inference = config.inference
    paths = max(inference.rlvr_paths, 1)
    max_length = PROMPT_TOKENS + NEW_TOKENS + 1
    engines = {"optimized": native_engine(frozen["optimized"], paths, max_length, kv_cache=inference.kv_cache),
               "reference": native_engine(frozen["reference"], 1, max_length)}
    engines["optimized"].use_width(inference.ffn_level)
    prompt = digit_prompt(PROMPT_TOKENS)
    samples = {name: {"ttft_ms": [], "decode_tokens_per_s": [], "step_s": []} for name in engines}
    path_steps: list[float] = []
    for name, engine in engines.items():  # warm-up
        engine_speed(engine, prompt, 4)
    for round_ in range(rounds):
        for name in engines if round_ % 2 == 0 else list(engines)[::-1]:
            ttft, rate, steps = engine_speed(engines[name], prompt, NEW_TOKENS)
            samples[name]["ttft_ms"].append(1e3 * ttft)
            samples[name]["decode_tokens_per_s"].append(rate)
            samples[name]["step_s"].append(statistics.median(steps))
        if paths > 1:
            path_steps.append(_forced(engines["optimized"], prompt, paths))
    variants = {}
    for name, figures in samples.items():
        variants[name] = {"ttft_ms": spread(figures["ttft_ms"]),
                          "decode_tokens_per_s": spread(figures["decode_tokens_per_s"]),
                          "threads": engines[name].model_step.threads,
                          "model_file_mb": frozen[name].nbytes / 2**20}
    if paths > 1:
        variants["optimized"][f"{paths}_paths"] = {
            "step_ms": spread([1e3 * s for s in path_steps]),
            "tokens_per_s": spread([paths / s for s in path_steps]),
            "step_vs_one_path": spread([p / o for p, o in zip(path_steps, samples["optimized"]["step_s"])])}
    per_token = [r / o for r, o in zip(samples["reference"]["step_s"], samples["optimized"]["step_s"])]
    for engine in engines.values():
        engine.model_step.close()
    if memory:
        with tempfile.TemporaryDirectory(prefix="ryot-deploy-") as directory:
            for name, model in frozen.items():
                path = Path(directory) / f"{name}.ryot"
                model.save(path)
                asked = dataclasses.asdict(inference) if name == "optimized" else {}
                result = in_fresh_process(answer_with_file, str(path), [(prompt, 1)], asked, NEW_TOKENS, max_length,
                                          variants[name]["threads"], True, what=f"{name} memory at {preset}")
                variants[name]["memory"] = {k: v for k, v in result.items() if k != "answers"}
                variants[name]["peak_rss_mb"] = result["peak_rss_mb"]
    per_token_speedup = statistics.median(per_token)
    optimized = variants["optimized"]
    return {
        "shape": preset,
        "architecture": {key: getattr(shape, key) for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                               "num_attention_heads", "num_key_value_heads",
                                                               "vocab_size", "hidden_act", "tie_word_embeddings")},
        "weights": "random (speed does not depend on trained values); accuracy is the trained model's",
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "paths": paths,
        "rounds": rounds,
        "variants": variants,
        "per_token_speedup": spread(per_token),
        "token_ratio": token_ratio,
        "integrated_speedup": None if token_ratio is None else per_token_speedup * token_ratio,
        "phase1": phase1_verdicts(targets, optimized, retention),
        "time_s": time.perf_counter() - started,
    }
