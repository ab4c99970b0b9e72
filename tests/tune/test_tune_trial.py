"""A trial's config, and the actor Tune runs it in, named by trial id and knobs."""

from types import SimpleNamespace

from ray.tune.trainable import FunctionTrainable

from ryot_ray.config import load_config
from ryot_ray.tune.trial import TrialSetup, trial_config, trial_trainable

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_the_trial_config_is_the_base_with_its_knobs_and_max_t_epochs():
    base = load_config(REPO / "configs/smoke.yaml")
    config = trial_config(base, {"inference.tile_size": 2, "model.sparse_k": 0.5}, epochs=3)
    assert (config.inference.tile_size, config.model.sparse_k, config.train.epochs) == (2, 0.5, 3)


def test_the_trial_actor_says_which_trial_and_knobs_it_runs():
    trainable = trial_trainable(TrialSetup({}, 2, "/tmp", epoch_metrics=print), {"CPU": 0, "memory": 2**20})
    assert issubclass(trainable, FunctionTrainable) and trainable.__qualname__ == "TuneTrial"
    assert trainable._name == "run_trial"  # Tune's trial folders keep their names
    actor = SimpleNamespace(trial_id="ab12c_00003", config={"model.sparse_k": 0.5, "inference.tile_size": 2})
    assert trainable.__repr__(actor) == "trial ab12c_00003 (tile_size=2, sparse_k=0.5)"
    assert trainable.default_resource_request({}).required_resources == {"memory": 2**20}
