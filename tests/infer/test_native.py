"""The native step computes what the trained model computes, on every ISA path."""

import copy
import ctypes

import numpy as np
import pytest
import torch

from ryot_ray.config import ModelConfig
from ryot_ray.infer import native
from ryot_ray.infer.fallback import as_inference_model
from ryot_ray.infer.freeze import freeze, int8_rows
from ryot_ray.infer.native import NativeModel, NativeStep
from ryot_ray.kernels.native import ISAS
from ryot_ray.model.build import build_model
from ryot_ray.model.matryoshka import use_width
from ryot_ray.model.quantize import int8_activations
from ryot_ray.train.checkpoint import load_checkpoint
from native_marks import available, needs_native

pytestmark = needs_native
PROMPT = "rev hello world, a prompt longer than a decode tile|"


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_same_logits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float rounding: summing in another order (vector widths differ by ISA,
    and exp differs from torch's by an ulp) can move an int8 activation of a token by one
    step where its rounding is a tie; that token's logits move a little, and so do the
    later tokens', which attend to its key and value. Where no tie flips, they agree to
    about 1e-7."""
    error = np.abs(got - want).max(axis=-1) / np.abs(want).max()
    assert np.median(error) < 1e-3 and error.max() < 1e-2
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def native_logits(step: NativeStep, ids: list[int], slot: int = 0, one_by_one: bool = False) -> np.ndarray:
    if one_by_one:  # decode: a step per token
        return np.stack([step.step([t], [slot], [i], [0])[0] for i, t in enumerate(ids)])
    return step.step(ids, [slot] * len(ids), list(range(len(ids))), list(range(len(ids))))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_isa_and_team_size_computes_the_models_logits(trained, tokenizer, isa, threads):
    available(isa)
    model, tokenizer, *_ = trained
    ids = tokenizer(PROMPT)["input_ids"]
    want = torch_logits(model, ids)
    step = NativeStep(NativeModel(freeze(model, tokenizer, rows_per_tile=2)), 2, 64, threads, isa=isa)
    for one_by_one in (False, True):  # prefill (the unpacked tiles on AVX-512) and decode
        assert_same_logits(native_logits(step, ids, slot=int(one_by_one), one_by_one=one_by_one), want)


def test_fp32_reference_rows(trained_reference, tokenizer):
    model = load_checkpoint(trained_reference)[0]
    ids = tokenizer(PROMPT)["input_ids"]
    step = NativeStep(NativeModel(freeze(model, tokenizer)), 1, 64, 2)
    want = torch_logits(model, ids)
    assert np.abs(native_logits(step, ids) - want).max() < 1e-5 * np.abs(want).max() + 1e-6


@pytest.mark.parametrize("rows_per_tile", [1, 4, 8])
def test_int8_embeddings_and_head_compute_the_rounded_models_logits(trained, rows_per_tile):
    model, tokenizer, *_ = trained
    ids = tokenizer(PROMPT)["input_ids"]
    frozen = freeze(model, tokenizer, rows_per_tile=rows_per_tile, int8_embeddings=True)
    assert frozen.arrays["head.data"].dtype == np.int8 and frozen.arrays["embed.weight"].dtype == np.int8
    rounded = as_inference_model(model, int8_embeddings=True, sparse=True)  # int8-rounded tables
    with torch.no_grad():  # the int8 head also quantizes its input to int8, per token
        hidden = rounded.model(torch.tensor([ids])).last_hidden_state[0]
    codes, row_scale = int8_rows(model.lm_head.weight)
    x_codes, x_scale = int8_activations(hidden)
    want = ((x_codes.double() @ codes.double().T) * row_scale.double() / x_scale.double()).float().numpy()
    got = native_logits(NativeStep(NativeModel(frozen), 1, 64, 2), ids)
    assert_same_logits(got, want)
    loose = torch_logits(rounded, ids)  # against fp32 activations into the rounded head: close
    assert np.abs(got - loose).max() < 1e-2 * np.abs(loose).max()


def test_nested_width_and_sparse_columns_compute_the_models_logits(trained_nested_sparse):
    model, tokenizer, *_ = load_checkpoint(trained_nested_sparse)
    ids = tokenizer(PROMPT)["input_ids"]
    for sparse in (True, False):
        frozen = freeze(model, tokenizer, sparse=sparse)
        assert frozen.model["linears"]["down"]["kind"] == ("columns" if sparse else "ternary")
        reference = as_inference_model(model, int8_embeddings=False, sparse=sparse)
        step = NativeStep(NativeModel(frozen), 1, 64, 2)
        for level in (0, 1):
            use_width(reference, level)
            step.use_width(level)
            # (and where two activations tie at the top-k threshold, either may be kept)
            assert_same_logits(native_logits(step, ids), torch_logits(reference, ids))


def test_fp16_kv_cache_is_close_and_half_the_bytes(trained):
    model, tokenizer, *_ = trained
    ids = tokenizer(PROMPT)["input_ids"]
    frozen = NativeModel(freeze(model, tokenizer))
    full, half = NativeStep(frozen, 2, 64, 2), NativeStep(frozen, 2, 64, 2, kv_cache="fp16")
    assert half.cache_bytes * 2 == full.cache_bytes
    want = native_logits(full, ids, one_by_one=True)
    got = native_logits(half, ids, one_by_one=True)
    # keys and values rounded to 11 bits move the logits by a few per cent at most (an
    # int8 rounding downstream can amplify one): lossy, so `validate` measures its accuracy
    assert 0 < np.abs(got - want).max() < 3e-2 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def test_a_copied_slot_continues_like_its_source(trained):
    model, tokenizer, *_ = trained
    ids = tokenizer(PROMPT)["input_ids"]
    step = NativeStep(NativeModel(freeze(model, tokenizer)), 3, 64, 2)
    step.step(ids[:-1], [0] * (len(ids) - 1), list(range(len(ids) - 1)), [])
    step.copy_slot(0, 2, len(ids) - 1)
    last = step.step([ids[-1]] * 2, [0, 2], [len(ids) - 1] * 2, [0, 1])
    assert np.array_equal(last[0], last[1])


def test_rows_out_of_range_are_refused(trained):
    model, tokenizer, *_ = trained
    step = NativeStep(NativeModel(freeze(model, tokenizer)), 2, 16, 1, max_rows=4)
    for tokens, slots, positions in [([1], [2], [0]), ([1], [0], [16]), ([10**6], [0], [0]), ([1] * 5, [0] * 5,
                                                                                             list(range(5)))]:
        with pytest.raises(ValueError, match="rows"):
            step.step(tokens, slots, positions, [0])
    with pytest.raises(ValueError, match="cannot copy"):
        step.copy_slot(0, 5, 4)
    with pytest.raises(ValueError, match="rotary positions"):
        NativeStep(step.model, 1, 10**6, 1)


def test_a_malformed_model_is_refused_by_the_engine(trained):
    model, tokenizer, *_ = trained
    frozen = freeze(model, tokenizer)
    broken = copy.deepcopy(frozen.model)
    broken["linears"]["qkv"]["rows"][1] += 1  # k no longer matches the heads
    with pytest.raises(RuntimeError, match="malformed"):
        NativeStep(NativeModel(type(frozen)(broken, frozen.tokenizer, frozen.arrays)), 1, 16, 1)


def test_profile_times_every_phase_of_the_steps(trained):
    model, tokenizer, *_ = trained
    step = NativeStep(NativeModel(freeze(model, tokenizer)), 1, 32, 2)
    assert ctypes.c_int32.in_dll(native.engine_library()[0], "ryot_phases").value == len(native.PHASES)
    step.profile(True)
    for position in range(4):
        step.step([5], [0], [position], [0])
    seconds = step.profile(False)
    assert set(seconds) == set(native.PHASES) and all(s > 0 for s in seconds.values())
    step.step([5], [0], [4], [0])
    assert sum(step.profile(False).values()) == 0.0  # off: nothing timed


@pytest.mark.parametrize("quantization", ["bitnet", "none"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation, tied", [("relu2", False), ("silu", True)])
def test_a_bitnet_block_and_its_fp32_reference_compute_the_models_logits(tokenizer, quantization, threads,
                                                                         activation, tied):
    """The block norms no ternary linear's input in the engine (its norms are the linears'
    gains), its sub-norms run before fp32 o and down, and its FFN squares a ReLU (or, as
    llama.cpp's bitnet graph, runs SiLU with tied embeddings); the ternary one at both its
    nested widths (the FFN's sub-norm over the width in use)."""
    torch.manual_seed(1)  # seed 0 puts an int8 rounding tie at token 39 (see assert_same_logits)
    depth = 2 if quantization == "bitnet" else 1
    shape = dict(ffn_activation=None if activation == "relu2" else activation, tie_embeddings=tied)
    model = build_model(ModelConfig(preset="tiny", architecture="bitnet", quantization=quantization, mrl_depth=depth,
                                    **shape), tokenizer).eval()
    assert (model.config.hidden_act, model.lm_head.weight is model.model.embed_tokens.weight) == (activation, tied)
    for parameter in model.parameters():  # gains away from 1, so that a norm left out shows
        if parameter.ndim == 1:
            torch.nn.init.normal_(parameter, 1.0, 0.3)
    frozen = freeze(model, tokenizer)
    assert (frozen.model["architecture"], frozen.model["ffn_activation"]) == ("bitnet", activation)
    assert ("layers.0.attn_norm" in frozen.arrays) == (quantization == "none")
    ids = tokenizer(PROMPT)["input_ids"]
    step = NativeStep(NativeModel(frozen), 2, 64, threads)
    for level in range(depth):
        use_width(model, level)
        step.use_width(level)
        want = torch_logits(model, ids)
        assert_same_logits(native_logits(step, ids), want)
        assert_same_logits(native_logits(step, ids, slot=1, one_by_one=True), want)


def test_the_engine_has_a_code_for_every_ffn_activation_the_config_takes():
    from ryot_ray.config import FFN_ACTIVATIONS

    assert set(native.FFN_CODES) == set(FFN_ACTIVATIONS)  # each computed as its own in the bitnet block test
