"""Real material reflectance spectra for the built-in demo data (USGS splib07, public domain).

The table `ubf/data/tables/usgs_splib07_demo_5nm.csv` holds eight spectra (vegetation, dry grass, soil,
two waters, two clay minerals, calcite) at 5 nm over 360-1050 nm; its header names the source and
how it was derived (`tools/make_spectral_table.py`). This module reads it and resamples spectra to
any band grid inside that range by linear interpolation.
"""
import functools
import os

import numpy as np

from ubf.core.errors import UserError

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables", "usgs_splib07_demo_5nm.csv")


def read_table(path: str) -> tuple[list[str], np.ndarray]:
    """A CSV table with `#` comment lines and one header row -> (column names, (rows, columns) float64)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    names = lines[0].split(",")
    values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]], dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"{path}: rows do not match the header's {len(names)} columns")
    return names, values


@functools.lru_cache(maxsize=1)
def _library() -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    names, values = read_table(TABLE_PATH)
    return values[:, 0].copy(), tuple(names[1:]), values[:, 1:].T.copy()


def material_names() -> list[str]:
    """Names of the library's materials, in table order."""
    return list(_library()[1])


def library_wavelengths() -> np.ndarray:
    """(L,) wavelengths (nm) of the table's rows."""
    return _library()[0].copy()


def library_spectra(names=None) -> np.ndarray:
    """(M, L) reflectances at the table's own wavelengths, for `names` (default: all materials)."""
    _, all_names, spectra = _library()
    return spectra[[_index(n, all_names) for n in (names or all_names)]].copy()


def _index(name: str, all_names) -> int:
    if name not in all_names:
        raise UserError(f"unknown material '{name}' (known: {', '.join(all_names)})")
    return all_names.index(name)


def resample_spectra(wavelengths, names=None) -> np.ndarray:
    """(M, C) reflectances of the named materials at `wavelengths` (nm), linearly interpolated.

    Wavelengths outside the table's range are a user error (the library is not extrapolated).
    """
    grid = library_wavelengths()
    wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
    if wavelengths.size == 0:
        raise UserError("no wavelengths to resample the spectral library to")
    if wavelengths.min() < grid[0] or wavelengths.max() > grid[-1]:
        raise UserError(f"wavelengths {wavelengths.min():.0f}-{wavelengths.max():.0f} nm lie outside the spectral "
                        f"library's range {grid[0]:.0f}-{grid[-1]:.0f} nm")
    spectra = library_spectra(names)
    return np.stack([np.interp(wavelengths, grid, s) for s in spectra])
