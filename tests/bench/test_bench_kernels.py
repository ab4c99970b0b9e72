"""Bookkeeping of the kernel and decode benchmarks on tiny shapes (no speed is asserted)."""

import pytest

from ryot_ray.bench.decode import bench_decode, decode_bytes, build_variant, peak_rss, table as decode_table
from ryot_ray.bench.kernels import bench_kernels, table as kernels_table
from ryot_ray.kernels.ternary import native_isas


def test_kernel_rows_hold_every_path_and_paired_ratios():
    result = bench_kernels(shapes=[(64, 48)], tokens=[1, 3], rounds=2, calls=1, cycle_bytes=2**20)
    assert [(r["k"], r["n"], r["m"]) for r in result["rows"]] == [(64, 48, 1), (64, 48, 3)]
    expected = {"fp32", "bf16", "torch_int8"} | ({"ternary", "read_roofline"} if native_isas() else set())
    for row in result["rows"]:
        assert set(row["microseconds"]) == expected
        fp32 = row["microseconds"]["fp32"]["samples"]
        for name, ratio in row["speedup_vs_fp32"].items():
            assert ratio["samples"] == pytest.approx([f / v for f, v in zip(fp32, row["microseconds"][name]["samples"])])
        if "ternary" in row["microseconds"]:
            samples = {name: figures["samples"] for name, figures in row["microseconds"].items()}
            for key, over in (("ternary_vs_torch_int8", "torch_int8"), ("ternary_vs_bf16", "bf16"),
                              ("ternary_fraction_of_roofline", "read_roofline")):
                want = [o / t for o, t in zip(samples[over], samples["ternary"])]
                assert row[key]["samples"] == pytest.approx(want), key
    assert "K x N" in kernels_table(result)


def test_decode_variants_and_bounds():
    result = bench_decode("tiny", rounds=1, prompt_tokens=4, new_tokens=3, memory=False)
    assert set(result["variants"]) == {"reference", "transformers", "ternary", "ternary_int8_head"}
    for variant in result["variants"].values():
        assert variant["decode_tokens_per_s"]["median"] > 0 and variant["ttft_ms"]["median"] > 0
        assert variant["fraction_of_bound"] == pytest.approx(
            variant["decode_tokens_per_s"]["median"] / variant["bandwidth_bound_tokens_per_s"])
    bytes_read = {name: v["bytes_read_per_token"] for name, v in result["variants"].items()}
    assert bytes_read["ternary_int8_head"] < bytes_read["ternary"] < bytes_read["reference"]
    for name in ("reference", "ternary", "ternary_int8_head"):
        split = result["variants"][name]["time_split"]
        assert split["linear_ms_per_token"] > 0 and split["outside_linears_ms_per_token"] > 0
    assert set(result["speedups"]) == {f"{t} vs {p}" for t in ("ternary", "ternary_int8_head")
                                       for p in ("reference", "transformers")}
    assert "ternary_int8_head vs reference" in decode_table(result)


def test_decode_bytes_count_packed_weights_for_the_frozen_model():
    reference, ternary = build_variant("reference", "tiny"), build_variant("ternary", "tiny")
    linear_fp32 = sum(p.numel() * 4 for n, p in reference.named_parameters() if "proj" in n or "lm_head" in n)
    kv = 2 * 2 * 4 * 16 * 10 * 4  # K and V, layers, kv heads, head dim, positions, fp32
    assert decode_bytes(reference, context=10) == linear_fp32 + kv
    assert decode_bytes(ternary, context=10) < linear_fp32 / 4


def test_peak_rss_is_measured_in_a_fresh_process():
    peak, answering_only = peak_rss("ternary", "tiny", prompt_tokens=4, new_tokens=2, threads=1)
    assert peak > 50 and answering_only
