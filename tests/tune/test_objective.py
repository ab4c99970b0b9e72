import pytest

from ryot_ray.tune.objective import objective


def test_the_floor_dominates_then_speed_and_accuracy_both_count():
    above = objective(speedup=1.1, accuracy=0.90, reference_accuracy=0.93, floor=0.95)
    below = objective(speedup=9.0, accuracy=0.80, reference_accuracy=0.93, floor=0.95)
    assert below < 0 < above
    assert objective(3.0, 0.90, 0.93, 0.95) > objective(2.0, 0.90, 0.93, 0.95)  # faster
    assert objective(2.0, 0.92, 0.93, 0.95) > objective(2.0, 0.90, 0.93, 0.95)  # more accurate
    assert objective(2.0, 0.93, 0.93, 0.95) == pytest.approx(2.0)


def test_below_the_floor_speed_and_accuracy_still_rank_trials_by_their_product():
    slow_accurate = objective(speedup=0.7, accuracy=0.80, reference_accuracy=0.93, floor=0.95)
    fast_less_accurate = objective(speedup=1.1, accuracy=0.78, reference_accuracy=0.93, floor=0.95)
    assert slow_accurate < fast_less_accurate < 0
    assert objective(9.0, 0.70, 0.93, 0.95) > objective(9.0, 0.60, 0.93, 0.95)
    assert objective(2.0, 0.93, 0.93, 0.95) > objective(9.0, 0.88, 0.93, 0.95)  # the floor first
    assert objective(1.0, 0.0, 0.93, 0.95) == pytest.approx(-1.0)  # answering nothing is finite


def test_nonsense_inputs_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        objective(2.0, 0.5, 0.0, 0.95)


def test_epoch_objective_adds_retention_and_the_formula_to_what_was_measured():
    from ryot_ray.tune.objective import EpochObjective

    def measure(model, tokenizer, config, problems):
        return {"inference_accuracy": len(problems) / 10, "speedup": 1.5}

    metrics = EpochObjective(measure, reference_accuracy=0.5, floor=0.9)(None, None, None, [1, 2, 3, 4])
    assert metrics["accuracy_retention"] == pytest.approx(0.8)
    assert metrics["objective"] == pytest.approx(-1 / (1 + 1.5 * 0.8))  # below the floor
    assert metrics["speedup"] == 1.5
