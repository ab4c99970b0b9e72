"""Bookkeeping of the kernel benchmark on tiny shapes (no speed is asserted)."""

import pytest

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
