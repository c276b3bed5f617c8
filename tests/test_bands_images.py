import numpy as np
import pytest
from PIL import Image

from ubf.core.errors import UserError
from ubf.data.bands import chikusei_wavelengths, evenly_spread_bands, nearest_bands, resolve_bands
from ubf.data.images import list_images, read_rgb
from ubf.data.normalize import minmax


def test_chikusei_subset_wavelengths():
    wl = chikusei_wavelengths()
    assert len(wl) == 59 and wl[0] == pytest.approx(399.1, abs=0.1) and wl[-1] == pytest.approx(698.2, abs=0.1)
    assert np.round(wl[[53, 33, 14]]).tolist() == [672, 569, 471]
    assert len(chikusei_wavelengths(all_bands=True)) == 128


def test_band_specs():
    wl = chikusei_wavelengths()
    assert resolve_bands("reference-7-17-27", 59) == [7, 17, 27]
    # the preset resolves by name; what it holds is checked against colour ranges and the authors'
    # stored `RGB` key in test_faithful_defaults.py
    assert resolve_bands("chikusei-rgb", 59) == nearest_bands(wl, [672, 569, 471])
    assert resolve_bands({"wavelengths": [672, 569, 471]}, 59, wl) == [53, 33, 14]
    assert nearest_bands(wl, [640, 550, 460]) == [47, 29, 12]
    assert evenly_spread_bands(31) == [22, 15, 8]
    with pytest.raises(UserError, match="out of range for a 31-band cube"):
        resolve_bands([53, 33, 14], 31)
    with pytest.raises(UserError, match="needs files that store 'wavelengths'"):
        resolve_bands({"wavelengths": [600, 500, 400]}, 59, None)


def test_minmax_constant_image_is_zero_not_nan():
    assert np.all(minmax(np.full((3, 3), 7.0)) == 0)
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])


def test_image_modes(tmp_path):
    grey = (np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    Image.fromarray(deep).save(tmp_path / "d.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "sub" / "c.BMP")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert [p.split("/")[-1] for p in list_images(str(tmp_path))] == ["a.png", "bad.jpg", "d.png", "g.png", "c.BMP"]
    g = read_rgb(str(tmp_path / "g.png"))
    assert g.shape == (4, 4, 3) and np.allclose(g[..., 0], g[..., 2]) and g.max() == pytest.approx(240 / 255)
    a = read_rgb(str(tmp_path / "a.png"))
    assert a.shape == (4, 4, 3) and np.all(a[..., 0] == 1) and np.all(a[..., 1] == 0)
    d = read_rgb(str(tmp_path / "d.png"))
    assert d.max() == pytest.approx(60000 / 65535) and d.shape == (4, 4, 3)
    assert read_rgb(str(tmp_path / "sub" / "c.BMP")).shape == (5, 6, 3)
    with pytest.raises(UserError, match="bad.jpg: unreadable image"):
        read_rgb(str(tmp_path / "bad.jpg"))


def test_wavelength_fallback_for_files_without_them(tmp_path):
    import scipy.io as sio
    from ubf.data.hsi_dataset import HSICropDataset
    sio.savemat(tmp_path / "a.mat", {"Y": np.random.rand(8, 8, 59).astype(np.float32)})
    assert HSICropDataset(str(tmp_path)).wavelengths is None
    ds = HSICropDataset(str(tmp_path), wavelengths="chikusei-59")
    np.testing.assert_allclose(ds.wavelengths, chikusei_wavelengths())
    # wavelengths of another sensor: ignored with a warning, the band indices decide (issue 12)
    other = HSICropDataset(str(tmp_path), bands=[5, 4, 3], wavelengths=list(range(400, 710, 10)))
    assert other.wavelengths is None and other.band_indices == [5, 4, 3]
    with pytest.raises(UserError, match="band selection by wavelength needs files that store 'wavelengths'"):
        HSICropDataset(str(tmp_path), bands={"wavelengths": [640, 550, 460]}, wavelengths=list(range(400, 710, 10)))
