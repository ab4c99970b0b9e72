"""A frozen model answers exactly as the QAT model it came from."""

import pytest
import torch

from ryot_ray.data.examples import evaluation_problems
from ryot_ray.kernels.frozen import Int8Embedding, Int8Linear, TernaryLinear, freeze
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


def test_int8_head_and_embeddings_stay_within_their_rounding():
    torch.manual_seed(0)
    head, embedding = torch.nn.Linear(48, 40, bias=False), torch.nn.Embedding(40, 48)
    int8_head, int8_embedding = Int8Linear(head), Int8Embedding(embedding)
    assert int8_head.codes.dtype == torch.int8 and int8_head.codes.shape == (40, 48)

    ids = torch.tensor([[3, 0, 39]])
    row_step = embedding.weight[ids].abs().amax(-1, keepdim=True) / 127
    assert ((int8_embedding(ids) - embedding(ids)).abs() <= row_step / 2 + 1e-7).all()

    x = torch.randn(2, 5, 48)
    want, got = head(x), int8_head(x)
    assert got.shape == want.shape
    # weights and activations each round by half a step: the error stays far below the logits'
    error = (got - want).norm() / want.norm()
    assert 0 < error < 0.02
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_freeze_with_int8_embeddings_swaps_both_ends(trained_checkpoint):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    fp32_ends = freeze(load_checkpoint(trained_checkpoint)[0], rows_per_tile=2)
    freeze(model, rows_per_tile=2, int8_embeddings=True)
    assert isinstance(model.get_input_embeddings(), Int8Embedding)
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    batch = tokenizer(["rev abc|"], return_tensors="pt")
    with torch.no_grad():
        want, got = fp32_ends(**batch).logits, model(**batch).logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(ValueError, match="without bias"):
        Int8Linear(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("native", PATHS)
def test_frozen_nested_sparse_model_matches_qat_at_every_width(native):
    from ryot_ray.config import ModelConfig
    from ryot_ray.data.tokenizer import build_char_tokenizer
    from ryot_ray.kernels.frozen import SparseTernaryLinear
    from ryot_ray.model.build import build_model
    from ryot_ray.model.matryoshka import use_width

    torch.manual_seed(0)
    qat = build_model(ModelConfig(preset="tiny", mrl_depth=2, sparse_k=0.5), build_char_tokenizer()).eval()
    frozen = build_model(ModelConfig(preset="tiny", mrl_depth=2, sparse_k=0.5), build_char_tokenizer())
    frozen.load_state_dict(qat.state_dict())
    freeze(frozen, rows_per_tile=1, native=native)
    assert all(isinstance(layer.mlp.down_proj, SparseTernaryLinear) for layer in frozen.model.layers)
    ids = torch.randint(5, 40, (2, 9))
    for level in (0, 1):
        use_width(qat, level)
        use_width(frozen, level)
        with torch.no_grad():
            want, got = qat(input_ids=ids).logits, frozen(input_ids=ids).logits
        assert (got - want).abs().max() < 0.01 * want.abs().max(), level
