"""How repeated figures are summarized."""

import pytest

from ryot_ray.stats import median_uncertainty, spread


def test_spread_keeps_every_sample():
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "samples": [3.0, 1.0, 2.0]}


def test_the_median_s_uncertainty_is_the_range_for_few_samples_and_ignores_a_stray_one_later():
    assert median_uncertainty([4.0, 5.0, 6.0]) == pytest.approx(0.4)  # three: the whole range
    steady = [5.0, 5.05, 4.95, 5.02, 4.98, 5.01, 4.99, 5.03, 4.97, 5.0, 5.04, 4.96]
    assert median_uncertainty(steady + [9.0]) < 0.02  # one round under load does not count
    assert median_uncertainty(steady + [9.0] * 6) > 0.5  # half of them does
