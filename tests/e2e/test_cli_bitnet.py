"""The BitNet b1.58 2B4T block (`model.architecture: bitnet`) through the CLI: trained with
the QAT loop, frozen for the native step, answering with it."""

import json

import pytest
from transformers import BitNetForCausalLM

from native_marks import needs_native
from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.train.checkpoint import load_checkpoint
from tests.e2e.test_cli_train import ryot_ray
from tests.e2e.test_cli_validate import run

pytestmark = [pytest.mark.ray, needs_native]


def test_a_bitnet_block_trains_freezes_and_answers(capsys, tmp_path):
    done = ryot_ray("train", "--config", "configs/smoke.yaml", "--set", "model.architecture=bitnet",
                    "--set", "train.epochs=1", "--results-dir", str(tmp_path), "--name", "bitnet")
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "bitnet" / "checkpoint"
    model, *_ = load_checkpoint(checkpoint)
    assert isinstance(model, BitNetForCausalLM)
    code, out, _ = run(capsys, "freeze", "--checkpoint", str(checkpoint))
    assert code == 0 and out.startswith("froze: ")
    frozen = FrozenModel.load(out.split()[1])
    assert (frozen.model["architecture"], frozen.model["ffn_activation"]) == ("bitnet", "relu2")
    code, out, _ = run(capsys, "generate", "--checkpoint", str(checkpoint), "--prompt", "rev ab|",
                       "--max-new-tokens", "4")
    assert code == 0 and json.loads(out)["prompt"] == "rev ab|"
