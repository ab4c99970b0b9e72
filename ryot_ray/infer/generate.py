"""Answer a user's own prompts with a checkpoint's inference configuration."""

from __future__ import annotations

import json
from pathlib import Path

from ryot_ray.config import ConfigError, InferenceConfig
from ryot_ray.infer.engines import optimized_engine
from ryot_ray.infer.reasoning import answer, path_budget
from ryot_ray.train.checkpoint import load_checkpoint

DIFFICULTY = 1  # a user's prompt has no known difficulty: the smallest path budget


def read_prompts(path: Path) -> list[str]:
    """`{"prompt": ...}` per line; blank lines skipped; a bad line names its number."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompts file")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f'{path}:{number}: expected {{"prompt": "..."}}')
        prompts.append(record["prompt"])
    if not prompts:
        raise ConfigError(f"{path}: no prompts")
    return prompts


def capped_paths(inference: InferenceConfig) -> str | None:
    """Why a user's prompt gets fewer paths than `rlvr_paths` asks for, if it does."""
    budget = path_budget(inference, DIFFICULTY)
    if budget >= inference.rlvr_paths:
        return None
    return (f"inference.rlvr_paths={inference.rlvr_paths} is capped at {budget} path(s) per prompt: with "
            f"adaptive paths a prompt of unknown difficulty gets one window (inference.path_window="
            f"{inference.path_window}); --set inference.adaptive_paths=false gives every prompt all of them")


def answer_prompts(checkpoint: Path, inference: InferenceConfig, prompts: list[str],
                   max_new_tokens: int) -> list[dict]:
    model, tokenizer, config, _ = load_checkpoint(checkpoint)
    config.inference = inference
    longest = max(len(tokenizer(p)["input_ids"]) for p in prompts)
    engine = optimized_engine(model, tokenizer, config, True, max(inference.rlvr_paths, inference.path_window),
                              longest + max_new_tokens + 1, checkpoint)
    records = []
    for index, prompt in enumerate(prompts):
        result = answer(engine, prompt, DIFFICULTY, inference, max_new_tokens, seed=index)
        records.append({"prompt": prompt, "answer": result.answer, "completions": result.completions,
                        "paths": result.paths, "votes": result.votes, "seconds": result.seconds})
    return records
