"""`ryot-ray import`: a `transformers` bitnet checkpoint with packed ternary weights (made
here with `transformers`, no network) becomes a ryot-ray checkpoint that answers the same
greedy tokens in the native engine as in `transformers`, and that generate, freeze and
validate take as it is; a Llama checkpoint becomes the full-precision reference."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from native_marks import needs_native
from ryot_ray.config import InferenceConfig
from ryot_ray.infer.engine import SamplingConfig
from ryot_ray.infer.engines import model_engine
from ryot_ray.model.build import model_config
from ryot_ray.train.checkpoint import load_checkpoint, read_checkpoint_record
from tests.e2e.test_cli_validate import run
from tests.model.test_pretrained import OFFLINE_TERNARY, bitnet_checkpoint

NEW_TOKENS = 12


@needs_native
def test_an_imported_packed_bitnet_model_answers_as_transformers_does(capsys, tmp_path, tokenizer):
    source, checkpoint = tmp_path / "hf", tmp_path / "imported"
    source.mkdir()
    bitnet_checkpoint(source, tokenizer, OFFLINE_TERNARY)
    code, out, _ = run(capsys, "import", "--pretrained", str(source), "--checkpoint", str(checkpoint))
    assert code == 0 and out.strip() == f"imported {source}: a BitNet (ternary) bitnet model -> {checkpoint}"
    assert read_checkpoint_record(checkpoint)["config"]["model"]["pretrained"] == str(source)

    prompt = tokenizer("12+34=46;7*8=")["input_ids"]
    theirs = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    want = theirs.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                           pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    model, loaded_tokenizer, *_ = load_checkpoint(checkpoint)
    engine = model_engine(model, loaded_tokenizer, InferenceConfig(), 1, 64)
    got = engine.generate([tokenizer.decode(prompt)], SamplingConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True))
    assert got.token_ids[0] == want

    code, out, _ = run(capsys, "freeze", "--checkpoint", str(checkpoint))
    assert code == 0 and out.startswith("froze: ")
    code, *_ = run(capsys, "generate", "--checkpoint", str(checkpoint), "--prompt", "12+34|", "--max-new-tokens", "4")
    assert code == 0


def test_a_llama_checkpoint_imports_as_the_full_precision_reference(capsys, tmp_path, tokenizer):
    source = tmp_path / "llama"
    LlamaForCausalLM(model_config("tiny", tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    code, out, _ = run(capsys, "import", "--pretrained", str(source), "--checkpoint", str(tmp_path / "ref"))
    assert code == 0 and "a full-precision llama model" in out
    code, _, err = run(capsys, "import", "--pretrained", str(source), "--checkpoint", str(tmp_path / "ref"))
    assert code == 2 and "exists" in err[-1]
