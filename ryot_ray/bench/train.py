"""Training throughput of BitNet vs the fp32 reference, measured side by side.

Both models are built from the same config and seed, take optimizer steps on the same
batches, and are timed in alternating rounds (A B, B A, …) in one process, so a drift
in machine speed hits both. Speedup per round = reference time / BitNet time.
"""

from __future__ import annotations

import time

import torch

from ryot_ray.bench import sequence_text
from ryot_ray.progress_bar import progress
from ryot_ray.stats import spread
from ryot_ray.config import Config
from ryot_ray.data.examples import sampled_batches
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.machine import machine_facts
from ryot_ray.model.build import build_model
from ryot_ray.train.loop import build_optimizer

KINDS = ("bitnet", "none")


def _train_steps(model, optimizer, batches, bf16: bool) -> float:
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench_train(config: Config, rounds: int = 5, steps: int = 5, threads: int | None = None,
                sequence: int | None = None) -> dict:
    """`sequence`: rows of that many tokens packed from the examples (None: the examples
    as they are)."""
    threads = threads or config.train.cpus_per_worker
    torch.set_num_threads(threads)
    tokenizer = build_char_tokenizer()
    batches = sampled_batches(config, tokenizer, steps, sequence)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    runners = {}
    for kind in KINDS:
        config.model.quantization = kind
        torch.manual_seed(config.seed)
        model = build_model(config.model, tokenizer).train()
        runners[kind] = (model, build_optimizer(model, config))
        _train_steps(*runners[kind], batches[:1], config.train.bf16)  # warm-up
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for round_ in progress(range(rounds), "training rounds"):
        for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
            seconds[kind].append(_train_steps(*runners[kind], batches, config.train.bf16))
    speedups = [ref / bit for ref, bit in zip(seconds["none"], seconds["bitnet"])]
    return {
        "benchmark": "train",
        "preset": config.model.preset,
        "threads": threads,
        "batch_size": config.train.batch_size,
        "sequence": sequence,
        "steps_per_round": steps,
        "tokens_per_round": tokens,
        "tokens_per_s": {
            "bitnet": spread([tokens / s for s in seconds["bitnet"]]),
            "reference": spread([tokens / s for s in seconds["none"]]),
        },
        "speedup_vs_reference": spread(speedups),
        "machine": machine_facts(),
    }


def table(result: dict) -> str:
    rows = [f"training throughput, preset {result['preset']}, {result['threads']} thread(s), "
            f"batch {result['batch_size']}, {sequence_text(result['sequence'])} "
            f"({result['tokens_per_round']} tokens a round)",
            f"{'model':<12}{'min':>12}{'median':>12}{'max':>12}  tokens/s"]
    for name, figures in result["tokens_per_s"].items():
        rows.append(f"{name:<12}{figures['min']:>12.0f}{figures['median']:>12.0f}{figures['max']:>12.0f}")
    ratio = result["speedup_vs_reference"]
    rows.append(f"{'speedup':<12}{ratio['min']:>12.2f}{ratio['median']:>12.2f}{ratio['max']:>12.2f}"
                "  BitNet vs reference (reference time / BitNet time, per round)")
    return "\n".join(rows)
