import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ryot_ray.config import ModelConfig
from ryot_ray.model.build import build_model
from ryot_ray.train.checkpoint import (
    CheckpointError, TrainingState, atomic_directory, load_checkpoint, load_optimizer,
    read_checkpoint_record, save_checkpoint,
)
from ryot_ray.train.loop import build_optimizer


@pytest.fixture
def trained(smoke_config, tokenizer):
    torch.manual_seed(0)
    model = build_model(smoke_config.model, tokenizer)
    optimizer = build_optimizer(model, smoke_config)
    batch = tokenizer(["12+3|>15"] * 2, return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_optimizer_and_state(tmp_path, trained, smoke_config, tokenizer):
    model, optimizer = trained
    state = TrainingState(epoch=2, step=40, status="finished", history=[{"epoch": 1}, {"epoch": 2}])
    save_checkpoint(tmp_path, model, tokenizer, smoke_config, state, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.json", "tokenizer_config.json",
    ]
    loaded, loaded_tokenizer, config, loaded_state = load_checkpoint(tmp_path)
    assert config == smoke_config and loaded_state == state
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    batch = tokenizer(["7+8|"], return_tensors="pt")
    assert loaded_tokenizer("7+8|")["input_ids"] == batch["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, loaded(**batch).logits)

    fresh = build_optimizer(build_model(smoke_config.model, tokenizer), smoke_config)
    load_optimizer(tmp_path, fresh, read_checkpoint_record(tmp_path))
    originals = [p for group in optimizer.param_groups for p in group["params"]]
    restored = [p for group in fresh.param_groups for p in group["params"]]
    for original, again in zip(originals, restored):
        a, b = optimizer.state[original], fresh.state[again]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert a["step"] == b["step"]
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_a_damaged_tensor_file_is_named_before_anything_loads(tmp_path, trained, smoke_config, tokenizer,
                                                              name, damage):
    model, optimizer = trained
    save_checkpoint(tmp_path, model, tokenizer, smoke_config, TrainingState(), optimizer)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        data[-10] ^= 0xFF  # inside a tensor: the header still reads
        path.write_bytes(data)
    else:
        path.unlink()
    expected = "missing" if damage == "delete" else "truncated or corrupted"
    with pytest.raises(CheckpointError, match=f"{name}: {expected}"):  # what a resumed worker checks
        read_checkpoint_record(tmp_path, verify=("model.safetensors", "optimizer.safetensors"))
    if name == "model.safetensors":
        with pytest.raises(CheckpointError, match=f"{name}: {expected}"):  # what inference checks
            load_checkpoint(tmp_path)
    else:
        load_checkpoint(tmp_path)  # inference reads no optimizer state, so it does not hash it


def test_unreadable_weights_without_a_digest_name_the_file(tmp_path, trained, smoke_config, tokenizer):
    model, _ = trained
    save_checkpoint(tmp_path, model, tokenizer, smoke_config, TrainingState())
    record = read_checkpoint_record(tmp_path)
    del record["files"]  # a checkpoint written before digests were kept
    (tmp_path / "state.json").write_text(json.dumps(record))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be read"):
        load_checkpoint(tmp_path)


def test_weights_of_another_model_are_refused(tmp_path, trained, smoke_config, tokenizer):
    model, _ = trained
    save_checkpoint(tmp_path, model, tokenizer, smoke_config, TrainingState())
    record = read_checkpoint_record(tmp_path)
    record["config"]["model"]["quantization"] = "none"  # a model without BitLinear norms
    (tmp_path / "state.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(tmp_path)


def test_missing_or_broken_state(tmp_path):
    with pytest.raises(CheckpointError, match="state.json: missing"):
        load_checkpoint(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json: not valid JSON"):
        read_checkpoint_record(tmp_path)


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a.txt").write_text("half-written")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("two")
    assert (target / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temp or old copies left


def test_model_config_round_trip_of_reference(tmp_path, smoke_config, tokenizer):
    smoke_config.model = ModelConfig(preset="tiny", quantization="none")
    model = build_model(smoke_config.model, tokenizer)
    save_checkpoint(tmp_path, model, tokenizer, smoke_config, TrainingState())
    loaded, *_ = load_checkpoint(tmp_path)
    assert not any("norm" in n and "proj" in n for n, _ in loaded.named_parameters())


@pytest.mark.parametrize("architecture, quantization", [("bitnet", "bitnet"), ("bitnet", "none"), ("llama", "none")])
def test_a_checkpoint_transformers_computes_loads_with_from_pretrained(tmp_path, smoke_config, tokenizer,
                                                                        architecture, quantization):
    """The bitnet block's ternary model (transformers ternarizes its latent weights as it
    loads them) and every full-precision model; ryot-ray's own state stays beside them."""
    config = replace(smoke_config, model=ModelConfig(preset="tiny", architecture=architecture,
                                                      quantization=quantization))
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer).eval()
    save_checkpoint(tmp_path, model, tokenizer, config, TrainingState())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is type(model) and "llama_config" in read_checkpoint_record(tmp_path)
    ids = AutoTokenizer.from_pretrained(tmp_path)("12+34|>46", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = model(ids).logits, loaded(ids).logits
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1)) and torch.allclose(ours, theirs, atol=1e-5)


def test_a_llama_bitnet_checkpoint_is_not_offered_to_transformers(tmp_path, trained, smoke_config, tokenizer):
    """No `transformers` class has a BitLinear's own SubLN: no config.json, so
    `from_pretrained` refuses the directory instead of loading another model."""
    save_checkpoint(tmp_path, trained[0], tokenizer, smoke_config, TrainingState())
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="Unrecognized model"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
