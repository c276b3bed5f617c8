"""CIE 1931 2-degree colour-matching functions and illuminant D65 (5 nm, 380-780 nm).

Read from `ubf/data/tables/cie1931_2deg_d65_5nm.csv`, whose header names the source (the CIE's
published tables as shipped by the `colour-science` package). Used by `core.color` for true-colour
previews of visible-range hyperspectral data.
"""
import functools
import os

import numpy as np

from ubf.data.spectral_library import read_table

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables", "cie1931_2deg_d65_5nm.csv")

# IEC 61966-2-1 (sRGB): CIE XYZ (D65 white) -> linear sRGB
XYZ_TO_LINEAR_SRGB = np.array([
    [3.2406, -1.5372, -0.4986],
    [-0.9689, 1.8758, 0.0415],
    [0.0557, -0.2040, 1.0570],
])


@functools.lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, values = read_table(TABLE_PATH)
    if names != ["wavelength_nm", "x_bar", "y_bar", "z_bar", "d65"]:
        raise ValueError(f"{TABLE_PATH}: unexpected columns {names}")
    return values[:, 0], values[:, 1:4], values[:, 4]


def cie_wavelengths() -> np.ndarray:
    """(N,) wavelengths (nm) of the table: 380, 385, ..., 780."""
    return _table()[0].copy()


def colour_matching_functions() -> np.ndarray:
    """(N, 3) x_bar, y_bar, z_bar of the CIE 1931 2-degree standard observer."""
    return _table()[1].copy()


def d65() -> np.ndarray:
    """(N,) relative spectral power of CIE standard illuminant D65 (100 at 560 nm)."""
    return _table()[2].copy()


def d65_white_xyz() -> np.ndarray:
    """XYZ of a perfect white reflector under D65 with Y = 1, from the full table."""
    weighted = colour_matching_functions() * d65()[:, None]
    return weighted.sum(0) / weighted[:, 1].sum()
