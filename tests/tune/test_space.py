"""Search spaces are checked like configs: one line naming the file, the key, the problem."""

import pytest

from ryot_ray.config import ConfigError
from ryot_ray.tune.space import Knob, load_space

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_shipped_space_loads_with_short_knob_names():
    space = load_space(REPO / "search_spaces/default.yaml", REPO / "configs/default.yaml")
    assert Knob("model.sparse_k", "choice", (1.0, 0.5, 0.25)) in space.knobs
    assert Knob("train.lr", "choice", (5e-4,)) in space.knobs  # fine-tuning: trials only
    assert space.base.train.lr == 1.5e-3  # the reference trains at the config's rate
    assert space.scheduler.name == "asha" and space.accuracy_floor == 0.95 and space.start_from == "reference"


def test_constants_go_into_the_base_config_the_reference_shares(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("space:\n  data.train_per_level: 123\n  train.workers: 1\n  rlvr_paths: {choice: [1, 2]}\n")
    space = load_space(path, REPO / "configs/default.yaml")
    assert space.base.data.train_per_level == 123 and space.base.train.workers == 1
    assert [knob.key for knob in space.knobs] == ["inference.rlvr_paths"]


def test_overrides_change_the_base_config_and_every_knob_is_checked_against_it():
    shape = ["model.architecture=bitnet", "model.ffn_activation=silu", "model.tie_embeddings=true"]
    space = load_space(REPO / "search_spaces/smoke.yaml", None, shape)
    model = space.base.model
    assert (model.architecture, model.ffn_activation, model.tie_embeddings) == ("bitnet", "silu", True)
    with pytest.raises(ConfigError, match="space.sparse_k = 0.5: .*model.sparse_k is not built for architecture bitnet"):
        load_space(REPO / "search_spaces/default.yaml", None, shape)


def test_saved_space_reloads_as_it_ran(tmp_path):
    from ryot_ray.tune.space import SPACE_FILE, save_space

    space = load_space(REPO / "search_spaces/smoke.yaml", REPO / "configs/smoke.yaml", ["model.tie_embeddings=true"])
    space.samples = 5
    save_space(space, tmp_path / "experiment")
    again = load_space(tmp_path / "experiment" / SPACE_FILE)
    assert again.samples == 5 and again.knobs == space.knobs and again.base == space.base


BAD = [
    ("space:\n  warp_drive: {choice: [1]}\n", "space.warp_drive: unknown knob"),
    ("space:\n  sparse_k: {choice: []}\n", "space.sparse_k: choice needs a non-empty list"),
    ("space:\n  sparse_k: {normal: [0, 1]}\n", "space.sparse_k: expected one of choice, grid"),
    ("space:\n  train.lr: {loguniform: [0.0, 1.0]}\n", "loguniform needs a positive low end"),
    ("space:\n  train.lr: {uniform: [0.1, 0.01]}\n", "uniform needs [low, high] with low < high"),
    ("space:\n  mrl_depth: {randint: [1, 2.5]}\n", "randint needs whole numbers"),
    ("space:\n  tile_size: {choice: [2, 0]}\n", "space.tile_size = 0: inference.tile_size: 0 is below the minimum 1"),
    ("space:\n  rlvr_paths: {choice: [two]}\n", "inference.rlvr_paths: expected int, got 'two'"),
    ("space:\n  model.colour: red\n", "unknown key model.colour"),
    ("space:\n  train.epochs: 3\n", "the scheduler's max_t sets the epochs"),
    ("space:\n  sparse_k: 0.5\n  model.sparse_k: 0.25\n", "model.sparse_k is given twice"),
    ("space: {}\n", "space: expected a mapping of knobs"),
    ("samples: 0\nspace:\n  sparse_k: 0.5\n", "samples: expected a whole number >= 1"),
    ("search: grid\nspace:\n  sparse_k: 0.5\n", "search: 'grid' is not one of random, optuna"),
    ("scheduler: {name: asha, max_t: 2, grace_period: 3}\nspace:\n  sparse_k: 0.5\n",
     "scheduler.grace_period: 3 is above max_t 2"),
    ("scheduler: {reduction: 2}\nspace:\n  sparse_k: 0.5\n", "scheduler.reduction: unknown key"),
    ("accuracy_floor: 2\nspace:\n  sparse_k: 0.5\n", "accuracy_floor: expected a fraction"),
    ("budget: 3\nspace:\n  sparse_k: 0.5\n", "budget: unknown key"),
    ("space:\n  sparse_k: [\n", "is not valid YAML"),
    ("measure_problems: 0\nspace:\n  sparse_k: 0.5\n", "measure_problems: expected a whole number >= 1"),
    ("search: optuna\nspace:\n  sparse_k: {grid: [1.0, 0.5]}\n", "search: optuna cannot search a grid"),
    ("space:\n  data.train_per_level: {choice: [100, 200]}\n", "data.* can only be a constant"),
    ("space:\n  model.tie_embeddings: {choice: [true, false]}\n", "space.model.tie_embeddings: can only be a constant"),
    ("start_from: tinyllama\nspace:\n  sparse_k: 0.5\n", "start_from: 'tinyllama' is not one of scratch, reference"),
    ("speed_at: 7\nspace:\n  sparse_k: 0.5\n", "speed_at: expected model, a preset or a transformers config"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_space_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_space(path, REPO / "configs/smoke.yaml")
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)
