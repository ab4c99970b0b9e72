"""The training-memory floor a config is checked against before Ray starts."""

import pytest

from ryot_ray.config import ConfigError, load_config
from ryot_ray.model.footprint import BYTES_PER_PARAMETER, check_training_fits, parameter_count
from tests.conftest import SMOKE


def test_the_1b_preset_has_tinyllama_s_parameter_count():
    assert parameter_count(load_config(SMOKE, ["model.preset=1b"])) == 1_100_048_384


def test_a_local_pretrained_model_is_counted_from_its_config(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, tie_word_embeddings=False).save_pretrained(tmp_path)
    # embed + lm_head 2*10*8, q,k,v,o 4*8*8, mlp 3*8*16, norms 3*8
    assert parameter_count(load_config(SMOKE, [f"model.pretrained={tmp_path}"])) == 160 + 256 + 384 + 24
    assert parameter_count(load_config(SMOKE, ["model.pretrained=TinyLlama/TinyLlama-1.1B-Chat-v1.0"])) is None


def test_refused_only_when_the_floor_is_above_the_memory():
    config = load_config(SMOKE, ["train.workers=2"])
    floor = 2 * parameter_count(config) * BYTES_PER_PARAMETER
    check_training_fits(config, floor)
    with pytest.raises(ConfigError, match=r"2 worker\(s\) x .* GiB of fp32 weights, gradients and AdamW state"):
        check_training_fits(config, floor - 1)


def test_a_local_folder_that_is_no_model_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=f"model.pretrained: {tmp_path}"):
        parameter_count(load_config(SMOKE, [f"model.pretrained={tmp_path}"]))
