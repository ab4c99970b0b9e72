"""Vote, early stop and budgets on constructed answers; one real run on a tiny checkpoint."""

import pytest

from ryot_ray.config import InferenceConfig
from ryot_ray.infer import reasoning
from ryot_ray.infer.engine import Generation
from ryot_ray.infer.reasoning import answer, majority, path_budget, wave_agrees


def test_majority_counts_answers_and_breaks_ties_by_first_seen():
    assert majority(["12", "13", "12", None]) == "12"
    assert majority(["7", "8", "8", "7"]) == "7"
    assert majority([None, None]) is None and majority([]) is None


def test_a_wave_agrees_only_on_one_real_answer():
    assert wave_agrees(["3", "3"]) and not wave_agrees(["3", "4"])
    assert not wave_agrees([None, None]) and not wave_agrees([])


def test_budget_grows_with_difficulty_up_to_the_cap():
    config = InferenceConfig(rlvr_paths=8, path_window=2)
    assert [path_budget(config, d) for d in (1, 2, 3, 4)] == [2, 4, 8, 8]
    assert path_budget(InferenceConfig(rlvr_paths=8, adaptive_paths=False), 1) == 8


class ScriptedEngine:
    """Answers each wave from a script, as `generate_paths` would."""

    def __init__(self, waves):
        self.waves = list(waves)
        self.calls = []

    def generate_paths(self, prompt, paths, sampling):
        texts = self.waves.pop(0)[:paths]
        self.calls.append((paths, sampling.seed))
        return Generation(texts, [[1]] * paths, 3, 0.5, [0.1])


def test_adaptive_stops_at_the_first_agreeing_wave():
    engine = ScriptedEngine([["1>5", "1>6"], ["1>6", "1>6"], ["1>7", "1>7"]])
    result = answer(engine, "p", 3, InferenceConfig(rlvr_paths=8, path_window=2), 8)
    assert result.paths == 4 and result.answer == "6" and result.votes == {"5": 1, "6": 3}
    assert engine.calls == [(2, 0), (2, 2)]  # each path its own seed
    assert result.seconds == pytest.approx(2 * 0.6)


def test_fixed_paths_use_one_batch_and_vote():
    engine = ScriptedEngine([["1>5", "1>6", "1>6", "x"]])
    result = answer(engine, "p", 1, InferenceConfig(rlvr_paths=4, adaptive_paths=False), 8)
    assert engine.calls == [(4, 0)] and result.paths == 4 and result.answer == "6"


def test_budget_caps_an_undecided_problem():
    engine = ScriptedEngine([["1>1", "1>2"], ["1>3", "1>4"]])
    result = answer(engine, "p", 2, InferenceConfig(rlvr_paths=8, path_window=2), 8)
    assert result.paths == 4 and result.answer == "1"


def test_one_path_is_greedy_on_a_real_model(trained_checkpoint):
    from ryot_ray.infer.engines import model_engine
    from ryot_ray.train.checkpoint import load_checkpoint

    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    engine = model_engine(model, tokenizer, InferenceConfig(), 2, 40)
    result = answer(engine, "rev abc|", 1, InferenceConfig(rlvr_paths=1), 12)
    assert result.paths == 1 and result.seconds > 0
    assert result.answer == reasoning.extract_answer(result.completions[0])
    sampled = answer(engine, "rev abc|", 1, InferenceConfig(rlvr_paths=2, path_window=2), 12)
    assert 1 <= sampled.paths <= 2 and len(sampled.completions) == sampled.paths
