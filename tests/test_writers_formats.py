"""Writers (issue 22): --format mat|mat73|envi|tiff with the metadata GDAL, QGIS and SPy read, and georeferencing
carried from a georeferenced input to a raster output on the same grid.

Checked without the code under test: headers read as text, GDAL's XML parsed with ElementTree, HDF5 read with
h5py, and, when installed, the files opened by rasterio/GDAL, Spectral Python, tifffile and the `mat73` package.
"""
import os
import xml.etree.ElementTree as ElementTree

import h5py
import numpy as np
import pytest
import scipy.io as sio

from test_readers_formats import ascii_value, cube_of, write_envi_by_hand, write_tiff_by_hand
from ubf.data.cubes import read_scene, write_cube
from ubf.data.matio import read_mat
from ubf.data.tiff import read_tiff_tags, tag_text

WAVELENGTHS = np.array([450.0, 500.0, 550.0, 600.0, 650.0, 700.0])
# EPSG:32654 (WGS 84 / UTM 54N), pixel-is-area, as GDAL writes them: model type, raster type, projected CRS
GEOKEYS = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32654]
GEO_TAGS = [(33550, 12, [30.0, 30.0, 0.0]), (33922, 12, [0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0]),
            (34735, 3, GEOKEYS)]


def header_fields(path):
    fields = {}
    for line in open(path):
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    return fields


# ---------------------------------------------------------------- mat73

def test_mat73_has_the_reference_keys_in_matlab_layout(tmp_path):
    abu = np.random.default_rng(0).dirichlet(np.ones(5), size=(4, 6)).astype(np.float32)
    variables = {"Abu": abu, "GT": cube_of((4, 6, 3)), "class": "forest", "wavelengths": WAVELENGTHS}
    path = write_cube(str(tmp_path / "a"), "mat73", variables)
    assert open(path, "rb").read(19) == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as f:
        assert f["Abu"].shape == (5, 6, 4)  # MATLAB's 4 x 6 x 5, reversed by HDF5's row-major order
        assert f["Abu"].attrs["MATLAB_class"] == b"single" and f["class"].attrs["MATLAB_class"] == b"char"
        assert np.array_equal(f["Abu"][()].T, abu)
        assert "".join(map(chr, f["class"][()].ravel())) == "forest"
    back = read_mat(path)
    assert np.array_equal(back["Abu"], abu) and np.allclose(back["wavelengths"].ravel(), WAVELENGTHS)
    mat73 = pytest.importorskip("mat73")  # an independent reader of MATLAB's v7.3 conventions
    loaded = mat73.loadmat(path)
    assert np.array_equal(loaded["Abu"], abu) and loaded["class"] == "forest"


def test_stage2_reads_mat73_abundances_like_mat(tmp_path):
    from ubf.data.abundance_dataset import AbundanceDataset
    abu = np.random.default_rng(1).dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)
    write_cube(str(tmp_path / "v5" / "a"), "mat", {"Abu": abu})
    write_cube(str(tmp_path / "v73" / "a"), "mat73", {"Abu": abu})
    first, second = (AbundanceDataset([str(tmp_path / v / "a.mat")], image_size=8, channels=3)[0]
                     for v in ("v5", "v73"))
    assert first.shape == (3, 8, 8) and np.array_equal(first.numpy(), second.numpy())


# ---------------------------------------------------------------- ENVI and TIFF metadata

def test_envi_header_carries_what_spy_and_gdal_read(tmp_path):
    cube = cube_of((5, 7, 6))
    header = write_cube(str(tmp_path / "a"), "envi", {"HSI": cube}, WAVELENGTHS, [f"{w:g} nm" for w in WAVELENGTHS],
                        fwhm=np.full(6, 12.5), description="test cube", nodata=-9999.0)
    fields = header_fields(header)
    assert fields["wavelength units"] == "Nanometers" and fields["fwhm"].startswith("{12.5000")
    assert fields["default bands"] == "{5, 3, 1}"  # nearest 640 / 550 / 460 nm, 1-based: 650, 550, 450
    assert fields["data ignore value"] == "-9999.0" and "written by Unmixing Before Fusion" in fields["description"]
    envi = pytest.importorskip("spectral.io.envi")
    image = envi.open(header)
    assert np.array_equal(image.load(), cube)
    assert np.allclose(image.bands.centers, WAVELENGTHS) and image.bands.band_unit == "Nanometers"
    assert np.allclose(image.bands.bandwidths, 12.5) and image.metadata["default bands"] == ["5", "3", "1"]


