"""GGUF export: read back with `gguf`'s own reader, every tensor has the shape, type and
values the model computes with, the metadata llama.cpp's bitnet graph reads, and the
character tokenizer as one token per character; what llama.cpp would compute
differently is refused by name."""

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from ryot_ray.config import ModelConfig
from ryot_ray.infer.export import ExportError, export_gguf, gguf_name
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.build import build_model, model_config

LLAMA_CPP_SHAPE = dict(architecture="bitnet", ffn_activation="silu", tie_embeddings=True)


def bitnet_model(tokenizer, quantization="bitnet", hidden=256, intermediate=512, **shape):
    """A llama.cpp-shaped bitnet model; rows of 256 (TQ blocks) unless told otherwise."""
    torch.manual_seed(0)
    config = ModelConfig(preset="tiny", quantization=quantization, **(LLAMA_CPP_SHAPE | shape))
    hf_config = model_config("tiny", tokenizer, config.architecture, config.ffn_activation, config.tie_embeddings)
    hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_key_value_heads = hidden, intermediate, 2
    model = build_model(config, tokenizer, hf_config).eval()
    for parameter in model.parameters():  # gains away from 1, so that a gain written wrong shows
        if parameter.ndim == 1:
            torch.nn.init.normal_(parameter, 1.0, 0.3)
    return model


def tensors(path) -> dict[str, tuple[str, tuple, np.ndarray]]:
    """name -> (GGML type, shape as torch has it, dequantized values)."""
    read = {}
    for tensor in gguf.GGUFReader(path).tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        read[tensor.name] = (tensor.tensor_type.name, shape, values)
    return read


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_tensor_names_are_gguf_own_map_of_transformers_names(tokenizer):
    """gguf's map knows every name but the sub-norms (it names them after older checkpoints)."""
    model = bitnet_model(tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, model.config.num_hidden_layers)
    for name in model.state_dict():
        if name != "lm_head.weight" and "sub_norm" not in name:
            assert gguf_name(name) == names.get_name(name, try_suffixes=(".weight",)), name
    assert gguf_name("model.layers.1.self_attn.attn_sub_norm.weight") == "blk.1.attn_sub_norm.weight"
    assert gguf_name("model.layers.1.mlp.ffn_sub_norm.weight") == "blk.1.ffn_sub_norm.weight"


