"""The BitNet b1.58 2B4T block (`model.architecture: bitnet`) through the CLI: trained with
the QAT loop in llama.cpp's shape (SiLU gate, tied embeddings), frozen for the native step,
answering with it, and exported as a GGUF file that reads back as the model."""

import json

import gguf
import pytest
from transformers import BitNetForCausalLM

from native_marks import needs_native
from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.train.checkpoint import load_checkpoint
from tests.e2e.test_cli_train import ryot_ray
from tests.e2e.test_cli_validate import run
from tests.infer.test_export import expected_weights, tensors

pytestmark = [pytest.mark.ray, needs_native]


def test_a_bitnet_block_trains_freezes_answers_and_exports(capsys, tmp_path):
    done = ryot_ray("train", "--config", "configs/smoke.yaml", "--set", "model.architecture=bitnet",
                    "--set", "model.ffn_activation=silu", "--set", "model.tie_embeddings=true",
                    "--set", "train.epochs=1", "--results-dir", str(tmp_path), "--name", "bitnet")
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "bitnet" / "checkpoint"
    model, *_ = load_checkpoint(checkpoint)
    assert isinstance(model, BitNetForCausalLM) and model.lm_head.weight is model.model.embed_tokens.weight
    code, out, _ = run(capsys, "freeze", "--checkpoint", str(checkpoint))
    assert code == 0 and out.startswith("froze: ")
    frozen = FrozenModel.load(out.split()[1])
    assert (frozen.model["architecture"], frozen.model["ffn_activation"]) == ("bitnet", "silu")
    code, out, _ = run(capsys, "generate", "--checkpoint", str(checkpoint), "--prompt", "rev ab|",
                       "--max-new-tokens", "4")
    assert code == 0 and json.loads(out)["prompt"] == "rev ab|"

    exported = tmp_path / "out" / "bitnet.gguf"
    code, out, _ = run(capsys, "export", "--checkpoint", str(checkpoint), "--gguf", str(exported))
    assert code == 0 and out.startswith(f"wrote {exported} (")
    assert "Q8_0   tensors" in out  # tiny rows (64) are no whole TQ2_0 block: Q8_0 holds them
    read, want = tensors(exported), expected_weights(model)
    assert set(read) == set(want) and gguf.GGUFReader(exported).fields["general.architecture"].contents() == "bitnet"
    for name, (kind, shape, values) in read.items():
        assert shape == want[name].shape and abs(values - want[name]).max() <= abs(want[name]).max() / 250, name
