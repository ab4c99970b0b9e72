"""Argument and config errors end with one line on stderr and exit code 2, before Ray."""

from pathlib import Path

import pytest

from ryot_ray.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


SMOKE = str(REPO / "configs/smoke.yaml")
SMOKE_SPACE = str(REPO / "search_spaces/smoke.yaml")

# (file to write as bad.yaml or None, argv with {bad} and {dir} filled in, what the one line says)
BAD_INPUT = [
    ("train: [\n", ["train", "--config", "{bad}"], "bad.yaml: line 2 is not valid YAML"),
    ("trian:\n  workers: 1\n", ["train", "--config", "{bad}"], "unknown key trian"),
    ("train:\n  lr: fast\n", ["train", "--config", "{bad}"], "train.lr: expected float, got 'fast'"),
    ("train:\n  workers: -3\n", ["train", "--config", "{bad}"], "train.workers: -3 is below the minimum 1"),
    ("data:\n  train_per_level: 0\n", ["train", "--config", "{bad}"], "data.train_per_level: 0 is below the minimum 1"),
    (None, ["train", "--config", SMOKE, "--workers", "0"], "train.workers: 0 is below the minimum 1"),
    ("space:\n  sparse_k: {choice: []}\n", ["tune", "--space", "{bad}"], "space.sparse_k: choice needs a non-empty list"),
    ("space:\n  train.lr: {uniform: [0.1, 0.01]}\n", ["tune", "--space", "{bad}"], "needs [low, high] with low < high"),
    (None, ["train", "--config", "{dir}/missing.yaml"], "missing.yaml: no such config file"),
    (None, ["tune", "--space", "{dir}/missing.yaml"], "missing.yaml: no such config file"),
    (None, ["validate", "--checkpoint", "{dir}/missing"], "state.json: missing"),
    ("{not json", ["validate", "--checkpoint", "{dir}"], "state.json: not valid JSON"),
    (None, ["train", "--config", SMOKE, "--set", "model.preset=1b", "--workers", "16"],
     "model preset 1b: training needs at least 262.3 GiB (16 worker(s) x 16.4 GiB"),
    (None, ["train", "--config", SMOKE, "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
    (None, ["tune", "--space", SMOKE_SPACE, "--address", "127.0.0.1:1"], "no Ray cluster answers there"),
    (None, ["tune", "--resume", "keep", "--samples", "3"], "--resume continues an experiment as it was started"),
    (None, ["tune", "--resume", "nothing-here"], "--resume nothing-here: no experiment at"),
    (None, ["tune", "--space", SMOKE_SPACE, "--samples", "0"], "--samples must be at least 1"),
    (f"config: {SMOKE}\nspeed_at: 9b\nspace:\n  sparse_k: 0.5\n", ["tune", "--space", "{bad}"],
     "bad.yaml: speed_at: '9b' is neither a preset"),
    (None, ["bench", "tune", "--space", SMOKE_SPACE, "--repeats", "0"], "--repeats must be at least 1"),
    (None, ["train", "--config", SMOKE, "--name", "keep"], "exists; pass --resume keep"),
]


@pytest.mark.parametrize("content, argv, message", BAD_INPUT)
def test_bad_input_is_one_line_and_loses_nothing(capsys, tmp_path, content, argv, message):
    results = tmp_path / "results"
    (results / "keep").mkdir(parents=True)
    (results / "keep" / "config.yaml").write_text("mine")
    bad = tmp_path / "bad.yaml"
    if content is not None:
        bad.write_text(content)
        (tmp_path / "state.json").write_text(content)  # for the checkpoint case
    code, err = run(capsys, *[a.format(bad=bad, dir=tmp_path) for a in argv], "--results-dir", str(results))
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith("ryot-ray: error: ")
    assert [p.name for p in results.iterdir()] == ["keep"]
    assert (results / "keep" / "config.yaml").read_text() == "mine"


def test_knob_too_large_for_the_preset_stops_before_anything_is_written(capsys, tmp_path):
    code, err = run(capsys, "train", "--config", str(REPO / "configs/smoke.yaml"), "--set", "model.mrl_depth=2",
                    "--set", "model.sparse_k=100", "--results-dir", str(tmp_path))
    assert code == 2 and err == ["ryot-ray: error: model.sparse_k: 100 activations is above the narrowest FFN width 64"]
    assert list(tmp_path.iterdir()) == []


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
    (["bench", "kernels", "--rows-per-tile", "3"], "--rows-per-tile must be one of 1, 2, 4, 8"),
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
