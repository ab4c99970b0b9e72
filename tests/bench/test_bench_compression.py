"""Bookkeeping of the compression benchmark on tiny shapes (no speed is asserted)."""

from pathlib import Path

import pytest

from ryot_ray.bench.compression import (
    _train_steps, gradient_errors, matryoshka_decode, sparse_down_projection, table, training_memory,
)
from ryot_ray.cli import main
from ryot_ray.config import ModelConfig
from native_marks import needs_native

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.fixture
def tiny_config(smoke_config):
    smoke_config.train.batch_size = 8
    return smoke_config


def test_int8_saved_activations_hold_less_than_plain_bitnet(tiny_config):
    config = tiny_config.to_dict()
    saved = {name: _train_steps(config, name, steps=1, threads=1)[1]
             for name in ("reference", "bitnet_none", "bitnet_int8", "bitnet_binary")}
    assert saved["bitnet_binary"] < saved["bitnet_int8"] < saved["bitnet_none"]
    assert all(value > 0 for value in saved.values())


def test_saved_activations_grow_with_the_sequence_asked(tiny_config):
    config = tiny_config.to_dict()
    short, long = (_train_steps(config, "bitnet_int8", steps=1, threads=1, sequence=n)[1] for n in (32, 64))
    assert long > 1.8 * short


def test_compression_cli_refuses_a_sequence_without_next_tokens():
    assert main(["bench", "compression", "--config", str(SMOKE), "--sequence", "1"]) == 2


def test_gradient_errors_are_small_for_int8_and_larger_for_binary(tiny_config):
    errors = gradient_errors(tiny_config)
    assert 0 < errors["int8"] < 0.05 < errors["binary"]


@needs_native
def test_training_memory_pairs_every_variant_with_the_reference(tiny_config):
    result = training_memory(tiny_config, rounds=1, steps=1, variants=("reference", "bitnet_int8"), sequence=32)
    assert result["variants"]["reference"]["saved_for_backward_vs_reference"] == 1.0
    assert result["preset"] == "tiny" and result["sequence"] == 32
    for variant in result["variants"].values():
        assert variant["peak_rss_mb"]["median"] > 50 and len(variant["peak_rss_mb"]["samples"]) == 1
    text = table({"rounds": 1, "training_memory": result,
                  "matryoshka_decode": matryoshka_decode("tiny", rounds=1, prompt_tokens=4, new_tokens=3)})
    assert "bitnet_int8" in text and "half width 64" in text and "preset tiny, batch 8, sequence 32" in text
    assert result["peak_rss_covers"] == "the timed steps only"  # Linux resets the peak after setup
    assert "peak RSS covers the timed steps only" in text


@needs_native
def test_sparse_rows_carry_ratios_to_dense():
    result = sparse_down_projection("tiny", rounds=2, threads=1, calls=1, cycle_bytes=2**16)
    assert set(result["microseconds"]) == {"dense", "sparse_0.25", "sparse_0.5"}
    dense = result["microseconds"]["dense"]["samples"]
    for name, ratio in result["speedup_vs_dense"].items():
        assert ratio["samples"] == pytest.approx([d / s for d, s in zip(dense, result["microseconds"][name]["samples"])])


def test_the_gradient_reference_is_the_model_in_plain_autograd():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from ryot_ray.bench.compression import _plain_autograd
    from ryot_ray.data.tokenizer import build_char_tokenizer
    from ryot_ray.model.bitlinear import BitLinear
    from ryot_ray.model.build import build_model
    from ryot_ray.model.compression import plain_autograd
    from ryot_ray.model.matryoshka import ActivationGate, KeptGate
    from ryot_ray.model.norm import FusedRMSNorm

    model = _plain_autograd(build_model(ModelConfig(preset="tiny"), build_char_tokenizer()))
    kinds = {type(m) for m in model.modules()}
    assert FusedRMSNorm not in kinds and KeptGate not in kinds and {LlamaRMSNorm, ActivationGate} <= kinds
    assert all(m.quantized_linear is plain_autograd for m in model.modules() if isinstance(m, BitLinear))
