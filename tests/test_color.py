import numpy as np
import pytest

from ubf.core.color import cie_coverage, default_rgb_bands, hsi_to_rgb, spectra_to_xyz_matrix, srgb_gamma
from ubf.core.errors import UserError
from ubf.data import cie
from ubf.data.bands import chikusei_wavelengths

VISIBLE = np.arange(380.0, 781.0, 5.0)


def test_cie_table_has_the_published_values():
    wl, cmf, d65 = cie.cie_wavelengths(), cie.colour_matching_functions(), cie.d65()
    assert wl[0] == 380 and wl[-1] == 780 and len(wl) == 81
    i555, i560 = list(wl).index(555), list(wl).index(560)
    np.testing.assert_allclose(cmf[i555], [0.5120501, 1.0, 0.005749999])  # CIE 1931 at 555 nm
    assert cmf[:, 1].max() == 1.0 and wl[np.argmax(cmf[:, 1])] == 555
    assert d65[i560] == 100.0  # D65 is normalised to 100 at 560 nm
    # D65 white point: x, y = 0.3127, 0.3290 (to the table's precision)
    white = cie.d65_white_xyz()
    np.testing.assert_allclose(white[:2] / white.sum(), [0.3127, 0.3290], atol=2e-4)


def test_flat_spectrum_is_neutral_grey():
    for wavelengths in (VISIBLE, chikusei_wavelengths(), np.linspace(401, 889, 156)):
        for level in (0.2, 0.5, 1.0):
            cube = np.full((2, 3, len(wavelengths)), level)
            rgb = hsi_to_rgb(cube, wavelengths, mode="cie", value_range=(0, 1))
            assert rgb.shape == (2, 3, 3) and rgb.dtype == np.float32
            np.testing.assert_allclose(rgb, srgb_gamma(np.array(level)), atol=1e-6)


def test_xyz_matrix_integrates_cmfs_under_d65():
    """On the CIE grid itself, Y of a reflectance equals sum(R S ybar) / sum(S ybar)."""
    matrix = spectra_to_xyz_matrix(VISIBLE)
    reflectance = np.linspace(0.1, 0.9, len(VISIBLE))
    weights = cie.d65() * cie.colour_matching_functions()[:, 1]
    # trapezoid weights are 5 nm inside and 2.5 nm at the ends; the ends carry ~1e-4 of the mass
    assert np.isclose(reflectance @ matrix[:, 1], (reflectance * weights).sum() / weights.sum(), rtol=1e-3)


@pytest.mark.parametrize("peak, dominant", [(450, 2), (530, 1), (620, 0)])
def test_monochromatic_hues(peak, dominant):
    wavelengths = chikusei_wavelengths()
    spectrum = 0.5 * np.exp(-0.5 * ((wavelengths - peak) / 8.0) ** 2)
    rgb = hsi_to_rgb(spectrum[None, None], wavelengths, mode="cie", value_range=(0, 1))[0, 0]
    assert np.argmax(rgb) == dominant
    others = np.delete(rgb, dominant)
    assert rgb[dominant] > 2 * others.max() + 0.05


def test_cie_refuses_unknown_or_non_visible_wavelengths():
    with pytest.raises(UserError, match="wavelength"):
        hsi_to_rgb(np.ones((2, 2, 10)), None, mode="cie")
    infrared = np.linspace(900, 2500, 50)
    assert cie_coverage(infrared).max() < 0.01
    with pytest.raises(UserError, match="cover only"):
        hsi_to_rgb(np.ones((2, 2, 50)), infrared, mode="cie")
    with pytest.raises(UserError, match="cover only"):  # red half of the visible only
        hsi_to_rgb(np.ones((2, 2, 20)), np.linspace(560, 780, 20), mode="cie")


def test_default_bands_nearest_targets_or_evenly_spread():
    wavelengths = chikusei_wavelengths()
    bands = default_rgb_bands(59, wavelengths)
    np.testing.assert_allclose(wavelengths[bands], [640, 550, 460], atol=2.6)  # within half a band step
    assert default_rgb_bands(59) == [44, 29, 14]  # quarter points of 0..58, reddest first
    assert default_rgb_bands(3) == [2, 1, 0]


def test_band_mode_min_max_and_value_range():
    cube = np.zeros((2, 2, 5))
    cube[..., 4] = [[0.2, 0.4], [0.6, 1.0]]
    cube[..., 2] = 0.5
    rgb = hsi_to_rgb(cube, mode="bands", rgb_bands=[4, 2, 0])
    # joint min-max over the three bands: min 0 (band 0), max 1.0
    np.testing.assert_allclose(rgb[..., 0], [[0.2, 0.4], [0.6, 1.0]], atol=1e-6)
    np.testing.assert_allclose(rgb[..., 1], 0.5)
    np.testing.assert_allclose(rgb[..., 2], 0.0)
    fixed = hsi_to_rgb(cube, mode="bands", rgb_bands=[4, 2, 0], value_range=(0.0, 0.5))
    np.testing.assert_allclose(fixed[..., 0], [[0.4, 0.8], [1.0, 1.0]], atol=1e-6)  # clipped at 1
    with pytest.raises(UserError):
        hsi_to_rgb(cube, mode="bands", rgb_bands=[5, 1, 0])
    with pytest.raises(UserError):
        hsi_to_rgb(cube, mode="false-colour")
    with pytest.raises(UserError):
        hsi_to_rgb(cube, wavelengths=np.arange(4.0))
