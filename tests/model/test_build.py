import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitNetForCausalLM, LlamaForCausalLM
from transformers.models.bitnet.modeling_bitnet import BitNetRMSNorm

from ryot_ray.config import ARCHITECTURES as ARCHITECTURE_NAMES
from ryot_ray.config import MODEL_PRESETS, ModelConfig
from ryot_ray.model.bitlinear import BareBitLinear, BitLinear
from ryot_ray.model.build import ARCHITECTURES, PRESETS, build_model, exported_config, model_config


def linears(model):
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_bitnet_converts_every_decoder_linear(tokenizer):
    model = build_model(ModelConfig(preset="tiny", quantization="bitnet"), tokenizer)
    kinds = linears(model)
    decoder = {n: k for n, k in kinds.items() if n.startswith("model.layers.")}
    assert len(decoder) == 7 * PRESETS["tiny"]["num_hidden_layers"]
    assert set(decoder.values()) == {BitLinear}
    assert kinds["lm_head"] is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding


def test_reference_keeps_full_precision_linears(tokenizer):
    model = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    assert set(linears(model).values()) == {nn.Linear}


def test_same_seed_same_weights_for_both_kinds(tokenizer):
    torch.manual_seed(0)
    bitnet = build_model(ModelConfig(preset="tiny"), tokenizer)
    torch.manual_seed(0)
    reference = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    q = bitnet.model.layers[0].self_attn.q_proj
    assert torch.equal(q.weight, reference.model.layers[0].self_attn.q_proj.weight)


def test_1b_preset_has_tinyllama_shapes(tokenizer):
    config = model_config("1b", tokenizer)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (2048, 5632, 22)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 4, 32000)


def test_every_preset_and_architecture_the_config_takes_has_a_builder():
    assert tuple(PRESETS) == MODEL_PRESETS and tuple(ARCHITECTURES) == ARCHITECTURE_NAMES


def test_base_preset_has_25_to_50m_parameters_in_its_decoder_blocks(tokenizer):
    """The size where activations and weights, not the runtime, make up training memory."""
    model = build_model(ModelConfig(preset="base", mrl_depth=2, sparse_k=0.25), tokenizer)
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    assert 25e6 <= blocks <= 50e6
    assert model.config.max_position_embeddings >= 256


def test_pretrained_checkpoint_converts_and_keeps_its_weights(tokenizer, tmp_path):
    torch.manual_seed(0)
    source = LlamaForCausalLM(model_config("tiny", tokenizer))
    source.save_pretrained(tmp_path)
    model = build_model(ModelConfig(pretrained=str(tmp_path), quantization="bitnet"), tokenizer)
    converted = model.model.layers[1].mlp.down_proj
    assert isinstance(converted, BitLinear)
    assert torch.equal(converted.weight, source.model.layers[1].mlp.down_proj.weight)
    assert torch.equal(model.lm_head.weight, source.lm_head.weight)
    # and it keeps training: a few AdamW steps lower the loss on a fixed batch
    batch = tokenizer(["12+34|>46"] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_a_bitnet_model_starts_from_given_full_precision_weights(tokenizer):
    torch.manual_seed(1)
    source = build_model(ModelConfig(preset="tiny", quantization="none"), tokenizer)
    torch.manual_seed(2)
    model = build_model(ModelConfig(preset="tiny", mrl_depth=2, sparse_k=0.5), tokenizer, weights=source.state_dict())
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert isinstance(model.model.layers[0].mlp.up_proj, BitLinear)


def test_a_pickled_pretrained_checkpoint_is_refused(tokenizer, tmp_path):
    source = LlamaForCausalLM(model_config("tiny", tokenizer))
    source.config.save_pretrained(tmp_path)
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")  # weights as a pickle
    with pytest.raises(OSError, match="safetensors"):
        build_model(ModelConfig(pretrained=str(tmp_path), quantization="bitnet"), tokenizer)


# ---- the BitNet b1.58 2B4T block (`architecture: bitnet`) ----

def _bitnet(tokenizer, quantization: str = "bitnet", compression: str = "none"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", architecture="bitnet", quantization=quantization,
                                    activation_compression=compression), tokenizer)
    for parameter in model.parameters():  # norm gains away from 1, so that a missed norm shows
        if parameter.ndim == 1:
            torch.nn.init.normal_(parameter, 1.0, 0.3)
    return model


def test_the_bitnet_architecture_is_the_transformers_block_with_bare_bitlinears(tokenizer):
    model = _bitnet(tokenizer)
    plain = BitNetForCausalLM(model.config)
    assert model.state_dict().keys() == plain.state_dict().keys()  # the architecture's own names
    decoder = {n: k for n, k in linears(model).items() if n.startswith("model.layers.")}
    assert len(decoder) == 7 * PRESETS["tiny"]["num_hidden_layers"] and set(decoder.values()) == {BareBitLinear}
    assert model.config.hidden_act == "relu2"
    assert not any(type(m) is BitNetRMSNorm for m in model.modules())  # fused
    assert set(linears(_bitnet(tokenizer, "none")).values()) == {nn.Linear}


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_a_bitnet_model_computes_the_plain_block_on_rounded_values_and_trains(tokenizer, compression):
    model = _bitnet(tokenizer, compression=compression)
    reference = BitNetForCausalLM(model.config)  # transformers' block, the linears fake-quantized in torch
    reference.load_state_dict(model.state_dict())
    for module in reference.model.layers.modules():
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                bare = BareBitLinear.from_linear(child)
                bare.quantized_linear = bare.reference
                setattr(module, name, bare)
    batch = tokenizer(["12+34=46", "7*8=56"], padding=True, return_tensors="pt")
    losses = [m(**batch, labels=batch["input_ids"]).loss for m in (model, reference)]
    assert torch.allclose(*losses, rtol=1e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
    assert model(**batch, labels=batch["input_ids"]).loss < losses[0]


def test_transformers_bitnet_quantization_reads_a_bitnet_model_s_weights(tokenizer, tmp_path):
    """`transformers` loads the latent weights with its own online ternary quantization
    (AutoBitLinear) and answers the same greedy tokens."""
    model = _bitnet(tokenizer).eval()
    plain = BitNetForCausalLM(exported_config(model, ModelConfig(architecture="bitnet")))
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded.model.layers[0].mlp.down_proj).__name__ == "AutoBitLinear"
    ids = torch.tensor([tokenizer("12+34=46;7*8=56")["input_ids"]])
    with torch.no_grad():
        ours, theirs = model(ids).logits, loaded(ids).logits
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max()
