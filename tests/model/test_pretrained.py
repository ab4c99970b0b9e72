"""`transformers` checkpoints read as they are: a Llama, and a bitnet model with float,
online-quantized or packed ternary weights, made here with `transformers` and saved with
`save_pretrained` (no network)."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM, LlamaForCausalLM
from transformers.integrations.bitnet import pack_weights

from ryot_ray.config import ConfigError, ModelConfig, load_config
from ryot_ray.model.bitlinear import BareBitLinear
from ryot_ray.model.build import ONLINE_TERNARY, build_model, model_config
from ryot_ray.model.pretrained import latent_weight, pretrained_model_config
from ryot_ray.model.quantize import ternarize
from ryot_ray.train.checkpoint import TrainingState, save_checkpoint

OFFLINE_TERNARY = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
PROMPT = "12+34|"


def bitnet_checkpoint(directory, tokenizer, quantization: dict | None) -> BitNetForCausalLM:
    """A tiny random `transformers` bitnet model saved in `directory`: float weights, with
    `quantization` in its config; packed 2-bit weights for the offline one."""
    torch.manual_seed(0)
    model = BitNetForCausalLM(model_config("tiny", tokenizer, "bitnet")).eval()
    for parameter in model.parameters():
        if parameter.ndim == 1:
            torch.nn.init.normal_(parameter, 1.0, 0.3)
    tokenizer.save_pretrained(directory)
    if quantization is None or quantization["quantization_mode"] == "online":
        model.config.quantization_config = quantization
        model.save_pretrained(directory)
        return model
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            codes, scale = ternarize(tensor)
            state[name], state[name + "_scale"] = pack_weights(codes.to(torch.int8)), (1 / scale).reshape(1)
        else:
            state[name] = tensor.contiguous()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict() | {"quantization_config": quantization, "architectures": ["BitNetForCausalLM"]}
    (directory / "config.json").write_text(json.dumps(config))
    return model


def test_latent_weights_ternarize_to_the_codes_and_scale_they_were_made_from():
    codes = torch.randint(-1, 2, (64, 48), generator=torch.Generator().manual_seed(0)).float()
    for scale in (torch.tensor(0.0123), torch.tensor(3.5)):
        got_codes, got_scale = ternarize(latent_weight(codes, scale))
        assert torch.equal(got_codes, codes) and torch.allclose(got_scale, scale, rtol=1e-6)
    assert torch.equal(ternarize(latent_weight(torch.ones(4, 4), torch.tensor(2.0)))[0], torch.ones(4, 4))


@pytest.mark.parametrize("quantization, ternary", [(None, False), (ONLINE_TERNARY, True), (OFFLINE_TERNARY, True)])
def test_a_bitnet_checkpoint_computes_what_transformers_computes(tmp_path, tokenizer, quantization, ternary):
    bitnet_checkpoint(tmp_path, tokenizer, quantization)
    config = pretrained_model_config(str(tmp_path))
    assert (config.architecture, config.quantization) == ("bitnet", "bitnet" if ternary else "none")
    model = build_model(config, tokenizer).eval()
    assert all(type(m) is BareBitLinear for m in model.model.layers[0].self_attn.children() if isinstance(
        m, torch.nn.Linear)) == ternary
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("12+34=46;7*8=56")["input_ids"]])
    with torch.no_grad():
        ours, want = model(ids).logits, theirs(ids).logits
    assert torch.equal(ours.argmax(-1), want.argmax(-1))
    assert (ours - want).abs().max() < 1e-2 * want.abs().max()


def test_a_llama_checkpoint_is_not_read_as_a_bitnet_one(tmp_path, tokenizer):
    LlamaForCausalLM(model_config("tiny", tokenizer)).save_pretrained(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  architecture: bitnet\n  pretrained: {tmp_path}\n")
    with pytest.raises(ConfigError, match="is a 'llama' model; set model.architecture: llama"):
        load_config(path)
    assert pretrained_model_config(str(tmp_path)) == ModelConfig(quantization="none", pretrained=str(tmp_path))


def test_packed_weights_are_what_the_checkpoint_computes_with_for_the_full_precision_model(tmp_path, tokenizer):
    source = bitnet_checkpoint(tmp_path, tokenizer, OFFLINE_TERNARY)
    config = ModelConfig(architecture="bitnet", quantization="none", pretrained=str(tmp_path))
    weight = build_model(config, tokenizer).model.layers[0].mlp.down_proj.weight
    codes, scale = ternarize(source.model.layers[0].mlp.down_proj.weight)
    assert torch.allclose(weight, codes * scale, rtol=1e-6)


def test_ternary_values_with_a_scale_read_as_transformers_reads_them(tmp_path, tokenizer):
    """`autobitlinear` stored offline: ternary values, the output times `weight_scale`."""
    source = bitnet_checkpoint(tmp_path, tokenizer, None)
    state = {name: tensor.contiguous() for name, tensor in source.state_dict().items()}
    for name in [n for n in state if n.startswith("model.layers.") and n.endswith("_proj.weight")]:
        codes, scale = ternarize(state[name])
        state[name], state[name + "_scale"] = codes, scale.reshape(1)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    storage = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    config = json.loads((tmp_path / "config.json").read_text()) | {"quantization_config": storage}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = build_model(pretrained_model_config(str(tmp_path)), tokenizer)
    for name, tensor in state.items():
        if name.endswith("_proj.weight"):
            got = ternarize(model.get_parameter(name).detach())
            assert torch.equal(got[0], tensor) and torch.allclose(got[1], state[name + "_scale"][0], rtol=1e-6)


def test_a_ryot_ray_checkpoint_is_read_without_its_optimizer_state(tmp_path, tokenizer, smoke_config):
    config = replace(smoke_config, model=ModelConfig(preset="tiny", architecture="bitnet"))
    model = build_model(config.model, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters())
    batch = tokenizer(["1+1|>2"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, tokenizer, config, TrainingState(), optimizer)
    assert (tmp_path / "optimizer.safetensors").is_file()
    again = build_model(ModelConfig(architecture="bitnet", pretrained=str(tmp_path)), tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_llama_with_bitnet_quantization_is_refused_by_name(tmp_path, tokenizer):
    model = LlamaForCausalLM(model_config("tiny", tokenizer))
    model.config.quantization_config = ONLINE_TERNARY
    model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="a 'llama' model with bitnet quantization"):
        pretrained_model_config(str(tmp_path))