def test_tiff_carries_gdal_band_metadata(tmp_path):
    cube = cube_of((5, 7, 6))
    path = write_cube(str(tmp_path / "a"), "tiff", {"HSI": cube}, WAVELENGTHS, fwhm=np.full(6, 10.0), nodata=-1.0)
    _, pages = read_tiff_tags(path)
    root = ElementTree.fromstring(tag_text(pages[0], 42112))
    items = {(i.get("name"), i.get("sample"), i.get("domain")): i.text for i in root.iter("Item")}
    assert float(items[("wavelength", "2", None)]) == 550.0 and items[("wavelength_units", "2", None)] == "Nanometers"
    assert float(items[("CENTRAL_WAVELENGTH_UM", "5", "IMAGERY")]) == pytest.approx(0.7)
    assert float(items[("FWHM_UM", "0", "IMAGERY")]) == pytest.approx(0.01)
    assert tag_text(pages[0], 42113) == "-1.0"
    raw = np.frombuffer(open(path, "rb").read(), "<f4", cube.size, int(pages[0][273][0]))
    assert np.array_equal(raw.reshape(cube.shape), cube)  # uncompressed, pixel-interleaved, at StripOffsets
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as src:
        assert src.count == 6 and src.nodata == -1.0
        assert np.array_equal(src.read().transpose(1, 2, 0), cube)
        assert float(src.tags(3)["wavelength"]) == 550.0 and src.tags(3)["wavelength_units"] == "Nanometers"
        assert float(src.tags(6, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]) == pytest.approx(0.7)


# ---------------------------------------------------------------- georeferencing

def test_geotiff_georeferencing_goes_to_tiff_and_envi_outputs(tmp_path):
    src = write_tiff_by_hand(tmp_path / "geo.tif", cube_of((4, 5, 3)), extra=GEO_TAGS)
    georef = read_scene(src).georef
    assert georef.epsg == 32654 and georef.transform == (500000.0, 30.0, 0.0, 4000000.0, 0.0, -30.0)
    out = write_cube(str(tmp_path / "o"), "tiff", {"Abu": cube_of((4, 5, 3))}, georef=georef)
    _, pages = read_tiff_tags(out)
    assert pages[0][34735].tolist() == GEOKEYS and pages[0][33922].tolist()[3:5] == [500000.0, 4000000.0]
    header = write_cube(str(tmp_path / "e"), "envi", {"Abu": cube_of((4, 5, 3))}, georef=georef)
    assert header_fields(header)["map info"] == "{UTM, 1, 1, 500000.0, 4000000.0, 30.0, 30.0, 54, North, WGS-84, " \
                                                "units=Meters}"
    rasterio = pytest.importorskip("rasterio")
    for path in (out, header[:-4] + ".img"):
        with rasterio.open(path) as opened:
            assert opened.crs.to_epsg() == 32654 and tuple(opened.transform)[:6] == (30, 0, 500000, 0, -30, 4000000)


def test_envi_map_info_goes_to_a_geotiff(tmp_path):
    header = write_envi_by_hand(tmp_path / "s", cube_of((4, 5, 3)),
                                "map info = {UTM, 1.5, 1.5, 300015.0, 5000015.0, 10, 10, 33, South, WGS-84}\n")
    georef = read_scene(header).georef
    assert georef.epsg == 32733 and georef.transform == (300010.0, 10.0, 0.0, 5000020.0, 0.0, -10.0)
    out = write_cube(str(tmp_path / "o"), "tiff", {"Abu": cube_of((4, 5, 3))}, georef=georef)
    _, pages = read_tiff_tags(out)
    keys = pages[0][34735].tolist()
    assert keys[keys.index(3072) + 3] == 32733


