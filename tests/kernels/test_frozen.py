"""A frozen model answers exactly as the QAT model it came from."""

import pytest
import torch

from ryot_ray.data.examples import evaluation_problems
from ryot_ray.kernels.frozen import TernaryLinear, freeze
from ryot_ray.kernels.ternary import native_isas
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.train.checkpoint import load_checkpoint
from ryot_ray.train.evaluate import greedy_completions

PATHS = [pytest.param(True, marks=pytest.mark.skipif(not native_isas(), reason="no native library")), False]


@pytest.mark.parametrize("native", PATHS)
def test_frozen_model_matches_qat_model(trained_checkpoint, native):
    qat, tokenizer, config, _ = load_checkpoint(trained_checkpoint)
    frozen, *_ = load_checkpoint(trained_checkpoint)
    freeze(frozen, rows_per_tile=2, native=native)
    assert not any(isinstance(m, BitLinear) for m in frozen.modules())
    layers = [m for m in frozen.modules() if isinstance(m, TernaryLinear)]
    assert len(layers) == 7 * 2 and all(layer.native == native for layer in layers)

    batch = tokenizer(["rev abc|", "rev xyz|"], return_tensors="pt")
    with torch.no_grad():
        want = qat(**batch).logits
        # float sums in the QAT path vs exact integers in the kernel: a rare int8 rounding
        # tie downstream may differ by one step, so logits agree to 1 % of their range
        assert (frozen(**batch).logits - want).abs().max() < 0.01 * want.abs().max()
    prompts = [p.prompt for p in evaluation_problems(config.data, "validation", config.seed)]
    assert greedy_completions(frozen, tokenizer, prompts, 8, 16) == greedy_completions(qat, tokenizer, prompts, 8, 16)


def test_frozen_layer_keeps_two_bits_per_weight(trained_checkpoint):
    model, *_ = load_checkpoint(trained_checkpoint)
    layer = model.model.layers[0].mlp.up_proj
    frozen = TernaryLinear.from_bitlinear(layer, {"rows_per_tile": 1, "tokens_per_tile": 4}, native=True)
    assert frozen.packed.data.nbytes * 4 == frozen.packed.padded_out * frozen.packed.padded_in
    assert frozen.codes is None
