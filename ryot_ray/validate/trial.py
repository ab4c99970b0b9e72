"""What a Tune trial measures after each epoch: the accuracy of its inference
configuration and its speedup over the reference, in the trial's own process.

Accuracy: the optimized model answers for real (frozen ternary layout, nested width,
sparse down-projections, reasoning paths) and the verifier scores it.

Speed: both models do the same work at equal, forced lengths, so an answer that is
short and wrong earns no speed: each problem is answered to the length of its correct
completion and EOS, by the optimized model with the paths it used for that problem (as
one batch) and by a same-shape fp32 model with one greedy path (the reference's weights
are random: its time does not depend on values). Problem by problem the two alternate
which goes first. A round is every measured problem; the speedup of a round is the
reference's time over the optimized time. Rounds repeat until their median is known
within `spread_goal` (the width of its ~95 % interval over it: with three rounds, their
whole range; with more, a stray round under load no longer counts) or the time budget is
spent; the trial's speedup is their median, and the report keeps every round. The
reference's accuracy is measured once per experiment, on the trained reference and the
same problems (`reference_accuracy`).

With `speed_at` a preset (or a local `transformers` config), the speed is that of the
shape a user deploys: the same forced work (the trial's tokens and paths per problem)
priced by decode-step times measured once, at that shape, with the trial's knobs on
random weights against an fp32 model of the same shape (`deployment.decode_step_times`).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from torch import nn

from ryot_ray.config import Config, InferenceConfig, ModelConfig
from ryot_ray.data.examples import evaluation_problems
from ryot_ray.data.tasks import Problem
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.infer.engines import model_engine, optimized_engine
from ryot_ray.infer.load import engine_path
from ryot_ray.infer.reasoning import answer
from ryot_ray.machine import cpu_facts
from ryot_ray.model.build import build_model
from ryot_ray.stats import median_uncertainty, spread
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.validate.deployment import decode_step_times, forced_work_speedups
from ryot_ray.validate.validator import answer_budget, completion_tokens, context_length


def spread_subset(problems: list[Problem], count: int) -> list[Problem]:
    """`count` problems taken at even steps, so every family and difficulty is in."""
    if count >= len(problems):
        return list(problems)
    step = len(problems) / count
    return [problems[int(i * step)] for i in range(count)]


def forced(engine: Engine, prompt: str, tokens: int, paths: int) -> float:
    """Seconds to answer `prompt` with `paths` paths (one batch) of exactly `tokens` tokens."""
    sampling = SamplingConfig(max_new_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    if paths == 1:
        engine.generate([prompt], sampling)
    else:
        engine.generate_paths(prompt, paths, sampling)
    return time.perf_counter() - start


def speed_rounds(optimized: Engine, reference: Engine, work: list[tuple[str, int, int]], spread_goal: float,
                 budget_s: float, round_s: float = 0.25, min_rounds: int = 3) -> list[float]:
    """Speedup of each round over `work` ((prompt, tokens, paths) per problem), interleaved.
    A round passes over the work until it has taken `round_s` (a tiny model's pass is too
    short to time), at least once."""
    rounds: list[float] = []
    started = time.perf_counter()
    forced(optimized, work[0][0], 2, work[0][2])  # warm-up
    forced(reference, work[0][0], 2, 1)
    while True:
        optimized_s = reference_s = 0.0
        round_started, passes = time.perf_counter(), 0
        while passes == 0 or time.perf_counter() - round_started < round_s:
            for index, (prompt, tokens, paths) in enumerate(work):
                first = (index + passes + len(rounds)) % 2  # which model goes first alternates
                for turn in (first, 1 - first):
                    if turn == 0:
                        optimized_s += forced(optimized, prompt, tokens, paths)
                    else:
                        reference_s += forced(reference, prompt, tokens, 1)
            passes += 1
        rounds.append(reference_s / optimized_s)
        settled = len(rounds) >= min_rounds and median_uncertainty(rounds) <= spread_goal
        if settled or time.perf_counter() - started > budget_s:
            return rounds


@dataclass(frozen=True)
class TrialMeasurement:
    """Call with (model, tokenizer, config, validation problems) after an epoch."""

    problems: int = 48  # validation problems answered per epoch
    spread_goal: float = 0.05  # rounds until their median is known within this fraction
    budget_s: float = 10.0  # ... or this much time went into timing
    speed_at: str = "model"  # the trained model's own shape, or a preset / config to price its work at

    def __call__(self, model: nn.Module, tokenizer, config: Config, problems: list[Problem]) -> dict:
        chosen = spread_subset(problems, self.problems)
        max_new_tokens = answer_budget(tokenizer, chosen, config)
        max_length = context_length(tokenizer, chosen, max_new_tokens)
        inference = config.inference
        threads = torch.get_num_threads()
        trial_engine = optimized_engine(model, tokenizer, config, True, max(inference.rlvr_paths, inference.path_window),
                                        max_length, threads=threads)
        started = time.perf_counter()
        answers = [answer(trial_engine, p.prompt, p.difficulty, inference, max_new_tokens, seed=index)
                   for index, p in enumerate(chosen)]
        answer_time = time.perf_counter() - started
        work = [(p.prompt, completion_tokens(tokenizer, p, config.data.scratchpad) + 1, result.paths)
                for p, result in zip(chosen, answers)]  # the correct length, and its EOS
        if self.speed_at == "model":
            with torch.random.fork_rng():  # the training run's random stream stays as it was
                torch.manual_seed(config.seed)
                reference = build_model(ModelConfig(preset=config.model.preset, architecture=config.model.architecture,
                                                    quantization="none"), tokenizer, hf_config=model.config).eval()
            reference_engine = model_engine(reference, tokenizer, InferenceConfig(), 1, max_length, threads=threads)
            rounds = speed_rounds(trial_engine, reference_engine, work, self.spread_goal, self.budget_s)
        else:
            with torch.random.fork_rng():
                times = decode_step_times(config, self.speed_at, threads, self.spread_goal, self.budget_s)
            rounds = forced_work_speedups(times, [(tokens, paths) for _, tokens, paths in work])
        median = statistics.median(rounds)
        path = engine_path()
        return {
            "inference_accuracy": statistics.fmean(a.answer == p.answer for a, p in zip(answers, chosen)),
            "speedup": median,
            "speedup_rounds": spread(rounds),
            "speedup_spread": median_uncertainty(rounds),
            "speed_at": self.speed_at,
            "answer_time_s": answer_time,
            "paths_per_problem": statistics.fmean(a.paths for a in answers),
            "measured_problems": len(chosen),
            "node": platform.node(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "cpu": {key: cpu_facts()[key] for key in ("model", "signature")},
            "kernel_path": f"{path.name} {path.isa}".strip(),
            "threads": threads,  # the speedup depends on it: fp32 gains more from threads
        }


def reference_accuracy(checkpoint: Path, problems: int) -> float:
    """The trained reference's exact match on the problems `TrialMeasurement` answers:
    one greedy path through the same engine."""
    model, tokenizer, config, _ = load_checkpoint(checkpoint)
    chosen = spread_subset(evaluation_problems(config.data, "validation", config.seed), problems)
    max_new_tokens = answer_budget(tokenizer, chosen, config)
    engine = model_engine(model, tokenizer, InferenceConfig(), 1, context_length(tokenizer, chosen, max_new_tokens))
    return statistics.fmean(
        answer(engine, p.prompt, p.difficulty, InferenceConfig(), max_new_tokens).answer == p.answer
        for p in chosen)
