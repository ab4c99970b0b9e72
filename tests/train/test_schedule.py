import pytest

from ryot_ray.config import TrainConfig
from ryot_ray.train.schedule import two_stage


def test_two_stage_learning_rate_and_weight_decay():
    train = TrainConfig(lr=1e-3, lr_stage2=4e-4, weight_decay=0.1, warmup_steps=10)
    total = 100
    assert two_stage(0, total, train) == (pytest.approx(1e-4), 0.1)  # warm-up, 1/10
    assert two_stage(9, total, train) == (pytest.approx(1e-3), 0.1)  # warm-up done
    assert two_stage(49, total, train) == (pytest.approx(1e-3), 0.1)  # stage 1 holds
    assert two_stage(50, total, train) == (pytest.approx(4e-4), 0.0)  # abrupt cool-down
    assert two_stage(75, total, train) == (pytest.approx(2e-4), 0.0)  # cosine half-way
    assert two_stage(100, total, train)[0] == pytest.approx(0.0, abs=1e-12)
    assert two_stage(150, total, train)[0] == pytest.approx(0.0, abs=1e-12)  # never negative


def test_warmup_longer_than_stage_one_is_cut_to_it():
    train = TrainConfig(lr=1e-3, warmup_steps=1000)
    assert two_stage(4, 10, train)[0] == pytest.approx(1e-3)
    assert two_stage(0, 1, TrainConfig(warmup_steps=0))[0] == pytest.approx(TrainConfig().lr)
