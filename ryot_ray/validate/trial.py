"""What a Tune trial measures after each epoch: the accuracy of its inference
configuration and its speedup over the reference, in the trial's own process.

The optimized model answers for real (frozen ternary layout, nested width, sparse
down-projections, reasoning paths) and the verifier scores it. The reference is timed
on a same-shape fp32 model: its weights are random, so it is forced to the length a
correct greedy answer has (the problem's completion and its EOS), and its time does not
depend on what random weights would say. Problem by problem the two alternate which
goes first. The reference's accuracy is measured once per experiment, on the trained
reference and the same problems (`reference_accuracy`).
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
from ryot_ray.infer.reasoning import answer
from ryot_ray.kernels.ternary import kernel_path
from ryot_ray.machine import cpu_facts
from ryot_ray.model.build import build_model
from ryot_ray.model.matryoshka import use_width
from ryot_ray.stats import spread
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.validate.validator import answer_budget, completion_tokens, context_length, frozen_model


def spread_subset(problems: list[Problem], count: int) -> list[Problem]:
    """`count` problems taken at even steps, so every family and difficulty is in."""
    if count >= len(problems):
        return list(problems)
    step = len(problems) / count
    return [problems[int(i * step)] for i in range(count)]


def _forced_reference(engine: Engine, tokenizer, problem: Problem, scratchpad: bool) -> float:
    """Seconds for the reference's work on `problem`: one greedy path as long as a correct answer."""
    tokens = completion_tokens(tokenizer, problem, scratchpad) + 1  # and its EOS
    start = time.perf_counter()
    engine.generate([problem.prompt], SamplingConfig(max_new_tokens=tokens, ignore_eos=True))
    return time.perf_counter() - start


@dataclass(frozen=True)
class TrialMeasurement:
    """Call with (model, tokenizer, config, validation problems) after an epoch."""

    problems: int = 48  # validation problems answered per epoch

    def __call__(self, model: nn.Module, tokenizer, config: Config, problems: list[Problem]) -> dict:
        chosen = spread_subset(problems, self.problems)
        sparse = config.model.sparse_k != 1
        frozen = frozen_model(model, config, sparse)
        use_width(frozen, config.inference.ffn_level)
        with torch.random.fork_rng():  # the training run's random stream stays as it was
            torch.manual_seed(config.seed)
            reference = build_model(ModelConfig(preset=config.model.preset, quantization="none"), tokenizer,
                                    llama=model.config).eval()
        max_new_tokens = answer_budget(tokenizer, chosen, config)
        max_length = context_length(tokenizer, chosen, max_new_tokens)
        inference = config.inference
        optimized_engine = Engine(frozen, tokenizer, max(inference.rlvr_paths, inference.path_window), max_length)
        reference_engine = Engine(reference, tokenizer, 1, max_length)

        correct, paths, optimized_s, reference_s = [], [], [], []
        for index, problem in enumerate(chosen):
            for turn in ((0, 1) if index % 2 == 0 else (1, 0)):
                if turn == 0:
                    start = time.perf_counter()
                    result = answer(optimized_engine, problem.prompt, problem.difficulty, inference,
                                    max_new_tokens, seed=index)
                    optimized_s.append(time.perf_counter() - start)
                    correct.append(result.answer == problem.answer)
                    paths.append(result.paths)
                else:
                    reference_s.append(_forced_reference(reference_engine, tokenizer, problem,
                                                         config.data.scratchpad))
        path = kernel_path()
        ratios = [r / o for r, o in zip(reference_s, optimized_s)]
        return {
            "inference_accuracy": statistics.fmean(correct),
            "speedup": sum(reference_s) / sum(optimized_s),
            "speedup_per_problem": spread(ratios),
            "answer_time_s": sum(optimized_s),
            "reference_answer_time_s": sum(reference_s),
            "paths_per_problem": statistics.fmean(paths),
            "measured_problems": len(chosen),
            "node": platform.node(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "cpu": {key: cpu_facts()[key] for key in ("model", "signature")},
            "kernel_path": f"{path.name} {path.isa}".strip(),
            "threads": torch.get_num_threads(),  # the speedup depends on it: fp32 gains more from threads
        }


def reference_accuracy(checkpoint: Path, problems: int) -> float:
    """The trained reference's exact match on the problems `TrialMeasurement` answers:
    one greedy path through the same engine."""
    model, tokenizer, config, _ = load_checkpoint(checkpoint)
    chosen = spread_subset(evaluation_problems(config.data, "validation", config.seed), problems)
    max_new_tokens = answer_budget(tokenizer, chosen, config)
    engine = Engine(model, tokenizer, 1, context_length(tokenizer, chosen, max_new_tokens))
    return statistics.fmean(
        answer(engine, p.prompt, p.difficulty, InferenceConfig(), max_new_tokens).answer == p.answer
        for p in chosen)
