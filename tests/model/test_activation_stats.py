import pytest
import torch

from ryot_ray.config import ModelConfig
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.model.activation_stats import activation_compression
from ryot_ray.model.build import build_model


def _measure(quantization: str, mode: str = "none") -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", quantization=quantization, activation_compression=mode),
                        build_char_tokenizer())
    return activation_compression(model, {"input_ids": torch.randint(5, 40, (3, 12))})


def test_ratio_and_error_per_mode_on_real_activations():
    stats = {mode: _measure("bitnet", mode) for mode in ("none", "int8", "binary")}
    none, int8, binary = (stats[m]["overall"] for m in ("none", "int8", "binary"))
    assert none["compression_ratio"] == 1.0 and none["reconstruction_error"] == 0  # the input itself
    # int8 keeps what the forward pass used: its rounding error, at ~4x less
    assert int8["compression_ratio"] == pytest.approx(4 * 64 / (64 + 4), rel=0.1)
    assert 0 < int8["reconstruction_error"] < 0.02
    assert binary["compression_ratio"] > 15 and binary["reconstruction_error"] > 10 * int8["reconstruction_error"]
    assert set(stats["int8"]["layers"]) == set(stats["binary"]["layers"])
    assert len(stats["int8"]["layers"]) == 2 * 7 and stats["binary"]["saved_activations"] == "binary"


def test_a_model_without_bitlinear_has_nothing_to_report():
    assert _measure("none") == {}
