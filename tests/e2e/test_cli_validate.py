"""`ryot-ray validate`, `generate` and `freeze` driven as a user would."""

import json
import shutil

import pytest

from native_marks import needs_native
from ryot_ray.cli import main
from ryot_ray.infer.engines import FROZEN_DIR
from tests.e2e.test_cli_train import ryot_ray


@pytest.mark.ray
def test_validate_runs_the_actor_and_writes_every_report(tmp_path, trained_nested_sparse, trained_reference):
    done = ryot_ray("validate", "--checkpoint", str(trained_nested_sparse), "--reference", str(trained_reference),
                    "--set", "inference.rlvr_paths=2", "--max-problems", "2", "--repeats", "1", "--no-memory",
                    "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on one Ray actor with" in done.stdout and "integrated speedup:" in done.stdout
    assert "memory_mb: at most 500.0, measured not measured -> NOT MET" in done.stdout
    assert "at the deployment shape tiny (random weights): integrated speedup" in done.stdout
    assert "Phase 1 at tiny (random weights):" in done.stdout
    assert "validation: answering 2 test problems" in done.stderr  # the actor's progress, as it happens
    report = json.loads((tmp_path / "inference_validation_report.json").read_text())
    assert report["problems"] == 2 and report["inference"]["rlvr_paths"] == 2
    assert report["deployment"]["shape"] == "tiny" and (tmp_path / "speedup_by_size.png").is_file()
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "optimization_analysis.json").is_file()


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_generate_answers_a_prompt_and_a_file(capsys, tmp_path, trained_checkpoint):
    code, out, _ = run(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "rev abc|",
                       "--max-new-tokens", "12")
    record = json.loads(out)
    assert code == 0 and record["prompt"] == "rev abc|" and record["paths"] == 1
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "rev ab|"}\n\n{"prompt": "rev xyz|"}\n')
    code, out, _ = run(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompts", str(prompts),
                       "--output", str(tmp_path / "answers.jsonl"), "--set", "inference.rlvr_paths=2")
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert code == 0 and [a["prompt"] for a in answers] == ["rev ab|", "rev xyz|"]
    assert all(1 <= a["paths"] <= 2 for a in answers)


def test_generate_says_when_adaptive_paths_cap_the_paths_asked_for(capsys, trained_checkpoint):
    asked = ["generate", "--checkpoint", str(trained_checkpoint), "--prompt", "rev ab|", "--max-new-tokens", "8",
             "--set", "inference.rlvr_paths=8", "--set", "inference.path_window=2"]
    code, out, err = run(capsys, *asked, "--set", "inference.adaptive_paths=true")
    assert code == 0 and json.loads(out)["paths"] <= 2
    assert err == ["ryot-ray: note: inference.rlvr_paths=8 is capped at 2 path(s) per prompt: with adaptive paths a "
                   "prompt of unknown difficulty gets one window (inference.path_window=2); --set "
                   "inference.adaptive_paths=false gives every prompt all of them"]
    code, out, err = run(capsys, *asked, "--set", "inference.adaptive_paths=false")
    assert code == 0 and json.loads(out)["paths"] == 8 and err == []


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.preset=1b"], "--set model.preset=1b: only inference.*"),
    (["--set", "inference.rlvr_paths=0"], "inference.rlvr_paths: 0 is below the minimum 1"),
    (["--set", "inference.ffn_level=1"], "inference.ffn_level: 1 needs model.mrl_depth above it"),
])
def test_bad_inference_overrides_stop_before_anything_runs(capsys, trained_checkpoint, argv, message):
    for command in (["validate"], ["generate", "--prompt", "x"]):
        code, _, err = run(capsys, *command, "--checkpoint", str(trained_checkpoint), *argv)
        assert code == 2 and len(err) == 1 and message in err[0], err


def test_validate_refuses_what_it_cannot_measure_before_ray_starts(capsys, tmp_path, trained_checkpoint,
                                                                   trained_reference):
    code, _, err = run(capsys, "validate", "--checkpoint", str(trained_checkpoint), "--set",
                       "validate.deploy_preset=huge")
    assert code == 2 and len(err) == 1 and "validate.deploy_preset: 'huge' is neither a preset" in err[0]
    code, _, err = run(capsys, "validate", "--checkpoint", str(trained_reference))
    assert code == 2 and len(err) == 1 and "holds the fp32 reference" in err[0] and "--reference" in err[0]


def test_bad_prompts_file_and_checkpoint(capsys, tmp_path, trained_checkpoint):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "rev ab|"}\n{"question": 1}\n')
    code, _, err = run(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompts", str(prompts))
    assert code == 2 and err == [f'ryot-ray: error: {prompts}:2: expected {{"prompt": "..."}}']
    code, _, err = run(capsys, "validate", "--checkpoint", str(tmp_path))
    assert code == 2 and "is not a ryot-ray checkpoint" in err[0]


@needs_native
def test_freeze_writes_the_frozen_file_once_and_generate_reuses_it(capsys, tmp_path, trained_checkpoint,
                                                                   trained_reference):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(trained_checkpoint, checkpoint, ignore=shutil.ignore_patterns(FROZEN_DIR))
    code, out, _ = run(capsys, "freeze", "--checkpoint", str(checkpoint), "--set", "inference.tile_size=2")
    frozen = sorted((checkpoint / FROZEN_DIR).iterdir())
    assert code == 0 and out.startswith(f"froze: {frozen[0]}") and len(frozen) == 1
    assert "tiles {'qkv': 2, 'o': 2, 'gate_up': 2, 'down': 2}" in out
    code, out, _ = run(capsys, "freeze", "--checkpoint", str(checkpoint), "--set", "inference.tile_size=2")
    assert code == 0 and out.startswith(f"already frozen, reused: {frozen[0]}")
    stamp = frozen[0].stat().st_mtime_ns
    code, *_ = run(capsys, "generate", "--checkpoint", str(checkpoint), "--prompt", "rev ab|", "--max-new-tokens",
                   "4", "--set", "inference.tile_size=2")
    assert code == 0 and sorted((checkpoint / FROZEN_DIR).iterdir()) == frozen
    assert frozen[0].stat().st_mtime_ns == stamp
    code, _, err = run(capsys, "freeze", "--checkpoint", str(trained_reference))
    assert code == 2 and "freeze takes a BitNet checkpoint" in err[-1]
