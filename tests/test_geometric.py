"""Classic geometric unmixing (ubf/models/geometric.py) on hand-built mixtures and on the real benchmark scenes.

Oracles that do not come from the code under test: the known endmembers and abundances of synthetic
scenes, scipy.optimize.nnls (on the sum-to-one-augmented system for FCLS), a brute-force search over
the faces of the simplex, hand-computed projections, and the reference abundances stored in
../shared/data/hsi (skipped when absent).
"""
import itertools

import numpy as np
import pytest
import scipy.io as sio
from scipy.optimize import linear_sum_assignment, nnls

from conftest import shared_path
from ubf.core.errors import UserError
from ubf.data.matio import read_hsi
from ubf.models.geometric import estimate_snr, fcls, nfindr, nnls_abundances, project_to_simplex, vca


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K_a, K_b) angles between the columns of a and b, computed here with arccos in float64."""
    cos = (a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def matched_angles(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    cost = angles_deg(estimated, truth)
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols]


def synthetic_scene(seed: int = 0, bands: int = 40, count: int = 4, pixels: int = 600):
    """Random positive endmembers (C, K), Dirichlet abundances with K pure pixels at random rows."""
    rng = np.random.default_rng(seed)
    ends = rng.uniform(0.05, 1.0, size=(bands, count))
    abundances = rng.dirichlet(np.full(count, 0.6), size=pixels)
    pure = rng.choice(pixels, count, replace=False)
    abundances[pure] = np.eye(count)
    return ends, abundances, abundances @ ends.T, pure


def brute_force_fcls(y: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """min ||E a - y|| on the simplex by trying every face: on each support S the sum-to-one least squares
    (last coefficient eliminated), kept when non-negative; the best kept one wins."""
    k = ends.shape[1]
    best, best_a = np.inf, None
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = ends[:, list(support)]
            if size == 1:
                coef = np.array([1.0])
            else:
                design = cols[:, :-1] - cols[:, -1:]
                rest, *_ = np.linalg.lstsq(design, y - cols[:, -1], rcond=None)
                coef = np.append(rest, 1.0 - rest.sum())
            if coef.min() < -1e-12:
                continue
            residual = float(np.linalg.norm(cols @ coef - y))
            if residual < best:
                best, best_a = residual, np.zeros(k)
                best_a[list(support)] = coef
    return best_a


@pytest.mark.parametrize("method", ["vca", "vca_low_snr", "nfindr"])
@pytest.mark.parametrize("seed", [0, 1])
def test_extractors_recover_the_endmembers_of_a_noise_free_scene(method, seed):
    ends, _, pixels, pure = synthetic_scene(seed)
    if method == "vca":
        assert estimate_snr(pixels, 4) == np.inf  # noise-free: the projective branch
        found, index = vca(pixels, 4, seed=seed)
    elif method == "vca_low_snr":  # the PCA branch of VCA, forced
        found, index = vca(pixels, 4, seed=seed, snr_db=0.0)
    else:
        found, index = nfindr(pixels, 4, seed=seed)
    assert sorted(index.tolist()) == sorted(pure.tolist())
    np.testing.assert_array_equal(found, pixels[index].T)  # real pixels
    assert matched_angles(found, ends).max() < 0.1


def test_extractors_find_the_pure_pixels_under_mild_noise():
    ends, _, pixels, pure = synthetic_scene(3, pixels=2000)
    noisy = pixels + 1e-3 * np.random.default_rng(0).standard_normal(pixels.shape)
    for extract in (vca, nfindr):
        found, _ = extract(noisy, 4, seed=0)
        assert matched_angles(found, ends).max() < 1.0, extract.__name__


def test_fcls_recovers_noise_free_abundances():
    ends, abundances, pixels, _ = synthetic_scene(0)
    estimate = fcls(pixels, ends)
    assert np.abs(estimate - abundances).max() < 1e-5
    # endmembers found by VCA are the pure pixels, so FCLS with them gives the same abundances
    found, _ = vca(pixels, 4, seed=0)
    rows, cols = linear_sum_assignment(angles_deg(found, ends))
    assert np.abs(fcls(pixels, found)[:, rows] - abundances[:, cols]).max() < 1e-5


def test_fcls_equals_scipy_nnls_on_the_sum_to_one_augmented_system():
    ends, _, pixels, _ = synthetic_scene(1, bands=30, count=5, pixels=300)
    rng = np.random.default_rng(7)
    noisy = pixels + 0.05 * rng.standard_normal(pixels.shape)  # many pixels fall outside the simplex
    estimate = fcls(noisy, ends)
    delta = 1e-5  # [delta E; 1'] a = [delta y; 1]: the sum-to-one row dominates
    system = np.vstack([delta * ends, np.ones((1, ends.shape[1]))])
    oracle = np.array([nnls(system, np.append(delta * y, 1.0), maxiter=5000)[0] for y in noisy])
    assert (oracle == 0).mean() > 0.1  # the constraints are active on many pixels
    assert np.abs(estimate - oracle).max() < 1e-6
    assert estimate.min() >= 0.0
    assert np.abs(estimate.sum(1) - 1.0).max() < 1e-12


def test_nnls_abundances_equal_scipy_nnls_and_carry_the_brightness():
    ends, abundances, pixels, _ = synthetic_scene(2, bands=25, count=5, pixels=200)
    noisy = pixels + 0.05 * np.random.default_rng(1).standard_normal(pixels.shape)
    estimate = nnls_abundances(noisy, ends)
    oracle = np.array([nnls(ends, y, maxiter=5000)[0] for y in noisy])
    assert (oracle == 0).mean() > 0.05
    assert np.abs(estimate - oracle).max() < 1e-9
    brightness = np.random.default_rng(2).uniform(0.5, 2.0, size=(len(pixels), 1))
    scaled = nnls_abundances(pixels * brightness, ends)
    assert np.abs(scaled.sum(1, keepdims=True) - brightness).max() < 1e-9
    assert np.abs(scaled / brightness - abundances).max() < 1e-9


def test_a_pixel_outside_the_simplex_gets_the_closest_point_on_it():
    identity = np.eye(3)
    points = np.array([[2.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, -1.0], [0.6, 0.3, -0.5]])
    # by hand: clip to a vertex; the centre; the middle of an edge; (0.65, 0.35, 0) from a - 0.6 = b - 0.3, a + b = 1
    expected = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.65, 0.35, 0.0]])
    np.testing.assert_allclose(fcls(points, identity), expected, atol=1e-12)
    np.testing.assert_allclose(project_to_simplex(points), expected, atol=1e-12)
    rng = np.random.default_rng(3)
    values = rng.normal(0.2, 1.0, size=(40, 4))
    brute = np.array([brute_force_fcls(v, np.eye(4)) for v in values])
    np.testing.assert_allclose(project_to_simplex(values), brute, atol=1e-10)
    np.testing.assert_allclose(fcls(values, np.eye(4)), brute, atol=1e-10)
    # and with general endmembers: pixels far outside their simplex
    ends = rng.uniform(0.0, 1.0, size=(6, 4))
    outside = rng.uniform(-1.0, 2.0, size=(40, 6))
    brute = np.array([brute_force_fcls(y, ends) for y in outside])
    np.testing.assert_allclose(fcls(outside, ends), brute, atol=1e-8)


def test_one_endmember_and_as_many_endmembers_as_bands():
    pixels = np.array([[0.0, 0.0], [1.0, 0.0], [0.4, 0.5], [0.0, 1.2]])
    # k = 1: the pixel nearest the mean (0.35, 0.425) is (0.4, 0.5)
    for extract in (vca, nfindr):
        found, index = extract(pixels, 1, seed=0)
        assert index.tolist() == [2]
        np.testing.assert_array_equal(found[:, 0], pixels[2])
    np.testing.assert_array_equal(fcls(pixels, np.array([[0.2], [0.3]])), np.ones((4, 1)))
    # K = C: square endmember matrix, pure pixels present
    ends, abundances, mixed, pure = synthetic_scene(4, bands=5, count=5, pixels=300)
    np.testing.assert_allclose(fcls(mixed, ends), abundances, atol=1e-9)
    for extract in (vca, nfindr):
        _, index = extract(mixed, 5, seed=0)
        assert sorted(index.tolist()) == sorted(pure.tolist()), extract.__name__


def test_extractors_are_deterministic_for_a_seed():
    ends, _, pixels, _ = synthetic_scene(5, pixels=800)
    noisy = pixels + 0.02 * np.random.default_rng(3).standard_normal(pixels.shape)
    for extract in (vca, nfindr):
        first = extract(noisy, 4, seed=11)
        second = extract(noisy.copy(), 4, seed=11)
        np.testing.assert_array_equal(first[1], second[1])
        np.testing.assert_array_equal(first[0], second[0])


@pytest.mark.parametrize("call, message", [
    (lambda: vca(np.random.rand(3, 10), 4), "4 endmembers need at least 4 pixels, got 3"),
    (lambda: nfindr(np.random.rand(3, 10), 4), "4 endmembers need at least 4 pixels, got 3"),
    (lambda: vca(np.random.rand(20, 3), 4), "at least 4 bands"),
    (lambda: vca(np.array([[0.1, np.nan], [0.2, 0.3], [0.3, 0.1]]), 2), "1 NaN/Inf"),
    (lambda: nfindr(np.random.rand(10, 4), 0), "positive integer"),
    (lambda: fcls(np.array([[np.inf, 0.0]]), np.eye(2)), "NaN/Inf"),
    (lambda: fcls(np.random.rand(5, 3), np.random.rand(4, 2)), "C = 3 bands"),
    (lambda: nnls_abundances(np.random.rand(5, 3, 1), np.eye(3)), "(N, C)"),
])
def test_bad_input_is_a_one_line_user_error(call, message):
    with pytest.raises(UserError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def benchmark_scene(name: str):
    """Pixels (N, C) in the order of read_hsi's (H, W) cube, reference abundances (N, K), endmembers (C, K)."""
    path = shared_path("hsi", f"{name}.mat")
    cube, _ = read_hsi(path)
    raw = sio.loadmat(path)
    p = raw["S_GT"].shape[2]
    # the data README's rule: A = S_GT.transpose(1, 0, 2).reshape(-1, p).T matches the columns of Y, which
    # are column-major pixels, i.e. S_GT[i, j] belongs to cube[i, j]
    columns = raw["S_GT"].transpose(1, 0, 2).reshape(-1, p).T
    np.testing.assert_allclose(raw["Y"].T.reshape(cube.shape[1], cube.shape[0], -1).transpose(1, 0, 2), cube,
                               atol=1e-6)
    abundances = columns.T.reshape(cube.shape[1], cube.shape[0], p).transpose(1, 0, 2).reshape(-1, p)
    return cube.reshape(-1, cube.shape[2]).astype(np.float64), abundances, raw["GT"].T.astype(np.float64)


