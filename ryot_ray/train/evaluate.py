"""Exact-match accuracy and validation loss, optionally split across Train workers.

Each worker scores its own slice of the problems; the counts are summed over the
process group, so every worker ends with the same totals.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from ryot_ray.data.examples import IGNORE_INDEX, Example, collate
from ryot_ray.data.tasks import Problem, verify
from ryot_ray.train.distributed import all_reduce


@torch.no_grad()
def greedy_completions(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size], padding=True, padding_side="left", return_tensors="pt"
        )
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return completions


def level_key(problem: Problem) -> str:
    return f"{problem.family}:{problem.difficulty}"


def exact_match(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    scratchpad: bool,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Accuracy overall, per family and per family:difficulty, from the verifier."""
    levels = sorted({level_key(p) for p in problems})
    longest = max(len(tokenizer(p.completion(scratchpad), add_special_tokens=False)["input_ids"]) for p in problems)
    mine = problems[rank::world]
    completions = greedy_completions(model, tokenizer, [p.prompt for p in mine], longest + 2, batch_size)
    counts = torch.zeros(len(levels), 2, dtype=torch.float64)  # correct, total
    for problem, completion in zip(mine, completions):
        counts[levels.index(level_key(problem))] += torch.tensor([float(verify(problem, completion)), 1.0])
    counts = all_reduce(counts)
    by_family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for level, (correct, total) in zip(levels, counts.tolist()):
        family = level.split(":")[0]
        by_family[family][0] += correct
        by_family[family][1] += total
    correct, total = counts.sum(dim=0).tolist()
    return {
        "accuracy": correct / total,
        "accuracy_by_family": {f: c / t for f, (c, t) in sorted(by_family.items())},
        "accuracy_by_level": {level: c / t for level, (c, t) in zip(levels, counts.tolist())},
        "problems": int(total),
    }


@torch.no_grad()
def mean_loss(
    model: LlamaForCausalLM, examples: list[Example], pad_id: int, batch_size: int,
    rank: int = 0, world: int = 1,
) -> float:
    """Token-weighted mean loss over the labelled tokens of `examples`."""
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, tokens
    mine = examples[rank::world]
    for start in range(0, len(mine), batch_size):
        batch = collate(mine[start : start + batch_size], pad_id)
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        totals += torch.tensor([model(**batch).loss.item() * tokens, tokens])
    totals = all_reduce(totals)
    return float(totals[0] / totals[1])
