"""What a deployed model costs: a process that answers with a frozen model file and
nothing else. It imports numpy, `tokenizers` and the native library (no torch), so its
peak RSS is the model's pages it read, its KV cache and the Python runtime: what the
Phase 1 memory target is about.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ryot_ray.config import InferenceConfig
from ryot_ray.infer.engine import SamplingConfig
from ryot_ray.infer.load import native_engine
from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.infer.reasoning import answer
from ryot_ray.memory import peak_rss_mb


def answer_with_file(path: str, problems: list[tuple[str, int]], inference: dict, max_new_tokens: int,
                     max_length: int, threads: int, forced: bool = False) -> dict:
    """Answer `problems` ((prompt, difficulty) pairs) with the frozen model at `path` in
    this process (`forced`: every answer exactly `max_new_tokens` greedy tokens); its
    peak RSS (whole process, from its start) and what it imported."""
    config = InferenceConfig(**inference)
    frozen = FrozenModel.load(Path(path))
    engine = native_engine(frozen, max(config.rlvr_paths, config.path_window), max_length, threads, config.kv_cache)
    engine.use_width(config.ffn_level)
    if forced:
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
        answers = [engine.generate([prompt], sampling).texts[0] for prompt, _ in problems]
    else:
        answers = [answer(engine, prompt, difficulty, config, max_new_tokens, seed=index).answer
                   for index, (prompt, difficulty) in enumerate(problems)]
    return {"peak_rss_mb": peak_rss_mb(), "scope": "whole process", "torch_imported": "torch" in sys.modules,
            "model_file_mb": Path(path).stat().st_size / 2**20,
            "kv_cache_mb": engine.model_step.cache_bytes / 2**20, "answers": answers}
