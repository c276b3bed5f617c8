import numpy as np
import pytest
import torch

from ubf.core.simplex import project_to_simplex


@pytest.mark.parametrize("v, expected", [
    ([0.5, 0.5], [0.5, 0.5]),            # already on the simplex
    ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),  # a vertex
    ([2.0, 0.0], [1.0, 0.0]),            # theta = 1
    ([0.4, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3]),  # shift down by 0.2 / 3 each
    ([1.0, 1.0, -5.0], [0.5, 0.5, 0.0]),  # negative entry clipped, theta = 0.5
    ([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),
    ([3.0, 1.0, 0.2], [1.0, 0.0, 0.0]),  # theta = 2 keeps only the largest
    ([0.8, 0.6, 0.0], [0.6, 0.4, 0.0]),  # theta = 0.2
])
def test_hand_computed_projections(v, expected):
    out = project_to_simplex(np.array(v))
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_kkt_conditions_on_random_vectors():
    """x = max(v - theta, 0) with one theta per row and sum(x) = 1 characterises the projection."""
    rng = np.random.default_rng(0)
    v = rng.normal(scale=2.0, size=(500, 7))
    x = project_to_simplex(v)
    assert x.min() >= 0
    np.testing.assert_allclose(x.sum(-1), 1.0, atol=1e-12)
    positive = x > 0
    theta = np.where(positive, v - x, np.nan)
    spread = np.nanmax(theta, -1) - np.nanmin(theta, -1)
    assert spread.max() < 1e-12
    theta_row = np.nanmean(theta, -1, keepdims=True)
    # clipped entries lie below the threshold
    assert np.all(v[~positive] <= np.broadcast_to(theta_row, v.shape)[~positive] + 1e-12)


def test_closest_among_random_simplex_points():
    rng = np.random.default_rng(1)
    v = rng.normal(size=5)
    x = project_to_simplex(v)
    candidates = rng.dirichlet(np.ones(5) * 0.5, size=20000)
    assert np.linalg.norm(v - x) <= np.linalg.norm(candidates - v, axis=1).min() + 1e-12


def test_idempotent_and_dim_argument_torch():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)  # (N, K, H, W)
    along_k = project_to_simplex(a, dim=1)
    reference = project_to_simplex(a.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
    torch.testing.assert_close(along_k, reference)
    torch.testing.assert_close(along_k.sum(1), torch.ones(2, 4, 6, dtype=torch.float64))
    torch.testing.assert_close(project_to_simplex(along_k, dim=1), along_k)
    assert along_k.dtype == torch.float64 and along_k.shape == a.shape


def test_numpy_and_torch_agree_and_keep_dtype():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(8, 8, 5)).astype(np.float32)
    out_np = project_to_simplex(v)
    out_t = project_to_simplex(torch.from_numpy(v))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_np, out_t.numpy(), atol=1e-7)
    half = project_to_simplex(torch.from_numpy(v).half())
    assert half.dtype == torch.float16
    assert torch.allclose(half.float().sum(-1), torch.ones(8, 8), atol=1e-2)


def test_integer_input_and_empty_axis():
    np.testing.assert_allclose(project_to_simplex(np.array([3, 1])), [1.0, 0.0])
    with pytest.raises(ValueError):
        project_to_simplex(np.zeros((3, 0)))
