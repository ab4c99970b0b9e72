"""Argument and config errors end with one line on stderr and exit code 2, before Ray."""

from pathlib import Path

import pytest

from ryot_ray.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_bad_config_value(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  workers: -3\n")
    code, err = run(capsys, "train", "--config", str(path), "--results-dir", str(tmp_path))
    assert code == 2
    assert err == [f"ryot-ray: error: {path}: train.workers: -3 is below the minimum 1"]


def test_missing_config_file(capsys, tmp_path):
    code, err = run(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and len(err) == 1 and "no such config file" in err[0]


def test_bad_workers_flag(capsys, tmp_path):
    code, err = run(capsys, "train", "--config", str(REPO / "configs/smoke.yaml"), "--workers", "0",
                    "--results-dir", str(tmp_path))
    assert code == 2 and "train.workers: 0 is below the minimum 1" in err[0]


def test_knob_too_large_for_the_preset_stops_before_anything_is_written(capsys, tmp_path):
    code, err = run(capsys, "train", "--config", str(REPO / "configs/smoke.yaml"), "--set", "model.mrl_depth=2",
                    "--set", "model.sparse_k=100", "--results-dir", str(tmp_path))
    assert code == 2 and err == ["ryot-ray: error: model.sparse_k: 100 activations is above the narrowest FFN width 64"]
    assert list(tmp_path.iterdir()) == []


def test_existing_experiment_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, err = run(capsys, "train", "--config", str(REPO / "configs/smoke.yaml"), "--name", "taken",
                    "--results-dir", str(tmp_path))
    assert code == 2 and "pass --resume taken" in err[0]
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_resume_of_unknown_experiment(capsys, tmp_path):
    code, err = run(capsys, "train", "--resume", "ghost", "--results-dir", str(tmp_path))
    assert code == 2 and "--resume ghost: no experiment" in err[0]


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fly"])
    assert exit_.value.code == 2


def test_info_without_ray_prints_machine_facts(capsys):
    import json

    assert main(["info", "--no-ray"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["cpu"]["logical_cpus"] >= 1
    assert facts["versions"]["torch"].startswith("2.")


@pytest.mark.parametrize("argv, message", [
    (["bench", "kernels", "--calls", "0"], "--calls must be at least 1"),
    (["bench", "kernels", "--rows-per-tile", "9"], "--rows-per-tile must be 1 to 8"),
    (["bench", "kernels", "--tokens-per-tile", "0"], "--tokens-per-tile must be 1 to 8"),
    (["bench", "decode", "--new-tokens", "1"], "--new-tokens at least 2"),
])
def test_bad_bench_numbers(capsys, argv, message):
    code, err = run(capsys, *argv)
    assert code == 2 and len(err) == 1 and message in err[0]


@pytest.mark.parametrize("flag, value", [("--shapes", "2048"), ("--shapes", "2x3x4"), ("--shapes", "0x8"),
                                         ("--tokens", "1,a"), ("--tokens", "0")])
def test_bad_bench_lists_are_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "kernels", flag, value])
    assert exit_.value.code == 2 and "expected" in capsys.readouterr().err
