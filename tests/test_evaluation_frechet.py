"""FD against its closed form, KID against a hand computation, and both near zero for one distribution."""
import numpy as np
import pytest

from ubf.evaluation.frechet import disjoint_halves, frechet_distance, kernel_distance, real_floor


def test_fd_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_closed_form_for_diagonal_gaussian_fits():
    # sample moments fixed by construction: a has mean 0 and covariance I; b = 2 a + m
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 3))
    a = (a - a.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(a, rowvar=False))).T
    m = np.array([1.0, -2.0, 0.5])
    b = 2.0 * a + m
    # |m|^2 + Tr(I + 4I - 2 * 2I) = |m|^2 + 3
    assert frechet_distance(a, b) == pytest.approx((m ** 2).sum() + 3.0, rel=1e-9)


def test_fd_grows_with_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    values = [frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


def test_kid_matches_hand_computed_unbiased_mmd():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    k = lambda u, v: (u @ v / 2 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(y[i], y[j]) for i in range(3) for j in range(3) if i != j) / 6
    xy = sum(k(x[i], y[j]) for i in range(3) for j in range(3)) / 9
    mean, std = kernel_distance(x, y, subsets=3, subset_size=3)
    assert mean == pytest.approx(xx + yy - 2 * xy)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = kernel_distance(a, b, subsets=20, subset_size=300)
    shifted, _ = kernel_distance(a, b + 1.0, subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 0.05
    assert shifted > 10 * abs(same)


def test_real_floor_uses_disjoint_halves():
    first, second = disjoint_halves(11, seed=4)
    assert len(first) == len(second) == 5 and not set(first) & set(second)
    floor = real_floor(np.random.default_rng(5).normal(size=(200, 3)), subsets=5, subset_size=50)
    assert set(floor) == {"FD_real_floor", "KID_real_floor", "KID_real_floor_std"}
    assert 0 < floor["FD_real_floor"] < 0.5
