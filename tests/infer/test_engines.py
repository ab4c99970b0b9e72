"""Engines for trained models: the native step where it runs, the fallback where it does
not, and the frozen file beside a checkpoint, made once."""

import pytest

from ryot_ray.config import InferenceConfig
from ryot_ray.infer import engines, load, native
from ryot_ray.infer.engine import SamplingConfig
from ryot_ray.infer.fallback import TorchStep
from ryot_ray.infer.freeze import FreezeError, freeze
from ryot_ray.infer.native import NativeStep
from ryot_ray.kernels import autotune
from ryot_ray.train.checkpoint import load_checkpoint
from native_marks import needs_native


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@needs_native
def test_the_native_step_answers_where_it_runs(trained_checkpoint):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    engine = engines.model_engine(model, tokenizer, InferenceConfig(), 1, 32)
    assert isinstance(engine.model_step, NativeStep)
    assert load.engine_path().name == "native" and load.engine_path().isa in engine.model_step.isa


def test_without_the_library_the_models_own_forward_answers(trained_checkpoint, monkeypatch):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    monkeypatch.setattr(native, "ENGINE_MODULE", "ryot_ray.infer._absent")
    native.engine_library.cache_clear()
    try:
        path = load.engine_path()
        assert path.name == "torch" and "not built" in path.reason
        engine = engines.model_engine(model, tokenizer, InferenceConfig(int8_embeddings=True), 1, 32)
        assert isinstance(engine.model_step, TorchStep)
        assert engine.generate(["rev abc|"], SamplingConfig(max_new_tokens=4)).token_ids[0]
    finally:
        native.engine_library.cache_clear()


@needs_native
def test_frozen_file_is_made_once_per_layout_and_reused(trained_checkpoint):
    first = engines.frozen_file(trained_checkpoint, InferenceConfig(tile_size=2))
    assert first.path.parent == trained_checkpoint / engines.FROZEN_DIR
    assert first.made_from["tiles"] == {name: 2 for name in ("qkv", "o", "gate_up", "down")}
    stamp = first.path.stat().st_mtime_ns
    again = engines.frozen_file(trained_checkpoint, InferenceConfig(tile_size=2))
    assert again.path == first.path and not again.made_now
    assert first.path.stat().st_mtime_ns == stamp  # reused, not frozen again
    other = engines.frozen_file(trained_checkpoint, InferenceConfig(tile_size=2, int8_embeddings=True))
    assert other.path != first.path and other.made_from["int8"]
    first.path.write_bytes(b"damaged")  # a damaged file is made again
    remade = engines.frozen_file(trained_checkpoint, InferenceConfig(tile_size=2))
    assert remade.path == first.path and remade.made_now
    assert first.path.read_bytes()[:8] == b"RYOTFRZ1"


@needs_native
def test_freeze_takes_the_cached_tile_per_fused_shape_unless_one_is_given(trained_checkpoint):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    shapes = engines.fused_shapes(model.config)
    qkv = "{}x{}".format(*shapes["qkv"])
    autotune.cache_path().parent.mkdir(parents=True)
    autotune.cache_path().write_text(f'{{"{qkv}": {{"rows_per_tile": 4, "tokens_per_tile": 2}}}}')
    linears = freeze(model, tokenizer).model["linears"]
    assert (linears["qkv"]["rows_per_tile"], linears["qkv"]["tokens_per_tile"]) == (4, 2)
    assert linears["o"]["rows_per_tile"] == autotune.DEFAULT_TILE["rows_per_tile"]
    given = freeze(model, tokenizer, rows_per_tile=8).model["linears"]
    assert {given[name]["rows_per_tile"] for name in ("qkv", "o", "gate_up", "down")} == {8}


@needs_native
def test_models_the_step_cannot_run_are_refused_by_name(trained_checkpoint):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    model.config.hidden_act = "gelu"
    with pytest.raises(FreezeError, match="hidden_act .gelu.: the native step.s FFN runs silu or relu2"):
        freeze(model, tokenizer)
