"""`transformers` checkpoints read as they are: a Llama, and a bitnet model with float,
online-quantized or packed ternary weights, made here with `transformers` and saved with
`save_pretrained` (no network)."""

import json

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
