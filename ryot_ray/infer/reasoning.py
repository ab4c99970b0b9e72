"""Multi-path reasoning on verifiable problems: sample paths, vote on the answers.

With `rlvr_paths` = 1 a problem gets one greedy answer. Above 1, paths are sampled in
waves of `path_window` (each wave one batch over a shared prefill) and the answer is the
majority of the answers the paths extracted; the task's verifier is used only to score.

Adaptive stop (early-stopping self-consistency, ESC): after each wave, if every path of
that wave gave the same answer, stop. Budget by difficulty: a problem of difficulty d
may use up to `path_window * 2^(d-1)` paths, never more than `rlvr_paths`, so easy
problems stop early and hard ones get more paths. Without `adaptive_paths`, every
problem uses `rlvr_paths` paths, decoded as one batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ryot_ray.config import InferenceConfig
from ryot_ray.data.tasks import extract_answer
from ryot_ray.infer.engine import Engine, SamplingConfig


@dataclass
class Answer:
    answer: str | None  # the voted answer; None if no path gave one
    completions: list[str]  # every sampled path, in order
    paths: int
    votes: dict[str, int]
    seconds: float  # prefill and decode, every wave
    tokens: int  # generated, every path


def majority(answers: list[str | None]) -> str | None:
    """The most frequent answer; on a tie the one given first; None if there is none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def wave_agrees(answers: list[str | None]) -> bool:
    return len(answers) > 0 and answers[0] is not None and len(set(answers)) == 1


def path_budget(config: InferenceConfig, difficulty: int) -> int:
    if not config.adaptive_paths:
        return config.rlvr_paths
    return min(config.rlvr_paths, config.path_window * 2 ** (difficulty - 1))


def answer(engine: Engine, prompt: str, difficulty: int, config: InferenceConfig, max_new_tokens: int,
           seed: int = 0) -> Answer:
    if config.rlvr_paths == 1:
        generation = engine.generate([prompt], SamplingConfig(max_new_tokens=max_new_tokens))
        seconds = generation.ttft_s + sum(generation.decode_step_s)
        text = generation.texts[0]
        extracted = extract_answer(text)
        return Answer(extracted, [text], 1, {extracted: 1} if extracted is not None else {}, seconds,
                      generation.new_tokens)
    budget = path_budget(config, difficulty)
    window = config.path_window if config.adaptive_paths else budget  # fixed paths: one batch
    completions: list[str] = []
    seconds, tokens = 0.0, 0
    while len(completions) < budget:
        wave = min(window, budget - len(completions))
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p, seed=seed + len(completions))
        generation = engine.generate_paths(prompt, wave, sampling)
        seconds += generation.ttft_s + sum(generation.decode_step_s)
        tokens += generation.new_tokens
        completions += generation.texts
        if config.adaptive_paths and wave_agrees([extract_answer(t) for t in generation.texts]):
            break
    answers = [extract_answer(t) for t in completions]
    votes = Counter(a for a in answers if a is not None)
    return Answer(majority(answers), completions, len(completions), dict(votes), seconds, tokens)
