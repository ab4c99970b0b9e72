"""Generation over a model step: prefill, then decode, with sampling and stop strings.

The step is the native one (`native.NativeStep`, the whole model in one call) or, where
the native library cannot run, the trained model's own forward (`fallback.TorchStep`).
Either takes rows of (token, sequence slot, position) and returns the logits of the rows
asked for, so every sequence of a batch runs at its own positions: prompts of different
lengths need no padding, and the paths of one problem share a single prefill (its cache
copied to every path) and then decode as one batch, reading each weight once per step.

Nothing here imports torch: with the native step, a process answering prompts holds the
model file, its KV cache, numpy, `tokenizers` and Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings, besides the EOS token
    seed: int = 0
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]]
    prompt_tokens: list[int]  # per sequence
    ttft_s: float  # prefill and the first sampled token
    decode_step_s: list[float] = field(default_factory=list)  # one entry per later step

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


class Step(Protocol):
    slots: int
    max_length: int
    max_rows: int
    widths: list[int]

    def step(self, tokens, slots, positions, logit_rows) -> np.ndarray: ...

    def copy_slot(self, source: int, target: int, length: int) -> None: ...

    def use_width(self, level: int) -> None: ...


class TextCodec:
    """Text to token ids and back, with a `tokenizers` tokenizer (no transformers)."""

    def __init__(self, tokenizer: Tokenizer, eos: int | None, pad: int | None):
        self.tokenizer, self.eos_token_id, self.pad_token_id = tokenizer, eos, pad

    @classmethod
    def from_record(cls, record: dict) -> TextCodec:
        """From a frozen model's tokenizer record."""
        return cls(Tokenizer.from_str(record["json"]), record["eos"], record["pad"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids  # with the special tokens its template adds (BOS)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class Engine:
    """Answers prompts with a step of `slots` sequences of up to `max_length` positions."""

    def __init__(self, step: Step, codec: TextCodec):
        self.model_step, self.codec = step, codec

    @property
    def max_batch(self) -> int:
        return self.model_step.slots

    def use_width(self, level: int) -> None:
        """Run the FFNs at their `level`-th nested width (0: full) from now on."""
        self.model_step.use_width(level)

    def _encode(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        if not 1 <= len(prompts) <= self.max_batch:
            raise ValueError(f"{len(prompts)} sequences; this engine takes 1 to {self.max_batch}")
        encoded = [self.codec.encode(p) for p in prompts]
        longest = max(len(ids) for ids in encoded)
        if longest + max_new_tokens > self.model_step.max_length:
            raise ValueError(f"prompt ({longest}) + new tokens ({max_new_tokens}) "
                             f"exceed the cache length {self.model_step.max_length}")
        return encoded

    def _prefill(self, encoded: list[list[int]]) -> np.ndarray:
        """Every prompt into its slot (in steps of at most max_rows rows); the logits of
        each prompt's last token."""
        rows = [(token, slot, position) for slot, ids in enumerate(encoded) for position, token in enumerate(ids)]
        last = {sum(len(ids) for ids in encoded[: slot + 1]) - 1: slot for slot in range(len(encoded))}
        logits = [None] * len(encoded)
        chunk = self.model_step.max_rows
        for start in range(0, len(rows), chunk):
            part = rows[start: start + chunk]
            wanted = [i for i in range(len(part)) if start + i in last]
            tokens, slots, positions = zip(*part)
            out = self.model_step.step(tokens, slots, positions, wanted)
            for row, index in zip(out, wanted):
                logits[last[start + index]] = row
        return np.stack(logits)

    def generate(self, prompts: list[str], sampling: SamplingConfig = SamplingConfig()) -> Generation:
        """Answer a batch of prompts; row i samples with seed `sampling.seed + i`."""
        encoded = self._encode(prompts, sampling.max_new_tokens)
        begin = time.perf_counter()
        logits = self._prefill(encoded)
        return self._decode(logits, [len(ids) for ids in encoded], sampling, begin)

    def generate_paths(self, prompt: str, paths: int, sampling: SamplingConfig) -> Generation:
        """`paths` answers to one prompt over a single prefill: the prompt's cache is
        copied to every path. Path i samples with seed `sampling.seed + i`, as row i of
        `generate` would."""
        (ids,) = self._encode([prompt], sampling.max_new_tokens)
        if not 1 <= paths <= self.max_batch:
            raise ValueError(f"{paths} paths; this engine takes 1 to {self.max_batch}")
        begin = time.perf_counter()
        logits = self._prefill([ids])
        for slot in range(1, paths):
            self.model_step.copy_slot(0, slot, len(ids))
        return self._decode(np.repeat(logits, paths, axis=0), [len(ids)] * paths, sampling, begin)

    def _decode(self, logits: np.ndarray, lengths: list[int], sampling: SamplingConfig, begin: float) -> Generation:
        """Sample from the prefill's logits, then decode every sequence until it stops."""
        batch = len(lengths)
        generators = [np.random.default_rng(sampling.seed + row) for row in range(batch)]
        next_tokens = sample(logits, sampling, generators)
        ttft = time.perf_counter() - begin
        outputs: list[list[int]] = [[] for _ in range(batch)]
        active = list(range(batch))
        steps = []
        for step in range(sampling.max_new_tokens):
            for row, token in zip(active, next_tokens):
                outputs[row].append(int(token))
            active = [row for row in active if not self._finished(outputs[row], sampling)]
            if not active or step + 1 == sampling.max_new_tokens:
                break
            started = time.perf_counter()
            tokens = [outputs[row][-1] for row in active]
            positions = [lengths[row] + len(outputs[row]) - 1 for row in active]
            logits = self.model_step.step(tokens, active, positions, list(range(len(active))))
            next_tokens = sample(logits, sampling, [generators[row] for row in active])
            steps.append(time.perf_counter() - started)
        texts = [self._text(ids, sampling.stop) for ids in outputs]
        return Generation(texts, outputs, lengths, ttft, steps)

    def _finished(self, ids: list[int], sampling: SamplingConfig) -> bool:
        if not sampling.ignore_eos and ids[-1] == self.codec.eos_token_id:
            return True
        return bool(sampling.stop) and any(s in self.codec.decode(ids) for s in sampling.stop)

    def _text(self, ids: list[int], stop: tuple[str, ...]) -> str:
        text = self.codec.decode(ids)
        cuts = [text.index(s) for s in stop if s in text]
        return text[: min(cuts)] if cuts else text


def sample(logits: np.ndarray, sampling: SamplingConfig, generators: list[np.random.Generator]) -> np.ndarray:
    """One token per row; each row draws from its own generator, so what a row samples
    does not depend on the rows beside it."""
    if sampling.temperature <= 0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    tokens = []
    for row, generator in zip(probs, generators):
        if sampling.top_p < 1.0:
            order = np.argsort(-row, kind="stable")
            sorted_probs = row[order]
            outside = np.cumsum(sorted_probs) - sorted_probs > sampling.top_p
            row = np.zeros_like(row)
            row[order[~outside]] = sorted_probs[~outside]
            row /= row.sum()
        tokens.append(generator.choice(len(row), p=row))
    return np.asarray(tokens)
