import pytest

from ryot_ray.tune.objective import objective


def test_the_floor_dominates_then_speed_and_accuracy_both_count():
    above = objective(speedup=1.1, accuracy=0.90, reference_accuracy=0.93, floor=0.95)
    below = objective(speedup=9.0, accuracy=0.80, reference_accuracy=0.93, floor=0.95)
    assert below < 0 < above
    assert objective(3.0, 0.90, 0.93, 0.95) > objective(2.0, 0.90, 0.93, 0.95)  # faster
    assert objective(2.0, 0.92, 0.93, 0.95) > objective(2.0, 0.90, 0.93, 0.95)  # more accurate
    assert objective(9.0, 0.70, 0.93, 0.95) > objective(9.0, 0.60, 0.93, 0.95)  # below: accuracy only
    assert objective(2.0, 0.93, 0.93, 0.95) == pytest.approx(2.0)


def test_nonsense_inputs_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        objective(2.0, 0.5, 0.0, 0.95)
