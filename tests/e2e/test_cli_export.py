"""`ryot-ray export` refuses, in one line and without writing, a checkpoint llama.cpp's
bitnet graph would compute differently (the export itself: test_cli_bitnet.py)."""

import dataclasses

from ryot_ray.model.build import build_model
from ryot_ray.train.checkpoint import TrainingState, save_checkpoint
from tests.e2e.test_cli_validate import run


def test_a_model_llama_cpp_would_compute_differently_is_refused(capsys, tmp_path, smoke_config, tokenizer):
    config = dataclasses.replace(smoke_config, model=dataclasses.replace(smoke_config.model, architecture="bitnet"))
    save_checkpoint(tmp_path / "relu2", build_model(config.model, tokenizer), tokenizer, config, TrainingState())
    code, _, err = run(capsys, "export", "--checkpoint", str(tmp_path / "relu2"), "--gguf", str(tmp_path / "x.gguf"))
    assert code == 2 and "ffn_activation 'relu2': llama.cpp's bitnet graph runs its FFN gate in silu" in err[-1]
    assert not (tmp_path / "x.gguf").exists()
