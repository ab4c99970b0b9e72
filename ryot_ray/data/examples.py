"""Training examples: token ids with labels, and the collation that batches them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ryot_ray.config import Config, ConfigError, DataConfig
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


def pack_examples(examples: list[Example], sequence: int) -> list[Example]:
    """Consecutive examples joined end to end and cut into rows of exactly `sequence`
    tokens (the tail short of a row is dropped), for measuring at a sequence length the
    short task examples do not reach. Every token keeps its label, so prompts stay
    unlearned; an example cut at a row's end goes on at the next row's start, and a row's
    tokens attend to the earlier examples in it (as in corpus blocks)."""
    input_ids = [token for example in examples for token in example.input_ids]
    labels = [label for example in examples for label in example.labels]
    return [Example(input_ids[start:start + sequence], labels[start:start + sequence])
            for start in range(0, len(input_ids) - sequence + 1, sequence)]


def sampled_batches(config: Config, tokenizer: PreTrainedTokenizerBase, steps: int,
                    sequence: int | None = None) -> list[dict[str, torch.Tensor]]:
    """`steps` batches of `config.train.batch_size` rows drawn (seeded) from the training
    examples, for the benchmarks: the examples as they are (padded to a batch's longest),
    or with `sequence`, rows packed to exactly that many tokens."""
    examples = training_examples(config.data, tokenizer, config.seed)
    if sequence is not None:
        examples = pack_examples(examples, sequence)
        if len(examples) < config.train.batch_size:
            raise ConfigError(f"sequence {sequence}: the training examples fill {len(examples)} rows, "
                              f"fewer than a batch of {config.train.batch_size}")
    rng = random.Random(config.seed)
    return [collate(rng.sample(examples, config.train.batch_size), tokenizer.pad_token_id) for _ in range(steps)]
