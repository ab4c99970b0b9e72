from pathlib import Path

import pytest

from ryot_ray.config import Config, ConfigError, load_config
from native_marks import needs_native

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert isinstance(config, Config)


def test_default_paths_resolve_to_the_shipped_files_from_any_directory(tmp_path, monkeypatch):
    from ryot_ray.config import load_phase1
    from ryot_ray.tune.space import load_space

    monkeypatch.chdir(tmp_path)
    assert load_config("configs/smoke.yaml").model.preset == "tiny"
    assert load_phase1("configs/phase1_baselines.yaml").decode_tokens_per_s == 25.0
    space = load_space("search_spaces/smoke.yaml")  # its `config: configs/smoke.yaml` too
    assert Path(space.source) == REPO / "search_spaces/smoke.yaml" and space.base.model.preset == "tiny"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/smoke.yaml").write_text("model:\n  preset: small\n")
    assert load_config("configs/smoke.yaml").model.preset == "small"  # a file of the user's own comes first
    with pytest.raises(ConfigError, match="configs/missing.yaml: no such config file"):
        load_config("configs/missing.yaml")


def test_every_package_and_the_shipped_yaml_are_in_the_wheel_s_listing():
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {"ryot_ray.configs": "configs", "ryot_ray.search_spaces": "search_spaces"}
    assert set(setuptools["packages"]) == set(find_packages(str(REPO), include=["ryot_ray*"])) | set(shipped)
    assert all(setuptools["package-dir"][name] == folder for name, folder in shipped.items())
    assert all(setuptools["package-data"][name] == ["*.yaml"] for name in shipped)


def test_values_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 3\nmodel:\n  preset: tiny\n")
    config = load_config(path, ["train.batch_size=7", "train.lr=2e-4", "data.scratchpad=false"])
    assert config.train.lr == pytest.approx(2e-4)
    assert config.train.epochs == 3 and config.train.batch_size == 7
    assert config.data.scratchpad is False
    assert config.model.preset == "tiny"
    assert Config.from_dict(config.to_dict()) == config


def test_corpus_section_builds_nested_dataclass(tmp_path):
    text = tmp_path / "x.txt"
    text.write_text("some text\n")
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  corpus:\n    path: {text}\n    block_size: 32\n")
    corpus = load_config(path).data.corpus
    assert corpus.path == str(text) and corpus.block_size == 32 and corpus.split == "train"


BAD_INPUTS = [
    ("model:\n  preset: huge\n", "model.preset: 'huge' is not one of tiny, small, base, 1b"),
    ("train:\n  epochs: zero\n", "train.epochs: expected int, got 'zero'"),
    ("train:\n  epochs: 0\n", "train.epochs: 0 is below the minimum 1"),
    ("train:\n  epoch: 3\n", "unknown key train.epoch"),
    ("trian:\n  epochs: 3\n", "unknown key trian"),
    ("data:\n  families: []\n", "data.families: expected a non-empty list"),
    ("data:\n  families: [add, divide]\n", "data.families[1]: 'divide' is not one of"),
    ("data:\n  difficulties: [1, 9]\n", "data.difficulties[1]: 9 is above the maximum 4"),
    ("data:\n  corpus:\n    name: x\n", "missing key data.corpus.path"),
    ("train:\n  bf16: 1\n", "train.bf16: expected bool, got 1"),
    ("train: [1, 2]\n", "train: expected a mapping"),
    ("- 1\n- 2\n", "expected a mapping of keys at the top"),
    ("train:\n  epochs: [\n", "is not valid YAML"),
    ("model:\n  mrl_depth: 0\n", "model.mrl_depth: 0 is below the minimum 1"),
    ("model:\n  sparse_k: 2.5\n", "model.sparse_k: 2.5 is neither a fraction in (0, 1] nor a whole number"),
    ("model:\n  sparse_k: 0\n", "model.sparse_k: 0 keeps no activation"),
    ("model:\n  sparse_k: -0.5\n", "model.sparse_k: -0.5 is below the minimum 0.0"),
    ("model:\n  activation_compression: fp8\n", "model.activation_compression: 'fp8' is not one of none, int8"),
    ("model:\n  quantization: none\n  mrl_depth: 2\n", "are BitNet knobs; the 'none' reference is dense"),
    ("model:\n  architecture: gpt2\n", "model.architecture: 'gpt2' is not one of llama, bitnet"),
    ("model:\n  architecture: bitnet\n  sparse_k: 0.5\n", "model.sparse_k is not built for architecture bitnet"),
    ("model:\n  ffn_activation: gelu\n", "model.ffn_activation: 'gelu' is not one of silu, relu2"),
    ("model:\n  pretrained: some/hub-model\n  tie_embeddings: true\n",
     "model.tie_embeddings shape(s) a model built from a preset; a pretrained model keeps its checkpoint's"),
    ("inference:\n  ffn_level: 1\n", "inference.ffn_level: 1 needs model.mrl_depth above it"),
    ("inference:\n  tile_size: 0\n", "inference.tile_size: 0 is below the minimum 1"),
    ("inference:\n  kv_cache: int4\n", "inference.kv_cache: 'int4' is not one of fp32, fp16"),
    ("inference:\n  rlvr_paths: 0\n", "inference.rlvr_paths: 0 is below the minimum 1"),
]


@pytest.mark.parametrize("text, message", BAD_INPUTS)
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_local_paths_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  pretrained: {tmp_path}/absent\n")
    with pytest.raises(ConfigError, match="model.pretrained: no checkpoint directory"):
        load_config(path)
    path.write_text(f"data:\n  corpus:\n    path: {tmp_path}/absent.txt\n")
    with pytest.raises(ConfigError, match="data.corpus.path: no such file"):
        load_config(path)
    path.write_text("model:\n  pretrained: TinyLlama/TinyLlama-1.1B-Chat-v1.0\n")
    assert load_config(path).model.pretrained.startswith("TinyLlama/")  # a hub name, for users online


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.epochs", "expected key.path=value"),
    ("train.epochs=-1", "below the minimum"),
    ("train.nope=1", "unknown key train.nope"),
    ("seed.x=1", "seed is not a section"),
])
def test_bad_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "smoke.yaml", [override])


@needs_native
def test_a_tile_size_without_a_kernel_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inference:\n  tile_size: 3\n")
    with pytest.raises(ConfigError, match=r"inference.tile_size: 3 has no kernel \(one of 1, 2, 4, 8\)"):
        load_config(path)
