"""ENVI and multi-band TIFF cubes: written by Synthesis --format, read back by every HSI reader."""
import os
import sys

import numpy as np
import pytest

from conftest import shared_path
from ubf.core.errors import UserError
from ubf.data.bands import chikusei_wavelengths
from ubf.data.cubes import list_cube_files, read_cube, write_envi, write_tiff
from ubf.data.matio import read_hsi, read_mat, write_mat


def random_cube(seed=0, shape=(7, 5, 4)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_envi_round_trip_and_header(tmp_path):
    cube, wavelengths = random_cube(), np.array([450.0, 550.5, 650.25, 750.0])
    header, data = write_envi(str(tmp_path / "a.hdr"), cube, wavelengths, ["b", "g", "r", "nir"], "test cube")
    assert data == str(tmp_path / "a.img")
    text = open(header).read()
    for field in ("samples = 5", "lines = 7", "bands = 4", "data type = 4", "interleave = bsq", "byte order = 0",
                  "band names = {b, g, r, nir}", "wavelength units = Nanometers"):
        assert field in text
    # the raw file is band-sequential little-endian float32, read here without the project's reader
    raw = np.fromfile(data, dtype="<f4").reshape(4, 7, 5)
    assert np.array_equal(raw.transpose(1, 2, 0), cube)
    for path in (header, data):
        back, wl = read_cube(path)
        assert np.array_equal(back, cube) and np.allclose(wl, wavelengths)
    with pytest.raises(UserError, match="exists already"):
        write_envi(str(tmp_path / "a"), cube, overwrite=False)


def test_tiff_round_trip_with_and_without_tifffile(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    cube, wavelengths = random_cube(1), np.array([400.0, 500.0, 600.0, 700.0])
    path = write_tiff(str(tmp_path / "a.tif"), cube, wavelengths)
    assert tifffile.imread(path).shape == (7, 5, 4)  # one pixel-interleaved page, as GDAL expects
    back, wl = read_cube(path)
    assert np.array_equal(back, cube) and np.allclose(wl, wavelengths)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # the built-in reader
    back, wl = read_cube(path)
    assert np.array_equal(back, cube) and np.allclose(wl, wavelengths)
    # the writer is built in: without tifffile it writes the same file, which tifffile then reads
    write_tiff(str(tmp_path / "b.tif"), cube, wavelengths)
    monkeypatch.delitem(sys.modules, "tifffile")
    assert np.array_equal(tifffile.imread(str(tmp_path / "b.tif")), cube)


def test_band_first_tiffs_are_read_as_h_w_c(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    cube = random_cube(2)
    tifffile.imwrite(str(tmp_path / "planar.tif"), cube.transpose(2, 0, 1), photometric="minisblack",
                     planarconfig="separate")
    back, wl = read_cube(str(tmp_path / "planar.tif"))
    assert np.array_equal(back, cube) and wl is None


def test_listing_and_reading_a_mixed_folder(tmp_path):
    cube = random_cube(3)
    write_mat(str(tmp_path / "a.mat"), {"Y": cube})
    write_envi(str(tmp_path / "sub" / "b"), cube)
    open(tmp_path / "notes.txt", "w").close()
    files = list_cube_files(str(tmp_path))
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a.mat", os.path.join("sub", "b.hdr")]
    assert all(np.array_equal(read_cube(f)[0], cube) for f in files)


def test_evaluation_and_inference_read_envi_like_mat(tmp_path):
    """A real Chikusei crop as .mat and as ENVI gives the same evaluation input and network input."""
    from ubf.evaluation.sampling import hsi_files, read_folder
    from ubf.pipeline.unmixing_infer import load_input
    crop, _ = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))
    write_envi(str(tmp_path / "envi" / "block_118"), crop, chikusei_wavelengths())
    write_mat(str(tmp_path / "mat" / "block_118.mat"), {"Y": crop})
    (path_e, cube_e, _), = read_folder(hsi_files(str(tmp_path / "envi"), "real"), normalise=True)
    (path_m, cube_m, _), = read_folder(hsi_files(str(tmp_path / "mat"), "real"), normalise=True)
    assert np.array_equal(cube_e, cube_m)
    x_e, y_e = load_input(path_e, "hsi", [53, 33, 14], None, 59)
    x_m, y_m = load_input(path_m, "hsi", [53, 33, 14], None, 59)
    assert np.array_equal(x_e, x_m) and np.array_equal(y_e, y_m)
    assert np.allclose(read_cube(path_e)[1], chikusei_wavelengths(), atol=1e-3)


@pytest.mark.parametrize("fmt", ["envi", "tiff"])
def test_synthesis_format_matches_the_mat_output(tmp_path, fmt):
    if fmt == "tiff":
        pytest.importorskip("tifffile")
    from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis
    from test_synthesis import fabricate_abundances, fabricate_checkpoint
    ckpt = str(tmp_path / "best.pth")
    fabricate_checkpoint(ckpt)
    fabricate_abundances(str(tmp_path / "abu"))
    run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "mat"))
    summary = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / fmt), options=SynthesisOptions(format=fmt))
    written = list_cube_files(summary["hsi_dir"])
    assert len(written) == 3 and all(f.endswith(".hdr" if fmt == "envi" else ".tif") for f in written)
    for path in written:
        stem = os.path.splitext(os.path.basename(path))[0]
        reference = read_mat(str(tmp_path / "mat" / "HSI" / f"{stem}.mat"))
        cube, wavelengths = read_cube(path)
        assert np.array_equal(cube, reference["HSI"])
        assert np.allclose(wavelengths, chikusei_wavelengths(), atol=1e-3)


def test_training_dataset_reads_envi_and_tiff_crops(tmp_path):
    pytest.importorskip("tifffile")
    from ubf.data.hsi_dataset import HSICropDataset
    crop, _ = read_hsi(shared_path("paper", "chikusei", "block_282.mat"))
    write_mat(str(tmp_path / "mat" / "a.mat"), {"Y": crop})
    write_envi(str(tmp_path / "envi" / "a"), crop, chikusei_wavelengths())
    write_tiff(str(tmp_path / "tiff" / "a.tif"), crop, chikusei_wavelengths())
    items = [HSICropDataset(str(tmp_path / kind))[0] for kind in ("mat", "envi", "tiff")]
    for x, y, _ in items[1:]:
        assert np.array_equal(x.numpy(), items[0][0].numpy()) and np.array_equal(y.numpy(), items[0][1].numpy())
