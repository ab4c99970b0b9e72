"""Training examples: token ids with labels, and the collation that batches them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ryot_ray.config import DataConfig
from ryot_ray.data.corpus import load_texts, pack_blocks
from ryot_ray.data.tasks import Problem, task_suite

IGNORE_INDEX = -100  # label of tokens that carry no loss (the prompt, padding)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def encode_problem(tokenizer: PreTrainedTokenizerBase, problem: Problem, scratchpad: bool) -> Example:
    """Prompt (with BOS) then completion and EOS; only the completion is learned."""
    prompt = tokenizer(problem.prompt)["input_ids"]
    completion = tokenizer(problem.completion(scratchpad), add_special_tokens=False)["input_ids"]
    completion = completion + [tokenizer.eos_token_id]
    return Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


def training_examples(data: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[Example]:
    """Task problems drawn from the train split (repeats allowed) plus packed corpus blocks."""
    problems = task_suite(
        data.families, data.difficulties, "train", data.train_per_level, seed, unique=False
    )
    examples = [encode_problem(tokenizer, p, data.scratchpad) for p in problems]
    if data.corpus is not None:
        corpus = data.corpus
        blocks = pack_blocks(load_texts(corpus), tokenizer, corpus.block_size, corpus.max_blocks)
        examples += [Example(block, block) for block in blocks]
    return examples


def evaluation_problems(data: DataConfig, split: str, seed: int) -> list[Problem]:
    return task_suite(data.families, data.difficulties, split, data.eval_per_level, seed)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
