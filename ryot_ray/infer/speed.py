"""TTFT and decode speed of one forced-length answer, through the engine or through
`transformers` `generate()` (the peer a user would otherwise reach for)."""

from __future__ import annotations

import time

import torch
from torch import nn

from ryot_ray.infer.engine import Engine, SamplingConfig


def digit_prompt(tokens: int) -> str:
    """A prompt of `tokens` tokens for the character tokenizer (which adds BOS), for timing."""
    return ("0123456789 " * tokens)[: tokens - 1]


def engine_speed(engine: Engine, prompt: str, new_tokens: int) -> tuple[float, float, list[float]]:
    """(TTFT s, decode tokens/s, per-token seconds), always `new_tokens` tokens."""
    generation = engine.generate([prompt], SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True))
    steps = generation.decode_step_s
    return generation.ttft_s, len(steps) / sum(steps), steps


@torch.no_grad()
def transformers_ttft(model: nn.Module, tokenizer, prompt: str) -> float:
    """Seconds for `generate()` to answer one token."""
    ids = tokenizer(prompt, return_tensors="pt")
    start = time.perf_counter()
    model.generate(**ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start


@torch.no_grad()
def transformers_speed(model: nn.Module, tokenizer, prompt: str, new_tokens: int) -> tuple[float, float, list[float]]:
    """The same through `generate()`: TTFT from a one-token call, the decode rate from
    the difference to a `new_tokens` call (generate() gives no per-token times)."""
    ids = tokenizer(prompt, return_tensors="pt")
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ttft = transformers_ttft(model, tokenizer, prompt)
    start = time.perf_counter()
    model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    per_token = (time.perf_counter() - start - ttft) / (new_tokens - 1)
    return ttft, 1.0 / per_token, [per_token]
