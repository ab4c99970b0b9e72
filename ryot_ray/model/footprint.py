"""The least memory training a config needs, estimated before Ray starts, so a model too
large for the machine is refused with the estimate instead of dying mid-run.

The estimate is a floor: fp32 weights, their gradients and AdamW's two moments (16 bytes
per parameter) for each worker, counted on the model built on the meta device (no
memory). Activations, the runtime and the data come on top.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, LlamaForCausalLM

from ryot_ray.config import Config, ConfigError
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.model.build import ARCHITECTURES, model_config

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
GIB = 2**30


def parameter_count(config: Config) -> int | None:
    """Parameters of the model `config` trains; None for a hub model (its shape is online)."""
    pretrained = config.model.pretrained
    if pretrained and not Path(pretrained).expanduser().is_dir():
        return None
    try:
        shape = (AutoConfig.from_pretrained(Path(pretrained).expanduser()) if pretrained
                 else model_config(config.model.preset, build_char_tokenizer(), config.model.architecture,
                                   config.model.ffn_activation, config.model.tie_embeddings))
    except (OSError, ValueError) as error:  # a local folder that is not a model
        raise ConfigError(f"model.pretrained: {pretrained}: {error}") from None
    with torch.device("meta"):
        return sum(p.numel() for p in ARCHITECTURES[config.model.architecture].model(shape).parameters())


def check_training_fits(config: Config, memory_bytes: int) -> None:
    count = parameter_count(config)
    if count is None:
        return
    per_worker = count * BYTES_PER_PARAMETER
    needed = per_worker * config.train.workers
    if needed > memory_bytes:
        model = config.model.pretrained or f"preset {config.model.preset}"
        raise ConfigError(
            f"model {model}: training needs at least {needed / GIB:.1f} GiB ({config.train.workers} worker(s) x "
            f"{per_worker / GIB:.1f} GiB of fp32 weights, gradients and AdamW state for {count / 1e6:.1f}M "
            f"parameters), more than the {memory_bytes / GIB:.1f} GiB of this machine")
