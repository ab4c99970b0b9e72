"""Shared fixtures: a tiny config, and one Ray instance per test module that needs it."""

from __future__ import annotations

import pytest

from ryot_ray.config import Config, load_config
from ryot_ray.data.tokenizer import build_char_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"




def train_workers(processes) -> list:
    """The Ray Train worker processes among `processes` (psutil), by their process title."""
    import psutil

    found = []
    for process in processes:
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def smoke_config() -> Config:
    return load_config(SMOKE)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module; reports reach the driver every 0.1 s."""
    import os

    import ray

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def train_tiny(directory, overrides: list[str]):
    """A tiny model trained in this process for a few epochs on `reverse`, saved."""
    import math
    from functools import partial

    import torch
    from torch.utils.data import DataLoader

    from ryot_ray.data.examples import collate, training_examples
    from ryot_ray.model.build import build_model
    from ryot_ray.train.checkpoint import TrainingState, save_checkpoint
    from ryot_ray.train.loop import build_optimizer, train_epoch

    config = load_config(SMOKE, ["data.families=[reverse]", "train.epochs=4", "data.train_per_level=400",
                                 *overrides])
    tokenizer = build_char_tokenizer()
    torch.manual_seed(config.seed)
    model = build_model(config.model, tokenizer)
    optimizer = build_optimizer(model, config)
    examples = training_examples(config.data, tokenizer, config.seed)
    loader = DataLoader(examples, batch_size=config.train.batch_size, shuffle=True,
                        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))
    state = TrainingState()
    total = config.train.epochs * math.ceil(len(loader))
    for _ in range(config.train.epochs):
        train_epoch(model, loader, optimizer, state, total, config)
        state.epoch += 1
    save_checkpoint(directory, model, tokenizer, config, state, optimizer)
    return directory


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A tiny BitNet model trained on `reverse`."""
    return train_tiny(tmp_path_factory.mktemp("trained"), [])


@pytest.fixture(scope="session")
def trained_reference(tmp_path_factory):
    """The fp32 reference of `trained_checkpoint`, trained the same way."""
    return train_tiny(tmp_path_factory.mktemp("reference"), ["model.quantization=none"])


@pytest.fixture(scope="session")
def trained_nested_sparse(tmp_path_factory):
    """A tiny BitNet model with two nested widths and half its FFN activations kept."""
    return train_tiny(tmp_path_factory.mktemp("nested"), ["model.mrl_depth=2", "model.sparse_k=0.5"])