def test_infer_writes_georeferenced_abundance_rasters_equal_to_the_mat(tmp_path):
    from test_unmixing_infer import tiny_checkpoint
    from ubf.cli.unmixing import main
    (tmp_path / "hsi").mkdir()
    cube = cube_of((9, 11, 12), seed=3)
    cube[0] = -9999
    write_tiff_by_hand(tmp_path / "hsi" / "scene.tif", cube, extra=GEO_TAGS + [(42113, 2, ascii_value("-9999"))])
    tiny_checkpoint(tmp_path / "ckpt.pth")
    outputs = {}
    for fmt in ("mat", "mat73", "tiff", "envi"):
        assert main(["infer", "--ckpt", str(tmp_path / "ckpt.pth"), "--hsi", str(tmp_path / "hsi"), "--out",
                     str(tmp_path / fmt), "--workers", "0", "--device", "cpu", "--format", fmt]) == 0
        outputs[fmt] = sorted(f for f in os.listdir(tmp_path / fmt) if f.startswith("scene"))
    assert outputs == {"mat": ["scene.mat"], "mat73": ["scene.mat"], "tiff": ["scene.tif"],
                       "envi": ["scene.hdr", "scene.img"]}
    reference = sio.loadmat(str(tmp_path / "mat" / "scene.mat"))
    assert set(reference) >= {"Abu", "GT", "Y", "class"}
    assert np.array_equal(read_mat(str(tmp_path / "mat73" / "scene.mat"))["Abu"], reference["Abu"])
    for fmt, name in (("tiff", "scene.tif"), ("envi", "scene.hdr")):
        scene = read_scene(str(tmp_path / fmt / name))
        assert scene.georef.epsg == 32654 and scene.georef.transform[0] == 500000.0
        assert scene.invalid_count == 11 and not scene.valid[0].any()  # the input's no-data row, written as -1
        assert np.array_equal(scene.cube[1:], reference["Abu"][1:])
    assert header_fields(tmp_path / "envi" / "scene.hdr")["band names"].startswith("{endmember 1,")


# ---------------------------------------------------------------- synthesis

@pytest.mark.parametrize("fmt", ["mat73", "envi", "tiff"])
def test_synthesis_formats_with_a_sensor_carry_fwhm(tmp_path, fmt):
    from test_synthesis import fabricate_abundances, fabricate_checkpoint
    from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis
    ckpt = str(tmp_path / "best.pth")
    fabricate_checkpoint(ckpt)
    fabricate_abundances(str(tmp_path / "abu"))
    sensor = tmp_path / "s.csv"
    sensor.write_text("band,center_nm,fwhm_nm\nB,480,30\nG,560,30\nR,650,30\n")
    run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "mat"), options=SynthesisOptions(sensor=str(sensor)))
    summary = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / fmt),
                            options=SynthesisOptions(format=fmt, sensor=str(sensor)))
    name = sorted(os.listdir(summary["hsi_dir"]))[0]
    stem = os.path.splitext(name)[0]
    reference = sio.loadmat(str(tmp_path / "mat" / "HSI" / f"{stem}.mat"))
    scene = read_scene(os.path.join(summary["hsi_dir"], name))
    assert np.array_equal(scene.cube, reference["HSI"])
    if fmt == "mat73":
        assert set(read_mat(os.path.join(summary["hsi_dir"], name))) >= {"HSI", "Abu", "End", "wavelengths"}
    else:
        assert np.allclose(scene.fwhm, 30.0) and np.allclose(scene.wavelengths, [480, 560, 650])
        assert scene.band_names == ["B", "G", "R"]


def test_prepare_writes_mat73_crops_equal_to_mat(tmp_path):
    from ubf.data.prepare import main
    cube = cube_of((16, 16, 5), seed=4)
    src = write_envi_by_hand(tmp_path / "scene", cube, "wavelength = {0.4, 0.5, 0.6, 0.7, 0.8}\n"
                             "wavelength units = Micrometers\n")
    for fmt in ("mat", "mat73"):
        main.__wrapped__(["scene", "--src", src, "--out", str(tmp_path / fmt), "--size", "8", "--split", "train",
                          "--format", fmt])
    names = sorted(os.listdir(tmp_path / "mat" / "trains"))
    assert names == sorted(os.listdir(tmp_path / "mat73" / "trains")) and len(names) == 4
    for name in names:
        with h5py.File(tmp_path / "mat73" / "trains" / name, "r") as f:
            y73 = f["Y"][()].T
        v5 = sio.loadmat(str(tmp_path / "mat" / "trains" / name))
        assert np.array_equal(y73, v5["Y"]) and np.allclose(v5["wavelengths"].ravel(), [400, 500, 600, 700, 800])
