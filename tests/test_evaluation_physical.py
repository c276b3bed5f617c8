"""Physical checks against hand-computed values."""
import numpy as np
import pytest

from ubf.evaluation.physical import PhysicalStats


def test_hand_computed_abundance_and_range_checks():
    abundances = np.array([[[0.5, 0.5], [0.7, 0.1]], [[1.2, -0.2], [0.0, 1.0]]])  # (2, 2, K=2)
    endmembers = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (C=3, K=2)
    cube = abundances @ endmembers.T
    cube[0, 0, 0] += 0.3  # one value off the mixing model
    stats = PhysicalStats()
    stats.add(cube, abundances, endmembers)
    out = stats.result()
    # |sum - 1| per pixel: 0, 0.2, 0, 0
    assert out["abundance_sum_error_mean"] == pytest.approx(0.05)
    assert out["abundance_sum_error_max"] == pytest.approx(0.2)
    assert out["abundance_negative_fraction"] == pytest.approx(1 / 8)
    assert out["mixing_rmse"] == pytest.approx(np.sqrt(0.09 / 12))
    assert out["spectra_min"] == pytest.approx(-0.2) and out["spectra_max"] == pytest.approx(1.2)
    assert out["spectra_negative_fraction"] == pytest.approx(1 / 12)
    assert out["spectra_above_one_fraction"] == pytest.approx(1 / 12)  # only the 1.2; sums of exactly 1 are not above
    assert out["files_with_abundances"] == 1


def test_without_abundances_only_the_range_is_reported():
    stats = PhysicalStats()
    stats.add(np.zeros((2, 2, 3)))
    stats.add(np.ones((1, 1, 3)) * 2)
    out = stats.result()
    assert "abundance_sum_error_mean" not in out and out["files_with_abundances"] == 0
    assert out["spectra_above_one_fraction"] == pytest.approx(3 / 15)
