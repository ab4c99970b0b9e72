"""Bookkeeping of the decode benchmark on tiny shapes (no speed is asserted)."""

import json
import stat

import pytest

from ryot_ray.bench.decode import bench_decode, decode_bytes, frozen_variants, llama_cpp, table
from native_marks import needs_native

pytestmark = needs_native


@pytest.fixture(scope="module")
def result():
    return bench_decode("tiny", rounds=1, prompt_tokens=4, new_tokens=3, threads=[2, 1], ttft_prompt=6, paths=2)


def test_every_variant_at_every_thread_count(result):
    assert [run["threads"] for run in result["by_threads"]] == [2, 1]
    for run in result["by_threads"]:
        assert set(run["variants"]) == {"reference", "transformers", "ternary", "ternary_int8_head"}
        for name, variant in run["variants"].items():
            assert variant["decode_tokens_per_s"]["median"] > 0 and variant["ttft_ms_at_6_tokens"]["median"] > 0
            assert variant["fraction_of_bound"] == pytest.approx(
                variant["decode_tokens_per_s"]["median"] / variant["bandwidth_bound_tokens_per_s"])
            if name != "transformers":
                assert variant["step_2_paths_vs_1"]["median"] > 0
                split = variant["time_split_ms_per_token"]
                assert {"qkv", "attention", "down", "head"} <= set(split) and split["qkv"] > 0
        bytes_read = {name: v["bytes_read_per_token"] for name, v in run["variants"].items()}
        assert bytes_read["ternary_int8_head"] < bytes_read["ternary"] < bytes_read["reference"]
        assert set(run["speedups"]) == {f"{t} vs {p}" for t in ("ternary", "ternary_int8_head")
                                        for p in ("reference", "transformers")}
    assert "ternary_int8_head vs reference" in table(result)


def test_memory_is_measured_in_fresh_processes_the_native_ones_without_torch(result):
    for run in result["by_threads"]:
        memory = {name: v["memory"] for name, v in run["variants"].items()}
        assert all(m["peak_rss_mb"] > 20 and m["scope"] == "whole process" for m in memory.values())
        assert not any(memory[name]["torch_imported"] for name in ("reference", "ternary", "ternary_int8_head"))
        assert memory["transformers"]["torch_imported"]
        assert run["rss_fraction_of_reference"]["ternary"] == pytest.approx(
            memory["ternary"]["peak_rss_mb"] / memory["reference"]["peak_rss_mb"])


def test_decode_bytes_count_what_a_step_reads():
    _, frozen = frozen_variants("tiny")
    reference, ternary = frozen["reference"], frozen["ternary"]
    hidden, vocab = reference.model["hidden"], reference.model["vocab"]
    linears = sum(a.nbytes for n, a in reference.arrays.items() if n.endswith(".data"))
    kv = 2 * 2 * 4 * 16 * 10 * 4  # K and V, layers, kv heads, head dim, positions, fp32
    assert decode_bytes(reference, context=10) == linears + 4 * hidden + kv
    assert linears == 4 * (2 * (hidden * (3 * hidden) + hidden * hidden + 3 * hidden * 128) + vocab * hidden)
    assert decode_bytes(ternary, context=10) < decode_bytes(reference, context=10) / 2


def test_llama_cpp_figures_are_read_from_its_json_and_a_failed_run_is_kept(tmp_path):
    binary = tmp_path / "llama-bench"
    prefill = [{"n_prompt": 4, "n_gen": 0, "n_threads": 2, "avg_ts": 100.0, "stddev_ts": 1.0, "model_type": "TQ2_0"}]
    decode = [{"n_prompt": 0, "n_gen": 3, "n_threads": 2, "avg_ts": 50.0, "stddev_ts": 0.5, "model_type": "TQ2_0"}]
    binary.write_text(f"""#!/bin/sh
case "$*" in
  *bad.gguf*"-p 4"*) exit 132 ;;
  *"-p 4"*) echo '{json.dumps(prefill)}' ;;
  *) echo '{json.dumps(decode)}' ;;
esac
""")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    got = llama_cpp(binary, [tmp_path / "m.gguf", tmp_path / "bad.gguf"], [2], 4, 3, 1)
    assert [(r["model"], r["test"], r.get("tokens_per_s"), r.get("error")) for r in got] == [
        ("m.gguf", "prefill", 100.0, None), ("m.gguf", "decode", 50.0, None),
        ("bad.gguf", "prefill", None, "llama-bench exited with 132"), ("bad.gguf", "decode", 50.0, None)]


