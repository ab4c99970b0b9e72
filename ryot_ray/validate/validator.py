"""The last stage: the optimized inference configuration against the reference, measured.

`InferenceValidator` runs as one Ray actor holding every CPU of its node, so nothing
else runs there while it times. In its one process it answers the test problems of the
checkpoint's task suite with each variant, interleaved problem by problem (the order
alternates), and times a forced-length answer for TTFT and decode speed:
- `reference`: the trained full-precision model (dense, full width, one greedy path)
  frozen as fp32 rows through the same engine; `transformers`: the same model through
  `generate()`;
- the ablation steps of the optimized configuration, each adding one optimization:
  the frozen ternary model, its nested width, its sparse down-projections, fixed and
  then adaptive reasoning paths. The last step is the optimized configuration.
Peak RSS is measured per variant in a fresh process answering a few problems with the
frozen model file alone (no torch in that process).
Without a trained reference the accuracy and time to answer cannot be compared: the
report says so, and the reference's speed is timed on a same-shape fp32 model.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ryot_ray.config import Config, InferenceConfig, ModelConfig, Phase1Targets, ValidateConfig
from ryot_ray.data.examples import evaluation_problems
from ryot_ray.data.tasks import Problem, extract_answer
from ryot_ray.infer.deployed import answer_with_file
from ryot_ray.infer.engine import Engine
from ryot_ray.infer.engines import frozen_file, model_engine, optimized_engine
from ryot_ray.infer.load import default_threads, engine_path
from ryot_ray.infer.reasoning import answer
from ryot_ray.infer.speed import engine_speed, transformers_speed
from ryot_ray.machine import machine_facts
from ryot_ray.memory import in_fresh_process
from ryot_ray.model.build import build_model
from ryot_ray.stats import spread
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import greedy_completions, level_key
from ryot_ray.validate.deployment import measure_deployment
from ryot_ray.validate.verdicts import phase1_verdicts

log = logging.getLogger(__name__)
SPEED_TOKENS = 32
MEMORY_PROBLEMS = 5


@dataclass(frozen=True)
class Step:
    """One variant of the optimized model: which optimizations are on."""

    name: str
    sparse: bool
    inference: InferenceConfig  # its width, int8 head, KV cache format and paths

    @property
    def level(self) -> int:  # nested FFN width
        return self.inference.ffn_level

    @property
    def layout(self) -> tuple:
        """What fixes the frozen model and its engine (the rest is chosen per answer)."""
        return self.sparse, self.inference.int8_embeddings, self.inference.kv_cache


def ablation(config: Config) -> list[Step]:
    """The optimizations of `config` added one at a time; the last step is all of them."""
    inference = config.inference
    steps = [Step("ternary", False, dataclasses.replace(inference, rlvr_paths=1, ffn_level=0, int8_embeddings=False,
                                                         kv_cache="fp32"))]

    def add(name: str, sparse: bool | None = None, **changes) -> None:
        last = steps[-1]
        steps.append(Step(name, last.sparse if sparse is None else sparse,
                          dataclasses.replace(last.inference, **changes)))

    if inference.int8_embeddings:
        add("+ int8 head", int8_embeddings=True)
    if inference.ffn_level:
        add("+ nested width", ffn_level=inference.ffn_level)
    if config.model.sparse_k != 1:
        add("+ sparse_k", sparse=True)
    if inference.kv_cache != "fp32":
        add(f"+ {inference.kv_cache} KV cache", kv_cache=inference.kv_cache)
    if inference.rlvr_paths > 1:
        add("+ fixed paths", rlvr_paths=inference.rlvr_paths, adaptive_paths=False)
        if inference.adaptive_paths:
            add("+ adaptive paths", adaptive_paths=True)
    return steps


@dataclass
class Variant:
    engine: Engine
    step: Step | None  # None: the reference, one greedy path
    model: nn.Module | None = None  # the torch model and tokenizer, for `transformers` generate()
    tokenizer: object = None


def _answer(name: str, variant: Variant, problem: Problem, max_new_tokens: int,
            seed: int) -> tuple[str | None, int, int | None]:
    """(answer, paths, tokens generated; None where generate() does not say)."""
    if name == "transformers":
        text = greedy_completions(variant.model, variant.tokenizer, [problem.prompt], max_new_tokens, 1)[0]
        return extract_answer(text), 1, None
    if variant.step is None:
        result = answer(variant.engine, problem.prompt, problem.difficulty, InferenceConfig(), max_new_tokens)
        return result.answer, 1, result.tokens
    variant.engine.use_width(variant.step.level)
    result = answer(variant.engine, problem.prompt, problem.difficulty, variant.step.inference, max_new_tokens,
                    seed=seed)
    return result.answer, result.paths, result.tokens


def show_progress() -> None:
    """This process's validation progress at INFO on stderr (Ray forwards an actor's
    stderr to the driver's console), once."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("validation: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def answer_interleaved(variants: dict[str, Variant], problems: list[Problem], max_new_tokens: int) -> dict:
    """Per variant: correct, paths, tokens and seconds for every problem, answered in turn."""
    records = {name: {"correct": [], "paths": [], "tokens": [], "seconds": []} for name in variants}
    names = list(variants)
    for index, problem in enumerate(problems):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            given, paths, tokens = _answer(name, variants[name], problem, max_new_tokens, seed=index)
            records[name]["seconds"].append(time.perf_counter() - start)
            records[name]["correct"].append(given == problem.answer)
            records[name]["paths"].append(paths)
            records[name]["tokens"].append(tokens)
        if (index + 1) % max(1, len(problems) // 10) == 0:
            log.info("answered %d/%d problems with %d variants", index + 1, len(problems), len(variants))
    return records


def summarize(records: dict, problems: list[Problem]) -> dict:
    by_level: dict[str, list[bool]] = {}
    paths_by_difficulty: dict[str, list[int]] = {}
    for problem, correct, paths in zip(problems, records["correct"], records["paths"]):
        by_level.setdefault(level_key(problem), []).append(correct)
        paths_by_difficulty.setdefault(str(problem.difficulty), []).append(paths)
    return {
        "accuracy": statistics.fmean(records["correct"]),
        "accuracy_by_level": {level: statistics.fmean(v) for level, v in sorted(by_level.items())},
        "answer_time_s": sum(records["seconds"]),
        "seconds_per_problem": spread(records["seconds"]),
        "paths_total": sum(records["paths"]),
        "tokens_total": None if None in records["tokens"] else sum(records["tokens"]),
        "paths_per_problem_by_difficulty": {d: statistics.fmean(v) for d, v in sorted(paths_by_difficulty.items())},
    }


def speeds(variants: dict[str, Variant], prompt: str, repeats: int) -> dict:
    """TTFT and decode tokens/s of a forced-length answer, interleaved over repeats."""
    ttft: dict[str, list[float]] = {name: [] for name in variants}
    rate: dict[str, list[float]] = {name: [] for name in variants}
    for name, variant in variants.items():  # warm-up
        _speed(name, variant, prompt, 4)
    for repeat in range(repeats):
        for name in variants if repeat % 2 == 0 else list(variants)[::-1]:
            first, tokens_per_s, _ = _speed(name, variants[name], prompt, SPEED_TOKENS)
            ttft[name].append(1e3 * first)
            rate[name].append(tokens_per_s)
    return {name: {"ttft_ms": spread(ttft[name]), "decode_tokens_per_s": spread(rate[name])} for name in variants}


def _speed(name: str, variant: Variant, prompt: str, tokens: int) -> tuple[float, float, list[float]]:
    if name == "transformers":
        return transformers_speed(variant.model, variant.tokenizer, prompt, tokens)
    if variant.step is not None:
        variant.engine.use_width(variant.step.level)
    return engine_speed(variant.engine, prompt, tokens)


def team(variant: Variant) -> int | None:
    """The threads a variant's native step decodes with (None for the torch fallback)."""
    return getattr(variant.engine.model_step, "threads", None)


def _answer_with_model(checkpoint: str, problems: list[tuple[str, int]], inference: dict, sparse: bool,
                       max_new_tokens: int, max_length: int, threads: int) -> dict:
    """`answer_with_file` for the torch fallback: the checkpoint's model answers."""
    import sys

    from ryot_ray.memory import peak_rss_mb

    torch.set_num_threads(threads)
    config = InferenceConfig(**inference)
    model, tokenizer, *_ = load_checkpoint(Path(checkpoint))
    engine = model_engine(model, tokenizer, config, max(config.rlvr_paths, config.path_window), max_length, sparse)
    answers = [answer(engine, prompt, difficulty, config, max_new_tokens, seed=index).answer
               for index, (prompt, difficulty) in enumerate(problems)]
    return {"peak_rss_mb": peak_rss_mb(), "scope": "whole process", "torch_imported": "torch" in sys.modules,
            "answers": answers}


def deployed_memory(checkpoint: Path, inference: InferenceConfig, sparse: bool, problems: list[Problem],
                    max_new_tokens: int, max_length: int, threads: int, what: str) -> dict:
    """Peak RSS of a fresh process that answers `problems` with the checkpoint in the
    layout `inference` asks for: from its frozen file alone where the native step runs."""
    asked = [(p.prompt, p.difficulty) for p in problems]
    if engine_path().name == "native":
        path = frozen_file(checkpoint, inference, sparse).path
        return in_fresh_process(answer_with_file, str(path), asked, dataclasses.asdict(inference), max_new_tokens,
                                max_length, threads, what=what)
    return in_fresh_process(_answer_with_model, str(checkpoint), asked, dataclasses.asdict(inference), sparse,
                            max_new_tokens, max_length, threads, what=what)


def completion_tokens(tokenizer, problem: Problem, scratchpad: bool) -> int:
    """Tokens of the problem's correct completion (worked solution and answer)."""
    return len(tokenizer(problem.completion(scratchpad), add_special_tokens=False)["input_ids"])


def answer_budget(tokenizer, problems: list[Problem], config: Config) -> int:
    """New tokens enough for the longest correct completion, its EOS and one more."""
    return max(completion_tokens(tokenizer, p, config.data.scratchpad) for p in problems) + 2


def context_length(tokenizer, problems: list[Problem], max_new_tokens: int) -> int:
    return max(len(tokenizer(p.prompt)["input_ids"]) for p in problems) + max_new_tokens + 1


class InferenceValidator:
    """Use as `ray.remote(num_cpus=...)(InferenceValidator)`; `validate()` returns the report."""

    def __init__(self, checkpoint: str, reference_checkpoint: str | None, targets: Phase1Targets,
                 inference: dict | None = None, repeats: int = 5, max_problems: int | None = None,
                 memory: bool = True, deploy_preset: str | None = ValidateConfig().deploy_preset):
        self.checkpoint, self.reference_checkpoint = checkpoint, reference_checkpoint
        self.deploy_preset = deploy_preset
        self.targets, self.repeats, self.max_problems, self.memory = targets, repeats, max_problems, memory
        self.inference_overrides = inference or {}
        self.threads = default_threads()
        show_progress()

    def __repr__(self) -> str:
        """The actor's name in the dashboard (Actors page, log prefixes)."""
        path = Path(self.checkpoint)
        return f"validator of {path.parent.name}/{path.name}"

    def validate(self) -> dict:
        torch.set_num_threads(self.threads)
        model, tokenizer, config, _ = load_checkpoint(Path(self.checkpoint))
        if config.model.quantization != "bitnet":
            raise ValueError(f"{self.checkpoint} holds a {config.model.quantization!r} model; validate takes "
                             "a BitNet checkpoint (the reference is --reference)")
        config.inference = dataclasses.replace(config.inference, **self.inference_overrides)
        problems = evaluation_problems(config.data, "test", config.seed)[: self.max_problems]
        max_new_tokens = answer_budget(tokenizer, problems, config)
        max_length = context_length(tokenizer, problems, max(max_new_tokens, SPEED_TOKENS))
        steps = ablation(config)
        paths = max(config.inference.rlvr_paths, config.inference.path_window)

        trained_reference = self.reference_checkpoint is not None
        if trained_reference:
            reference = load_checkpoint(Path(self.reference_checkpoint))[0]
        else:
            torch.manual_seed(config.seed)
            reference = build_model(ModelConfig(preset=config.model.preset, architecture=config.model.architecture,
                                                quantization="none"), tokenizer, hf_config=model.config).eval()
        # each engine decodes with the team size that is fastest for it on this node's CPUs
        reference_engine = optimized_engine(
            reference, tokenizer, dataclasses.replace(config, inference=InferenceConfig()), True, 1, max_length,
            Path(self.reference_checkpoint) if trained_reference else None)
        variants = {"reference": Variant(reference_engine, None),
                    "transformers": Variant(reference_engine, None, reference, tokenizer)}
        engines = {}
        for step in steps:
            if step.layout not in engines:
                engines[step.layout] = optimized_engine(model, tokenizer, dataclasses.replace(config, inference=step.inference),
                                                        step.sparse, paths, max_length, Path(self.checkpoint))
            variants[step.name] = Variant(engines[step.layout], step)
        optimized_name = steps[-1].name

        started = time.perf_counter()
        answering = variants if trained_reference else {n: v for n, v in variants.items() if v.step is not None}
        log.info("answering %d test problems with %d variants, in turn", len(problems), len(answering))
        records = answer_interleaved(answering, problems, max_new_tokens)
        measured = {name: summarize(records[name], problems) for name in answering}
        speed_names = ["reference", "transformers", optimized_name]
        log.info("timing TTFT and decode speed, %d interleaved repeats", self.repeats)
        timed = speeds({name: variants[name] for name in speed_names}, problems[0].prompt, self.repeats)
        for name in speed_names:
            measured.setdefault(name, {}).update(timed[name])
        for name, variant in variants.items():
            if name in measured:
                measured[name]["threads"] = self.threads if name == "transformers" else team(variant)
        if self.memory:
            log.info("peak RSS of a fresh process answering with each model")
            few = problems[:MEMORY_PROBLEMS]
            last = steps[-1]
            deployed = [("reference", self.reference_checkpoint, InferenceConfig(), True),
                        (optimized_name, self.checkpoint, last.inference, last.sparse)]
            for name, source, inference, sparse in deployed:
                if source is not None:
                    memory = deployed_memory(Path(source), inference, sparse, few, max_new_tokens, max_length,
                                             team(variants[name]) or self.threads, what=f"{name} memory")
                    measured[name]["peak_rss_mb"] = memory["peak_rss_mb"]
                    measured[name]["memory"] = {k: v for k, v in memory.items() if k != "answers"}

        optimized = measured[optimized_name]
        report = {
            "checkpoint": self.checkpoint,
            "reference_checkpoint": self.reference_checkpoint,
            "node": platform.node(),
            "threads": self.threads,
            "kernel_path": vars(engine_path()),
            "inference": dataclasses.asdict(config.inference),
            "model": dataclasses.asdict(config.model),
            "problems": len(problems),
            "optimized": optimized_name,
            "variants": measured,
            "validation_time_s": time.perf_counter() - started,
            "machine": machine_facts(),
        }
        if trained_reference:
            reference_measured = measured["reference"]
            report["integrated_speedup"] = reference_measured["answer_time_s"] / optimized["answer_time_s"]
            report["integrated_speedup_vs_transformers"] = (measured["transformers"]["answer_time_s"]
                                                            / optimized["answer_time_s"])
            report["accuracy_retention"] = (optimized["accuracy"] / reference_measured["accuracy"]
                                            if reference_measured["accuracy"] else None)
            if not reference_measured["accuracy"]:
                report["not_measured"] = "accuracy retention: the reference answers no test problem correctly"
        else:
            report["integrated_speedup"] = None
            report["accuracy_retention"] = None
            report["not_measured"] = ("no trained reference checkpoint (--reference): accuracy retention and "
                                      "time to answer cannot be compared; the reference's speed was timed on "
                                      "a same-shape fp32 model")
        report["phase1"] = phase1_verdicts(self.targets, optimized, report["accuracy_retention"])
        report["deployment"] = self._deployment(config, measured, optimized, report["accuracy_retention"])
        report["ablation"] = ablation_report(steps, measured, report)
        return report

    def _deployment(self, config: Config, measured: dict, optimized: dict, retention: float | None) -> dict | None:
        """The deployment-shape section; it measures the native step, so where that cannot
        run (no native library on this node) it is reported as not measured."""
        if not self.deploy_preset:
            return None
        path = engine_path()
        if path.name != "native":
            return {"shape": self.deploy_preset, "not_measured": f"the native step cannot run here ({path.reason})"}
        tokens = measured.get("reference", {}).get("tokens_total")
        ratio = tokens / optimized["tokens_total"] if tokens and optimized["tokens_total"] else None
        log.info("the deployment shape %s: random-weight models with the same knobs, measured", self.deploy_preset)
        return measure_deployment(config, self.deploy_preset, self.targets, retention, ratio, self.repeats, self.memory)


def ablation_report(steps: list[Step], measured: dict, report: dict) -> list[dict]:
    """Each step's accuracy and speedup, against the reference and against the step before."""
    rows = []
    reference_time = measured.get("reference", {}).get("answer_time_s")
    previous = None
    for step in steps:
        figures = measured[step.name]
        row = {"step": step.name, "ffn_level": step.level, "sparse": step.sparse,
               "int8_embeddings": step.inference.int8_embeddings, "kv_cache": step.inference.kv_cache,
               "rlvr_paths": step.inference.rlvr_paths, "adaptive_paths": step.inference.adaptive_paths,
               "accuracy": figures["accuracy"], "answer_time_s": figures["answer_time_s"],
               "paths_total": figures["paths_total"]}
        if reference_time:
            row["speedup_vs_reference"] = reference_time / figures["answer_time_s"]
        if previous:
            row["speedup_vs_previous_step"] = previous["answer_time_s"] / figures["answer_time_s"]
        rows.append(row)
        previous = figures
    return rows
