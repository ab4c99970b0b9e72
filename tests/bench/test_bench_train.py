"""The training benchmark's bookkeeping (its speed figures are for `ryot-ray bench`, not tests)."""

import json

import pytest
from pathlib import Path

from ryot_ray.bench.train import bench_train, table
from ryot_ray.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_bench_train_times_both_models_on_the_same_batches(smoke_config):
    result = bench_train(smoke_config, rounds=2, steps=2, threads=1)
    bitnet, reference = result["tokens_per_s"]["bitnet"], result["tokens_per_s"]["reference"]
    assert len(bitnet["samples"]) == len(reference["samples"]) == 2
    assert bitnet["min"] <= bitnet["median"] <= bitnet["max"]
    # the speedup of each round is the ratio of the two models' times in that round
    expected = [b / r for b, r in zip(bitnet["samples"], reference["samples"])]
    assert result["speedup_vs_reference"]["samples"] == pytest.approx(expected, rel=1e-12)
    assert result["machine"]["cpu"]["logical_cpus"] >= 1
    assert "speedup" in table(result)


def test_bench_train_at_a_sequence_trains_on_full_rows_of_it(smoke_config):
    result = bench_train(smoke_config, rounds=1, steps=2, threads=1, sequence=40)
    assert result["sequence"] == 40 and result["preset"] == "tiny"
    assert result["tokens_per_round"] == 2 * smoke_config.train.batch_size * 40
    assert "preset tiny" in table(result) and "sequence 40" in table(result)


def test_bench_cli_saves_json(tmp_path, capsys):
    code = main(["bench", "train", "--config", str(SMOKE), "--rounds", "1", "--steps", "1",
                 "--results-dir", str(tmp_path)])
    assert code == 0
    saved = list((tmp_path / "bench").glob("train-*.json"))
    result = json.loads(saved[0].read_text())
    assert len(saved) == 1 and result["benchmark"] == "train"
    assert result["sequence"] is None  # the examples as they are, unless asked
    assert "tokens/s" in capsys.readouterr().out
    assert main(["bench", "train", "--config", str(SMOKE), "--rounds", "0"]) == 2
    assert main(["bench", "train", "--config", str(SMOKE), "--sequence", "1"]) == 2
    assert main(["bench", "train", "--config", str(SMOKE), "--set", "model.preset=nope"]) == 2
