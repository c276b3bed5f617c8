"""Fréchet distance (FD) and kernel inception distance (KID) between two sets of feature vectors.

FD (Heusel et al. 2017) fits a Gaussian to each set: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2).
It is biased upwards for finite sets, so a value means little alone: `real_floor` reports FD between
two disjoint random halves of the real set, the value a perfect generator would reach at that size.

KID (Bińkowski et al. 2018) is the unbiased estimate of the squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; it is near 0 (and may be slightly
negative) for two samples of one distribution.
"""
import numpy as np
import torch


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a, b) -> float:
    """FD between (N, d) and (M, d) feature sets (N, M >= 2)."""
    a, b = _as_float64(a), _as_float64(b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr (S_a S_b)^1/2 = Tr (S_a^1/2 S_b S_a^1/2)^1/2, whose argument is symmetric PSD
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(value, 0.0))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kernel_distance(a, b, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over random subsets of the unbiased polynomial-kernel MMD^2 between (N, d) and (M, d)."""
    a, b = _as_float64(a), _as_float64(b)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def disjoint_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random index sets of size n // 2 each."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return order[:half], order[half:2 * half]


def real_floor(real, seed: int = 0, subsets: int = 50, subset_size: int = 1000) -> dict[str, float]:
    """FD and KID between two disjoint halves of the (N, d) real features: what a perfect generator scores."""
    real = _as_float64(real)
    first, second = disjoint_halves(len(real), seed)
    kid, kid_std = kernel_distance(real[first], real[second], subsets, subset_size, seed)
    return {"FD_real_floor": frechet_distance(real[first], real[second]), "KID_real_floor": kid,
            "KID_real_floor_std": kid_std}