@pytest.mark.parametrize("extract", [vca, nfindr])
def test_real_scenes_against_the_reference_unmixing(extract):
    """Measured (seed 0): Samson SAD 4.2 / 4.0 deg, Moffett 8.9 / 8.1 deg (VCA / N-FINDR); abundance RMSE
    Moffett 0.063 / 0.072 (FCLS), Samson 0.054 / 0.046 in its reference's own convention. Loose bounds."""
    pixels, reference, truth = benchmark_scene("moffett")
    # Moffett's reference abundances are FCLS-consistent with its reference endmembers
    assert np.sqrt(((fcls(pixels, truth) - reference) ** 2).mean()) < 0.005
    found, index = extract(pixels, 3, seed=0)
    np.testing.assert_array_equal(found, pixels[index].T)
    rows, cols = linear_sum_assignment(angles_deg(found, truth))
    assert angles_deg(found, truth)[rows, cols].mean() < 12.0
    estimate = fcls(pixels, found)
    assert np.sqrt(((estimate[:, rows] - reference[:, cols]) ** 2).mean()) < 0.1

    pixels, reference, truth = benchmark_scene("samson")
    found, _ = extract(pixels, 3, seed=0)
    rows, cols = linear_sum_assignment(angles_deg(found, truth))
    assert angles_deg(found, truth)[rows, cols].mean() < 7.0
    # Samson's reference: endmembers scaled to a maximum of 1, non-negative least squares, each pixel's
    # abundances divided by their sum (the brightness); with its own endmembers that reproduces it to 0.002
    own = nnls_abundances(pixels, truth)
    assert np.sqrt(((own / own.sum(1, keepdims=True) - reference) ** 2).mean()) < 0.005
    scaled = nnls_abundances(pixels, found / found.max(0))
    scaled /= np.maximum(scaled.sum(1, keepdims=True), 1e-12)
    assert np.sqrt(((scaled[:, rows] - reference[:, cols]) ** 2).mean()) < 0.1
