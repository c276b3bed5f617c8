"""Spectral variability at synthesis time: the extended linear mixing model with smooth scaling fields.

The linear mixing model puts every synthetic spectrum inside the simplex of the K endmembers; real
pixels vary in brightness around it (illumination, topography, intra-class variability). The extended
linear mixing model (ELMM, Drumetz et al., IEEE TIP 2016) scales each endmember per pixel:
`x = sum_k psi_k a_k e_k`. Here each psi_k is a smooth, mean-one log-normal field,
`psi_k = exp(s z_k - s^2 / 2)`, with z_k white noise smoothed by a Gaussian of `scale_px` pixels and
scaled to unit standard deviation. The strength s is the standard deviation of log psi.

`measure_strength` derives s from training HSIs: every pixel is fit as a non-negative combination of
the endmembers (no sum-to-one), and s is the standard deviation of the log of the fitted total (the
pixel's brightness relative to the endmember simplex). Log spreads do not change when the endmembers
or the data are scaled by a constant, so raw and min-max normalised endmembers give the same s.
"""
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import nnls

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.data.hsi_dataset import list_mat_files
from ubf.data.matio import read_hsi
from ubf.data.normalize import minmax


def scaling_fields(height: int, width: int, k: int, strength: float, scale_px: float,
                   rng: np.random.Generator) -> np.ndarray:
    """(H, W, K) positive, spatially smooth factors with mean one and std(log) = `strength`."""
    if strength <= 0:
        return np.ones((height, width, k), dtype=np.float32)
    noise = rng.standard_normal((height, width, k))
    smooth = np.stack([gaussian_filter(noise[..., i], scale_px, mode="wrap") for i in range(k)], axis=-1)
    smooth -= smooth.mean(axis=(0, 1), keepdims=True)
    smooth /= np.maximum(smooth.std(axis=(0, 1), keepdims=True), 1e-12)
    return np.exp(strength * smooth - strength ** 2 / 2).astype(np.float32)


def apply_variability(abundances: np.ndarray, endmembers: np.ndarray, strength: float, scale_px: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(HSI (H, W, C), factors (H, W, K)) for abundances (H, W, K) and endmembers (C, K)."""
    h, w, k = abundances.shape
    factors = scaling_fields(h, w, k, strength, scale_px, rng)
    return ((abundances * factors) @ endmembers.T).astype(np.float32), factors


def brightness_factors(pixels: np.ndarray, endmembers: np.ndarray) -> np.ndarray:
    """(N,) sum of the non-negative least-squares coefficients of each pixel (N, C) on endmembers (C, K)."""
    return np.array([nnls(endmembers.astype(np.float64), p.astype(np.float64))[0].sum() for p in pixels])


def measure_strength(folder: str, endmembers: np.ndarray, key: str | None = None, max_pixels: int = 4000,
                     seed: int = 0) -> float:
    """Std of log brightness of training pixels relative to the endmembers (see the module docstring)."""
    if not folder:
        raise UserError("--variability auto: no training folder known; pass --real DIR or a number")
    files = list_mat_files(folder)[:50]
    if not files:
        raise UserError(f"{folder}: no HSI .mat files to measure the variability from")
    rng = np.random.default_rng(seed)
    per_file = max(1, max_pixels // len(files))
    pixels = []
    for path in files:
        cube, _ = read_hsi(path, key)
        if cube.shape[2] != endmembers.shape[0]:
            raise UserError(f"{path}: {cube.shape[2]} bands, the endmembers have {endmembers.shape[0]}")
        flat = minmax(cube).reshape(-1, cube.shape[2])
        pixels.append(flat[rng.choice(len(flat), min(per_file, len(flat)), replace=False)])
    totals = brightness_factors(np.concatenate(pixels), endmembers)
    totals = totals[totals > 1e-6]  # black pixels carry no brightness information
    if totals.size < 10:
        raise UserError(f"{folder}: too few pixels with signal to measure the variability")
    strength = float(np.std(np.log(totals)))
    get_logger().info("variability measured on %d pixels of %s: std of log brightness %.3f", totals.size, folder,
                      strength)
    return strength