def expected_weights(model) -> dict[str, np.ndarray]:
    """What the model computes with, by GGUF name: ternary linears as codes · scale."""
    want = {gguf_name(k): v.detach().float().numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for name, module in model.named_modules():
        if isinstance(module, BitLinear):
            codes, scale = module.ternary_weight()
            want[gguf_name(f"{name}.weight")] = (codes.float() * scale).numpy()
    return want


@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0"])
def test_every_tensor_reads_back_as_the_model_computes_it(tmp_path, tokenizer, weight_type):
    model = bitnet_model(tokenizer)
    path = tmp_path / "model.gguf"
    reported = export_gguf(model, tokenizer, path, weight_type)
    read, want = tensors(path), expected_weights(model)
    assert set(read) == set(want) == {t.name for t in reported}
    assert len(read) == 2 + 11 * model.config.num_hidden_layers  # embeddings, final norm; 11 per block
    for name, (kind, shape, values) in read.items():
        assert shape == want[name].shape, name
        if name.endswith("norm.weight"):
            assert kind == "F32" and np.array_equal(values, want[name]), name
        elif name == "token_embd.weight":  # 8-bit blocks of 32: within half a step of the block's largest
            assert kind == "Q8_0"
            assert np.abs(values - want[name]).max() <= np.abs(want[name]).max() / 254 * 1.01
        else:  # ternary codes exact; the scale in fp16
            assert kind == weight_type.upper(), name
            scale = np.abs(want[name]).max()
            assert np.array_equal(values, np.sign(want[name]) * np.float32(np.float16(scale))), name
    assert max(t.max_error for t in reported if t.type == weight_type.upper()) < 2**-11


def test_the_metadata_is_what_llama_cpps_bitnet_graph_reads(tmp_path, tokenizer):
    model = bitnet_model(tokenizer)
    export_gguf(model, tokenizer, tmp_path / "model.gguf")
    reader, config = gguf.GGUFReader(tmp_path / "model.gguf"), model.config
    assert field(reader, "general.architecture") == "bitnet"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_TQ2_0  # the default for ternary
    assert [field(reader, f"bitnet.{key}") for key in ("block_count", "embedding_length", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "context_length")] == [
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
        config.num_key_value_heads, config.max_position_embeddings]
    assert field(reader, "bitnet.rope.freq_base") == pytest.approx(config.rope_parameters["rope_theta"])
    assert field(reader, "bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)


def test_the_character_tokenizer_is_one_byte_level_token_per_character(tmp_path, tokenizer):
    model = bitnet_model(tokenizer)
    export_gguf(model, tokenizer, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == model.config.vocab_size == model.model.embed_tokens.weight.shape[0]
    vocab = tokenizer.get_vocab()
    for text, byte_level in {" ": "Ġ", "\n": "Ċ", "\t": "ĉ", "a": "a", "|": "|", "7": "7"}.items():
        assert tokens[vocab[text]] == byte_level and types[vocab[text]] == gguf.TokenType.NORMAL
    assert tokens[tokenizer.bos_token_id] == "<s>" and types[tokenizer.bos_token_id] == gguf.TokenType.CONTROL
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")] == [
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    merges = field(reader, "tokenizer.ggml.merges")
    assert all(len(part) > 1 for merge in merges for part in merge.split(" "))  # no pair of characters


def test_rows_a_ternary_block_cannot_hold_fall_back_to_q8_0_or_f16_and_full_precision_to_f16(tmp_path, tokenizer):
    model = bitnet_model(tokenizer, hidden=64, intermediate=688)  # 688: no whole Q8_0 block of 32 either
    reported = {t.name: t for t in export_gguf(model, tokenizer, tmp_path / "small.gguf", "tq2_0")}
    read, want = tensors(tmp_path / "small.gguf"), expected_weights(model)
    assert reported["blk.0.attn_q.weight"].type == read["blk.0.attn_q.weight"][0] == "Q8_0"
    assert reported["blk.1.ffn_down.weight"].type == read["blk.1.ffn_down.weight"][0] == "F16"
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):  # ±127 steps of scale / 127 in fp16; fp16
        assert np.allclose(read[name][2], want[name], rtol=2**-10, atol=0)
    reference = bitnet_model(tokenizer, quantization="none")
    export_gguf(reference, tokenizer, tmp_path / "reference.gguf")
    read, want = tensors(tmp_path / "reference.gguf"), expected_weights(reference)
    assert {kind for name, (kind, *_) in read.items() if not name.endswith("norm.weight")} == {"F16"}
    assert np.array_equal(read["blk.0.ffn_up.weight"][2], want["blk.0.ffn_up.weight"].astype(np.float16))


@pytest.mark.parametrize("shape, weight_type, message", [
    (dict(ffn_activation=None), None, "ffn_activation 'relu2': llama.cpp's bitnet graph runs its FFN gate in silu"),
    (dict(tie_embeddings=False), None, "untied embeddings: .* model.tie_embeddings: true"),
    (dict(architecture="llama"), None, "a 'llama' model: GGUF export writes llama.cpp's bitnet graph"),
    (dict(quantization="none"), "tq2_0", "--type tq2_0: a full-precision model's weights are not ternary"),
])
def test_what_llama_cpp_would_compute_differently_is_refused_by_name(tmp_path, tokenizer, shape, weight_type,
                                                                    message):
    model = bitnet_model(tokenizer, **shape)
    with pytest.raises(ExportError, match=message):
        export_gguf(model, tokenizer, tmp_path / "model.gguf", weight_type)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_linear_with_a_bias_is_refused_by_name(tmp_path, tokenizer):
    model = bitnet_model(tokenizer)
    model.model.layers[1].mlp.up_proj.bias = torch.nn.Parameter(torch.zeros(512))
    with pytest.raises(ExportError, match="linears with a bias: llama.cpp's bitnet graph has none"):
        export_gguf(model, tokenizer, tmp_path / "model.gguf")


def test_a_subword_tokenizer_is_refused_by_name(tmp_path, tokenizer):
    from tokenizers import Tokenizer, models

    subword = Tokenizer(models.BPE({"<s>": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")]))
    subword.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    model = bitnet_model(tokenizer)
    with pytest.raises(ExportError, match="a BPE tokenizer: GGUF export writes ryot-ray's character tokenizer"):
        export_gguf(model, AutoTokenizer.from_pretrained(tmp_path), tmp_path / "model.gguf")
