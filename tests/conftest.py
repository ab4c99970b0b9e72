"""Shared fixtures: a tiny config, and one Ray instance per test module that needs it."""

from __future__ import annotations

import pytest

from ryot_ray.config import Config, load_config
from ryot_ray.data.tokenizer import build_char_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


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
