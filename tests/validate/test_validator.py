"""The validator's steps, verdicts and report, run in this process on tiny checkpoints."""

import dataclasses

import pytest

from ryot_ray.config import Config, InferenceConfig, Phase1Targets
from ryot_ray.validate.validator import InferenceValidator, ablation
from ryot_ray.validate.verdicts import phase1_verdicts
from native_marks import needs_native

TARGETS = Phase1Targets(ttft_ms=120, decode_tokens_per_s=25, memory_mb=500, accuracy_retention=0.99)


def test_ablation_adds_one_optimization_at_a_time():
    config = Config()
    config.model.mrl_depth, config.model.sparse_k = 2, 0.25
    config.inference = InferenceConfig(rlvr_paths=8, ffn_level=1, int8_embeddings=True, kv_cache="fp16")
    steps = ablation(config)
    assert [s.name for s in steps] == ["ternary", "+ int8 head", "+ nested width", "+ sparse_k", "+ fp16 KV cache",
                                       "+ fixed paths", "+ adaptive paths"]
    assert [(s.level, s.sparse, s.inference.int8_embeddings, s.inference.kv_cache, s.inference.rlvr_paths)
            for s in steps] == [(0, False, False, "fp32", 1), (0, False, True, "fp32", 1), (1, False, True, "fp32", 1),
                                (1, True, True, "fp32", 1), (1, True, True, "fp16", 1), (1, True, True, "fp16", 8),
                                (1, True, True, "fp16", 8)]
    assert not steps[-2].inference.adaptive_paths and steps[-1].inference.adaptive_paths
    assert steps[-1].inference == config.inference  # the last step is the configuration itself
    assert len({s.layout for s in steps}) == 4  # an engine per frozen layout and KV format, not per step
    assert [s.name for s in ablation(Config())] == ["ternary"]


def test_a_missed_or_unmeasured_target_is_not_met():
    optimized = {"ttft_ms": {"median": 130.0}, "decode_tokens_per_s": {"median": 25.0}, "peak_rss_mb": 499.0}
    verdicts = phase1_verdicts(TARGETS, optimized, retention=None)
    assert {name: v["met"] for name, v in verdicts.items()} == {
        "ttft_ms": False, "decode_tokens_per_s": True, "memory_mb": True, "accuracy_retention": False}
    assert verdicts["ttft_ms"]["measured"] == 130.0 and verdicts["accuracy_retention"]["measured"] is None


@pytest.fixture(scope="module")
def report(trained_nested_sparse, trained_reference):
    validator = InferenceValidator(str(trained_nested_sparse), str(trained_reference), TARGETS,
                                   inference={"rlvr_paths": 4, "path_window": 2, "ffn_level": 1},
                                   repeats=1, max_problems=4, memory=False, deploy_preset="small")
    return validator.validate()


def test_report_compares_every_variant_on_the_same_problems(report):
    assert report["problems"] == 4 and report["optimized"] == "+ adaptive paths"
    names = {"reference", "transformers", "ternary", "+ nested width", "+ sparse_k", "+ fixed paths",
             "+ adaptive paths"}
    assert set(report["variants"]) == names
    for name in names:
        figures = report["variants"][name]
        assert 0.0 <= figures["accuracy"] <= 1.0 and figures["answer_time_s"] > 0
    optimized, reference = report["variants"]["+ adaptive paths"], report["variants"]["reference"]
    assert report["integrated_speedup"] == pytest.approx(reference["answer_time_s"] / optimized["answer_time_s"])
    assert report["variants"]["+ fixed paths"]["paths_total"] == 4 * 4  # every problem, every path
    assert optimized["paths_total"] <= 4 * 4
    for name in ("reference", "transformers", "+ adaptive paths"):
        assert report["variants"][name]["ttft_ms"]["median"] > 0
    assert set(report["phase1"]) == {"ttft_ms", "decode_tokens_per_s", "memory_mb", "accuracy_retention"}
    assert report["phase1"]["memory_mb"] == {"target": 500, "measured": None, "met": False, "direction": "at most"}
    rows = {row["step"]: row for row in report["ablation"]}
    assert rows["+ adaptive paths"]["speedup_vs_previous_step"] == pytest.approx(
        report["variants"]["+ fixed paths"]["answer_time_s"] / optimized["answer_time_s"])