def test_greedy_answers_are_compared_token_by_token_with_llama_cpps(tmp_path, result):
    from ryot_ray.bench.decode import greedy_agreement
    from ryot_ray.infer.engine import SamplingConfig
    from ryot_ray.infer.load import native_engine

    frozen = frozen_variants("tiny")[1]["ternary"]
    engine = native_engine(frozen, 1, 32, 1)
    same, differs = (engine.generate([p], SamplingConfig(max_new_tokens=6)).texts[0] for p in ("rev ab|", "sort 3,1|"))
    engine.model_step.close()
    assert len(differs) >= 3  # (the seeded random model says no EOS early)
    changed = differs[:2] + ("#" if differs[2] != "#" else "@") + differs[3:]
    # llama-simple prints the BOS piece, the prompt, each new piece and a newline
    (tmp_path / "same.txt").write_text(f"<s>rev ab|{same}\n")
    (tmp_path / "differs.txt").write_text(f"<s>sort 3,1|{changed}\n")
    (tmp_path / "dropped.txt").write_text(f"<s>sort 31|{differs}\n")  # a character its vocabulary lacks
    simple = tmp_path / "llama-simple"
    simple.write_text(f"""#!/bin/sh
case "$*" in
  *bad.gguf*) exit 132 ;;
  *unknown.gguf*) cat {tmp_path}/dropped.txt ;;
  *"rev ab|"*) cat {tmp_path}/same.txt ;;
  *) cat {tmp_path}/differs.txt ;;
esac
""")
    simple.chmod(simple.stat().st_mode | stat.S_IEXEC)
    files = {"tq2_0": tmp_path / "m.gguf", "tq1_0": tmp_path / "bad.gguf", "q8_0": tmp_path / "unknown.gguf"}
    rows = greedy_agreement(simple, files, frozen, ["rev ab|", "sort 3,1|"], 6)
    assert [(r["type"], r.get("same"), r.get("leading_tokens_agreed"), r.get("error")) for r in rows] == [
        ("tq2_0", True, len(same), None), ("tq2_0", False, 2, None),
        ("tq1_0", None, None, "llama-simple exited with 132"), ("tq1_0", None, None, "llama-simple exited with 132"),
        ("q8_0", None, None, "llama-simple printed another prompt than it was given"),
        ("q8_0", None, None, "llama-simple printed another prompt than it was given")]
    assert rows[1]["llama_cpp"] == changed and rows[1]["ryot_ray"] == differs
    assert "failed: llama-simple exited with 132" in table({**result, "greedy_agreement": rows})


def test_a_checkpoint_is_exported_in_both_ternary_formats_or_refused_before_timing(tmp_path, smoke_config,
                                                                                 tokenizer):
    import dataclasses

    from ryot_ray.bench.decode import exported_ternary
    from ryot_ray.infer.export import ExportError
    from ryot_ray.model.build import build_model
    from ryot_ray.train.checkpoint import TrainingState, save_checkpoint

    for name, shape in (("gguf", dict(architecture="bitnet", ffn_activation="silu", tie_embeddings=True)),
                        ("llama", {})):
        config = dataclasses.replace(smoke_config, model=dataclasses.replace(smoke_config.model, **shape))
        save_checkpoint(tmp_path / name, build_model(config.model, tokenizer), tokenizer, config, TrainingState())
    files, prompts = exported_ternary(tmp_path / "gguf", tmp_path)
    assert {k: v.name for k, v in files.items()} == {"tq2_0": "gguf-tq2_0.gguf", "tq1_0": "gguf-tq1_0.gguf"}
    assert all(path.stat().st_size > 0 for path in files.values())
    data = smoke_config.data
    assert len(prompts) == len(data.families) * len(data.difficulties) and prompts[0].endswith("|")
    with pytest.raises(ExportError, match="a 'llama' model"):
        exported_ternary(tmp_path / "llama", tmp_path)
