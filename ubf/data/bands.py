"""Band selection: which three bands of a cube play R, G, B for the unmixing encoder.

Default for the 59-band Chikusei subset is [53, 33, 14] (about 672 / 569 / 471 nm, R, G, B order):
these are the bands the `RGB` key of the authors' stored crops holds. The authors' public training
code fed bands [7, 17, 27] (about 435 / 486 / 538 nm) instead; it is offered as a named preset.
When wavelengths are known, bands can be chosen by target wavelengths (nearest band to each).
"""
import numpy as np

from ubf.core.errors import UserError
from ubf.core.validate import check_band_indices

CHIKUSEI_FIRST_NM, CHIKUSEI_LAST_NM, CHIKUSEI_BANDS = 363.0, 1018.0, 128
CHIKUSEI_SUBSET = slice(7, 66)  # bands 8-66 (1-based) of 128: about 399-698 nm, the paper's 59 bands

BAND_PRESETS = {
    "chikusei-rgb": [53, 33, 14],      # the stored RGB of the authors' crops, in R, G, B order
    "reference-7-17-27": [7, 17, 27],  # what the authors' public training code selected
}

DEFAULT_RGB_NM = (640.0, 550.0, 460.0)


def chikusei_wavelengths(all_bands: bool = False) -> np.ndarray:
    """Centre wavelengths (nm) of Chikusei's 128 bands, or of the paper's 59-band subset."""
    full = np.linspace(CHIKUSEI_FIRST_NM, CHIKUSEI_LAST_NM, CHIKUSEI_BANDS)
    return full if all_bands else full[CHIKUSEI_SUBSET]


def nearest_bands(wavelengths, targets_nm) -> list[int]:
    """Index of the band nearest to each target wavelength."""
    wavelengths = np.asarray(wavelengths, dtype=np.float64)
    return [int(np.argmin(np.abs(wavelengths - t))) for t in targets_nm]


def resolve_bands(spec, n_bands: int, wavelengths=None) -> list[int]:
    """Turn a band spec into three indices, checked against the cube's band count.

    `spec` is a preset name, a list of three indices, or a dict {"wavelengths": [r, g, b]} (nm).
    """
    if isinstance(spec, str):
        if spec not in BAND_PRESETS:
            raise UserError(f"unknown band preset '{spec}' (known: {', '.join(BAND_PRESETS)})")
        indices = BAND_PRESETS[spec]
    elif isinstance(spec, dict) and "wavelengths" in spec:
        if wavelengths is None:
            raise UserError("band selection by wavelength needs files that store 'wavelengths'")
        indices = nearest_bands(wavelengths, spec["wavelengths"])
    else:
        if not isinstance(spec, (list, tuple)):
            raise UserError(f"band selection must be a preset name, 3 indices or {{'wavelengths': [...]}}, "
                            f"got {spec!r}")
        indices = list(spec)
    return check_three_bands(indices, n_bands, "band selection")


def check_three_bands(indices, n_bands: int, what: str) -> list[int]:
    """Three band indices valid for an `n_bands` cube; a negative index is an error, never counted from the end."""
    indices = list(indices)
    if len(indices) != 3:
        raise UserError(f"{what} needs 3 bands (R G B), got {len(indices)}: {indices}")
    return check_band_indices(indices, n_bands, what)


def select_bands(cube: np.ndarray, indices) -> np.ndarray:
    """(H, W, C) cube -> (H, W, 3) in the given band order."""
    return np.ascontiguousarray(cube[..., list(indices)])


def evenly_spread_bands(n_bands: int, count: int = 3) -> list[int]:
    """Evenly spaced band indices, reddest (highest index) first, for data without wavelengths."""
    return [int(round(x)) for x in np.linspace(n_bands - 1, 0, count + 2)[1:-1]]