def test_the_deployment_shape_section_is_labelled_and_its_speedup_is_two_measured_factors(report):
    deployment = report["deployment"]
    assert deployment["shape"] == "small" and deployment["architecture"]["hidden_size"] == 256
    assert deployment["weights"].startswith("random")
    optimized, reference = report["variants"]["+ adaptive paths"], report["variants"]["reference"]
    assert deployment["token_ratio"] == pytest.approx(reference["tokens_total"] / optimized["tokens_total"])
    per_token = deployment["per_token_speedup"]
    assert deployment["integrated_speedup"] == pytest.approx(per_token["median"] * deployment["token_ratio"])
    shape = deployment["variants"]
    assert {"optimized", "reference"} == set(shape) and shape["optimized"]["4_paths"]["step_ms"]["median"] > 0
    assert shape["optimized"]["model_file_mb"] < shape["reference"]["model_file_mb"] / 4  # 2-bit vs fp32 weights
    verdicts = deployment["phase1"]
    assert verdicts["ttft_ms"]["measured"] == shape["optimized"]["ttft_ms"]["median"]
    assert verdicts["accuracy_retention"]["measured"] == report["accuracy_retention"]  # the trained model's
    assert verdicts["memory_mb"]["measured"] is None and not verdicts["memory_mb"]["met"]  # memory=False here


def test_without_a_reference_the_comparison_is_reported_missing(trained_nested_sparse):
    report = InferenceValidator(str(trained_nested_sparse), None, TARGETS, repeats=1, max_problems=2,
                                memory=False, deploy_preset=None).validate()
    assert report["integrated_speedup"] is None and "no trained reference" in report["not_measured"]
    assert report["deployment"] is None
    assert "reference" not in report["variants"] or "accuracy" not in report["variants"]["reference"]
    assert not report["phase1"]["accuracy_retention"]["met"]


def test_a_reference_checkpoint_is_refused_as_the_optimized_model(trained_reference):
    with pytest.raises(ValueError, match="takes a BitNet checkpoint"):
        InferenceValidator(str(trained_reference), None, TARGETS, memory=False, deploy_preset=None).validate()


@needs_native
def test_without_a_tile_each_fused_shape_is_tuned_on_this_node_first(trained_checkpoint, tmp_path, monkeypatch):
    from ryot_ray.infer.engines import optimized_engine
    from ryot_ray.kernels.autotune import cache_path, load_cache
    from ryot_ray.train.checkpoint import load_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, tokenizer, config, _ = load_checkpoint(trained_checkpoint)
    config.inference.tile_size = None
    engine = optimized_engine(model, tokenizer, config, False, 1, 32)
    tuned = load_cache(cache_path())
    assert set(tuned) == {"64x192", "64x64", "64x256", "128x64"}  # tiny: qkv, o, gate/up, down
    down = engine.model_step.model.frozen.model["linears"]["down"]
    assert down["rows_per_tile"] == tuned["128x64"]["rows_per_tile"]

def test_without_the_native_step_the_deployment_shape_is_reported_not_measured(trained_nested_sparse, monkeypatch):
    from ryot_ray.infer import native

    monkeypatch.setattr(native, "ENGINE_MODULE", "ryot_ray.infer._absent")
    native.engine_library.cache_clear()
    try:
        report = InferenceValidator(str(trained_nested_sparse), None, TARGETS, repeats=1, max_problems=1,
                                    memory=False, deploy_preset="tiny").validate()
    finally:
        native.engine_library.cache_clear()
    assert report["kernel_path"]["name"] == "torch"  # the model's own forward answered
    assert report["deployment"]["shape"] == "tiny"
    assert report["deployment"]["not_measured"].startswith("the native step cannot run here")


def test_the_deployment_shape_is_the_models_architecture_gate_and_tying():
    from ryot_ray.config import ModelConfig
    from ryot_ray.validate.deployment import deployment_shape

    shape = deployment_shape("1b", model=ModelConfig(architecture="bitnet", ffn_activation="silu", tie_embeddings=True))
    assert (shape.model_type, shape.hidden_act, shape.tie_word_embeddings, shape.hidden_size) == (
        "bitnet", "silu", True, 2048)
    assert (deployment_shape("1b").model_type, deployment_shape("1b").hidden_act) == ("llama", "silu")
