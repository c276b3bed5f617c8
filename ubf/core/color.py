"""Hyperspectral cube -> RGB picture, by three bands or by true colour (CIE 1931).

`mode="bands"` shows three bands as R, G, B: by default the bands nearest 640 / 550 / 460 nm when
wavelengths are known, evenly spread bands otherwise (`data.bands`). `mode="cie"` integrates every
pixel's spectrum, taken as reflectance, against the CIE 1931 2-degree colour-matching functions
under illuminant D65, then converts CIE XYZ to linear sRGB and applies the sRGB gamma. The
integration uses the cube's own band grid; it is white-balanced on that grid (a flat spectrum gives
an exactly neutral grey even when the bands miss the faint ends of the visible range).
"""
import numpy as np

from ubf.core.errors import UserError
from ubf.data import cie
from ubf.data.bands import DEFAULT_RGB_NM, check_three_bands, evenly_spread_bands, nearest_bands
from ubf.data.normalize import minmax

# share of each colour-matching function's D65-weighted integral the bands must cover for `cie`
MIN_CIE_COVERAGE = 0.95


def default_rgb_bands(n_bands: int, wavelengths=None) -> list[int]:
    """Band indices (R, G, B): nearest 640/550/460 nm if wavelengths are known, else evenly spread."""
    if wavelengths is not None:
        return nearest_bands(wavelengths, DEFAULT_RGB_NM)
    return evenly_spread_bands(n_bands, 3)


def check_rgb_bands(rgb_bands, n_bands: int) -> list[int]:
    """Three band indices within a cube of `n_bands` bands (negative indices count from the end)."""
    return check_three_bands(rgb_bands, n_bands, "--rgb-bands")


def band_weights(wavelengths: np.ndarray) -> np.ndarray:
    """Trapezoid-rule integration weights (nm) for samples at sorted `wavelengths`."""
    if wavelengths.size == 1:
        return np.ones(1)
    edges = np.concatenate([[wavelengths[0]], (wavelengths[1:] + wavelengths[:-1]) / 2, [wavelengths[-1]]])
    return np.diff(edges)


def cie_coverage(wavelengths) -> np.ndarray:
    """Share (3,) of each D65-weighted colour-matching function lying within the bands' range."""
    wavelengths = np.asarray(wavelengths, dtype=np.float64)
    grid = cie.cie_wavelengths()
    weighted = cie.colour_matching_functions() * cie.d65()[:, None]
    inside = (grid >= wavelengths.min() - 2.5) & (grid <= wavelengths.max() + 2.5)
    return weighted[inside].sum(0) / weighted.sum(0)


def spectra_to_xyz_matrix(wavelengths) -> np.ndarray:
    """(C, 3) matrix taking reflectance spectra sampled at `wavelengths` to D65-white-balanced XYZ.

    A reflectance of 1 in every band maps to D65's white point (Y = 1). Raises UserError when the
    bands miss more than 5 % of any colour-matching function (not visible-range data).
    """
    wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
    coverage = cie_coverage(wavelengths)
    if coverage.min() < MIN_CIE_COVERAGE:
        raise UserError(f"--rgb cie: bands {wavelengths.min():.0f}-{wavelengths.max():.0f} nm cover only "
                        f"{100 * coverage.min():.0f}% of the visible colour response (need "
                        f"{100 * MIN_CIE_COVERAGE:.0f}%); use --rgb bands")
    order = np.argsort(wavelengths)
    grid = cie.cie_wavelengths()
    weighted = cie.colour_matching_functions() * cie.d65()[:, None]
    sampled = np.stack([np.interp(wavelengths[order], grid, weighted[:, j], left=0.0, right=0.0)
                        for j in range(3)], axis=1)
    sampled *= band_weights(wavelengths[order])[:, None]
    # white balance on this grid: a flat reflectance of 1 -> the D65 white point exactly
    sampled *= (cie.d65_white_xyz() / sampled.sum(0))[None, :]
    matrix = np.zeros_like(sampled)
    matrix[order] = sampled
    return matrix


def srgb_gamma(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function for linear values in [0, 1]."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def hsi_to_rgb(cube: np.ndarray, wavelengths=None, mode: str = "bands", rgb_bands=None,
               value_range=None) -> np.ndarray:
    """(H, W, C) cube -> (H, W, 3) float32 RGB in [0, 1].

    `value_range=(lo, hi)`: the data values shown as black and white (a fixed range keeps a set of
    images comparable); None uses the cube's own minimum and maximum (over the three bands in
    `bands` mode, over all bands in `cie` mode). In `cie` mode the rescaled values are read as
    reflectance, so `value_range=(0, 1)` renders true reflectance.
    """
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim != 3:
        raise ValueError(f"hsi_to_rgb expects an (H, W, C) cube, got shape {cube.shape}")
    n_bands = cube.shape[2]
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
        if wavelengths.size != n_bands:
            raise UserError(f"{wavelengths.size} wavelengths for a {n_bands}-band cube")
    if mode == "bands":
        bands = (check_rgb_bands(rgb_bands, n_bands) if rgb_bands is not None
                 else default_rgb_bands(n_bands, wavelengths))
        rgb = minmax(cube[..., bands], *(value_range or (None, None)))
    elif mode == "cie":
        if wavelengths is None:
            raise UserError("--rgb cie needs the wavelength of every band, and these data have none; use --rgb bands")
        reflectance = minmax(cube, *(value_range or (None, None)))
        linear = reflectance @ spectra_to_xyz_matrix(wavelengths) @ cie.XYZ_TO_LINEAR_SRGB.T
        # the sRGB matrix maps D65 white to (1, 1, 1) only to 4 decimals: make it exact
        white = cie.XYZ_TO_LINEAR_SRGB @ cie.d65_white_xyz()
        rgb = srgb_gamma(linear / white)
    else:
        raise UserError(f"unknown RGB mode '{mode}' (use bands or cie)")
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)
