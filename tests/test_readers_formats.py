"""Readers on files other tools wrote (issue 22): TIFF + same-name .hdr, LZW without imagecodecs, ENVI bbl and
`data ignore value`, GeoTIFF no-data, 16-bit 3-/4-band GeoTIFF RGB, GDAL band metadata, prepare scene.

Fixtures are written here independently of ubf/data: TIFFs byte by byte with `struct` (and zlib, and a small
9-bit LZW encoder), ENVI headers as text with the raw data from numpy; with rasterio or Spectral Python when
they are installed (those tests skip cleanly without them).
"""
import logging
import os
import struct
import sys
import types
import zlib

import numpy as np
import pytest
import scipy.io as sio

from ubf.core.errors import UserError
from ubf.data.cubes import list_cube_files, read_cube, read_scene

# ---------------------------------------------------------------- independent fixture writers


def lzw_encode_small(data: bytes) -> bytes:
    """TIFF LZW of short data (fewer than 253 codes, so every code is 9 bits): clear, codes, end."""
    table = {bytes([i]): i for i in range(256)}
    codes, word, next_code = [256], b"", 258
    for value in data:
        candidate = word + bytes([value])
        if candidate in table:
            word = candidate
        else:
            codes.append(table[word])
            table[candidate] = next_code
            next_code += 1
            word = bytes([value])
    codes += [table[word], 257]
    assert next_code < 510, "fixture too long for 9-bit codes"
    bits = "".join(format(c, "09b") for c in codes)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def write_tiff_by_hand(path, cube, compression=1, extra=(), rows_per_strip=None, drop=()):
    """A little-endian, pixel-interleaved TIFF of (H, W, C) `cube`; `extra`: (tag, type, values/bytes); `drop`:
    standard tags to leave out (to make broken files; `extra` may put others in their place)."""
    cube = np.ascontiguousarray(cube)
    height, width, bands = cube.shape
    kind = {"u": 1, "i": 2, "f": 3}[cube.dtype.kind]
    rows = rows_per_strip or height
    strips = []
    for top in range(0, height, rows):
        raw = cube[top:top + rows].astype(cube.dtype.newbyteorder("<")).tobytes()
        strips.append(raw if compression == 1 else zlib.compress(raw) if compression == 8 else lzw_encode_small(raw))
    data = b"".join(strips)
    offsets = np.cumsum([8] + [len(s) for s in strips[:-1]]).tolist()
    tags = [(256, 4, [width]), (257, 4, [height]), (258, 3, [cube.dtype.itemsize * 8] * bands), (259, 3, [compression]),
            (262, 3, [1]), (273, 4, offsets), (277, 3, [bands]), (278, 4, [rows]),
            (279, 4, [len(s) for s in strips]), (284, 3, [1]), (339, 3, [kind] * bands)]
    tags = sorted([t for t in tags if t[0] not in drop] + list(extra), key=lambda t: t[0])
    formats = {2: "B", 3: "H", 4: "I", 12: "d"}
    blobs, entries = b"", []
    blob_start = 8 + len(data) + 2 + 12 * len(tags) + 4
    for code, kind_, values in tags:
        payload = values if isinstance(values, bytes) else struct.pack(f"<{len(values)}{formats[kind_]}", *values)
        count = len(payload) // struct.calcsize(formats[kind_])
        if len(payload) <= 4:
            entries.append(struct.pack("<HHI", code, kind_, count) + payload.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", code, kind_, count, blob_start + len(blobs)))
            blobs += payload + b"\0" * (len(payload) % 2)
    with open(path, "wb") as f:
        f.write(b"II" + struct.pack("<HI", 42, 8 + len(data)) + data)
        f.write(struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", 0) + blobs)
    return str(path)


def ascii_value(text: str) -> bytes:
    return text.encode() + b"\0"


def gdal_xml(wavelengths, units="nm", extra=""):
    items = "".join(f'<Item name="wavelength" sample="{i}">{w}</Item><Item name="wavelength_units" sample="{i}">'
                    f'{units}</Item>' for i, w in enumerate(wavelengths))
    return ascii_value(f"<GDALMetadata>{items}{extra}</GDALMetadata>")


def write_envi_by_hand(base, cube, fields="", interleave="bsq", dtype="<f4", data_ext=".img"):
    """ENVI as SPy/ENVI write it: a text header and raw samples from numpy."""
    height, width, bands = cube.shape
    order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
    np.ascontiguousarray(cube.transpose(order)).astype(dtype).tofile(str(base) + data_ext)
    types_ = {"<f4": 4, "<i2": 2, "<u2": 12, "<f8": 5}
    with open(str(base) + ".hdr", "w") as f:
        f.write(f"ENVI\nsamples = {width}\nlines = {height}\nbands = {bands}\nheader offset = 0\n"
                f"file type = ENVI Standard\ndata type = {types_[dtype]}\ninterleave = {interleave}\n"
                f"byte order = 0\n{fields}")
    return str(base) + ".hdr"


class LogLines(logging.Handler):
    """Collects what the project logs (its logger may not propagate to pytest's capture)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def logged():
    handler, logger = LogLines(), logging.getLogger("hsisyn")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def cube_of(shape=(6, 7, 4), seed=0):
    return (np.random.default_rng(seed).random(shape) * 0.5 + 0.1).astype(np.float32)


# ---------------------------------------------------------------- defect 1: a TIFF with a same-name .hdr

def test_tiff_with_a_same_name_envi_header_is_read_as_the_tiff(tmp_path):
    cube = cube_of()
    tif = write_tiff_by_hand(tmp_path / "X.tif", cube, compression=8)
    # ENVI's own sidecar for a TIFF: it describes the bands, not the bytes (file type TIFF)
    with open(tmp_path / "X.hdr", "w") as f:
        f.write("ENVI\nsamples = 7\nlines = 6\nbands = 4\nheader offset = 0\nfile type = TIFF\ndata type = 4\n"
                "interleave = bsq\nbyte order = 0\nwavelength units = Micrometers\n"
                "wavelength = {0.45, 0.55, 0.65, 0.75}\n")
    for path in (tif, str(tmp_path / "X.hdr")):
        back, wavelengths = read_cube(path)
        assert np.array_equal(back, cube)  # first value 0.1 + ..., not raw header bytes as float32 (3.9e-39)
        assert np.allclose(wavelengths, [450, 550, 650, 750])
    assert list_cube_files(str(tmp_path)) == [tif]  # the scene once


def test_training_and_prepare_read_the_tiff_not_its_bytes(tmp_path):
    from ubf.data.hsi_dataset import HSICropDataset
    from ubf.data.prepare import main
    cube = cube_of((16, 16, 4), seed=1)
    folder = tmp_path / "train"
    folder.mkdir()
    write_tiff_by_hand(folder / "X.tif", cube)
    write_envi_by_hand(tmp_path / "unused", cube)  # a real ENVI header, copied beside the TIFF
    os.replace(tmp_path / "unused.hdr", folder / "X.hdr")
    dataset = HSICropDataset(str(folder), bands=[0, 1, 2])
    assert dataset.files == [str(folder / "X.tif")]
    x, y, valid = dataset[0]
    assert np.allclose(y.numpy().transpose(1, 2, 0), (cube - cube.min()) / (cube.max() - cube.min()), atol=1e-6)
    assert float(valid.min()) == 1.0
    main.__wrapped__(["scene", "--src", str(folder / "X.tif"), "--out", str(tmp_path / "prep"), "--size", "8",
                      "--split", "train"])
    crops = sorted((tmp_path / "prep" / "trains").glob("*.mat"))
    assert len(crops) == 4
    first = sio.loadmat(str(crops[0]))["Y"]
    assert np.array_equal(first, cube[:8, :8])


def test_chikusei_prepare_of_a_tiff_with_a_header_reads_the_tiff(tmp_path):
    from ubf.data.prepare import main
    cube = (np.random.default_rng(2).random((10, 12, 128)) * 1000).astype(np.uint16)
    tif = write_tiff_by_hand(tmp_path / "chikusei.tif", cube, rows_per_strip=3)
    with open(tmp_path / "chikusei.hdr", "w") as f:
        f.write("ENVI\nsamples = 12\nlines = 10\nbands = 128\nheader offset = 0\ndata type = 12\nbyte order = 0\n"
                "interleave = bsq\n")
    main.__wrapped__(["chikusei", "--src", tif, "--out", str(tmp_path / "o"), "--size", "4", "--split", "train",
                      "--bands", "all"])
    crop = sio.loadmat(str(sorted((tmp_path / "o" / "trains").glob("*.mat"))[0]))["Y"]
    assert np.allclose(crop, cube[:4, :4] / 10000.0, atol=1e-7)  # integers are reflectance x 10000


# ---------------------------------------------------------------- defect 2: tifffile without imagecodecs

def _fake_tifffile_without_codecs():
    module = types.ModuleType("tifffile")

    class TiffFile:
        def __init__(self, path):
            pass

        def __enter__(self):
            raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

        def __exit__(self, *exc):
            return False
    module.TiffFile = TiffFile
    return module


def test_lzw_tiff_falls_back_to_the_built_in_decoder_when_tifffile_cannot(tmp_path, monkeypatch, logged):
    cube = (np.arange(2 * 3 * 4) % 7).reshape(2, 3, 4).astype(np.uint16)
    path = write_tiff_by_hand(tmp_path / "lzw.tif", cube, compression=5)
    monkeypatch.setitem(sys.modules, "tifffile", _fake_tifffile_without_codecs())
    monkeypatch.setattr("ubf.data.cubes._FALLBACK_LOGGED", set())
    back, _ = read_cube(path)
    assert np.array_equal(back, cube.astype(np.float32))
    assert "tifffile could not decode it" in logged.text and "imagecodecs" in logged.text


def test_lzw_tiff_with_the_real_tifffile(tmp_path):
    """With tifffile installed (with or without imagecodecs) an LZW TIFF reads; imagecodecs absent = the fallback."""
    pytest.importorskip("tifffile")
    cube = (np.arange(2 * 3 * 4) % 5).reshape(2, 3, 4).astype(np.uint16)
    back, _ = read_cube(write_tiff_by_hand(tmp_path / "lzw.tif", cube, compression=5))
    assert np.array_equal(back, cube.astype(np.float32))


def test_rasterio_lzw_geotiff_reads_with_wavelengths_and_nodata(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    cube = cube_of((20, 24, 5), seed=3)
    cube[:3] = -9999
    with rasterio.open(tmp_path / "r.tif", "w", driver="GTiff", height=20, width=24, count=5, dtype="float32",
                       crs="EPSG:32654", transform=from_origin(500000, 4000000, 30, 30), nodata=-9999,
                       compress="lzw") as dst:
        dst.write(cube.transpose(2, 0, 1))
        for band in range(5):
            dst.update_tags(band + 1, wavelength=str(0.45 + 0.1 * band), wavelength_units="micrometers")
    scene = read_scene(str(tmp_path / "r.tif"))
    assert np.allclose(scene.wavelengths, [450, 550, 650, 750, 850])
    assert scene.invalid_count == 3 * 24 and not scene.valid[:3].any() and scene.valid[3:].all()
    assert np.array_equal(scene.cube[3:], cube[3:])
    assert scene.georef.epsg == 32654 and scene.georef.transform[:2] == (500000.0, 30.0)


# ---------------------------------------------------------------- defect 3: bbl and data ignore value

def test_envi_bbl_drops_bands_and_data_ignore_value_masks_pixels(tmp_path, logged):
    cube = cube_of((8, 9, 5), seed=4)
    cube[0, :, :] = -9999  # a no-data border row
    cube[5, 4, 2] = -9999  # one band of one pixel
    header = write_envi_by_hand(tmp_path / "s", cube, "wavelength = {400, 500, 600, 700, 800}\n"
                                "bbl = {1, 1, 0, 1, 1}\ndata ignore value = -9999\nfwhm = {10, 10, 10, 10, 10}\n")
    scene = read_scene(header)
    kept = [0, 1, 3, 4]
    assert scene.cube.shape == (8, 9, 4) and np.allclose(scene.wavelengths, [400, 500, 700, 800])
    assert np.allclose(scene.fwhm, 10) and scene.dropped_bands == [2]
    # band 2 (bad) held the single -9999: dropped first, that pixel is valid again
    assert scene.invalid_count == 9 and not scene.valid[0].any() and scene.valid[1:].all()
    assert np.array_equal(scene.cube[1:], cube[1:][..., kept])
    # filled with each band's valid mean, so the per-file min-max is the valid pixels'
    assert np.allclose(scene.cube[0], cube[1:][..., kept].reshape(-1, 4).mean(0), atol=1e-6)
    assert "1 bad band(s) dropped (bbl = 0): 2 (600.0 nm)" in logged.text
    assert "9 of 72 pixels are no-data (value -9999)" in logged.text


def test_spectral_python_envi_with_bbl_and_nodata(tmp_path):
    envi = pytest.importorskip("spectral.io.envi")
    cube = cube_of((8, 9, 4), seed=5)
    cube[:, :2] = -1
    envi.save_image(str(tmp_path / "spy.hdr"), cube, ext=".img", interleave="bil", force=True,
                    metadata={"wavelength": [0.4, 0.5, 0.6, 0.7], "wavelength units": "Micrometers",
                              "bbl": [1, 0, 1, 1], "data ignore value": -1})
    scene = read_scene(str(tmp_path / "spy.hdr"))
    assert np.allclose(scene.wavelengths, [400, 600, 700]) and scene.cube.shape == (8, 9, 3)
    assert scene.invalid_count == 16
    assert np.array_equal(scene.cube[:, 2:], cube[:, 2:][..., [0, 2, 3]])


def test_geotiff_nodata_tag_masks_pixels(tmp_path):
    cube = cube_of((5, 6, 3), seed=6)
    cube[2, 3] = np.nan
    path = write_tiff_by_hand(tmp_path / "n.tif", cube, extra=[(42113, 2, ascii_value("nan"))])
    scene = read_scene(path)
    assert scene.invalid_count == 1 and not scene.valid[2, 3] and np.all(np.isfinite(scene.cube))
    # without the tag NaN is still an error that names the file and says how to declare it
    with pytest.raises(UserError, match="1 NaN/Inf values .*GDAL_NODATA"):
        read_cube(write_tiff_by_hand(tmp_path / "m.tif", cube[..., :1]))


def test_training_loss_and_metrics_leave_nodata_pixels_out(tmp_path):
    """A -9999 border (issue 22: val PSNR 11.33 dB, SAM 0.00 deg) is masked: the loss and metrics equal
    those computed on the valid pixels alone, by hand."""
    import torch
    from ubf.data.hsi_dataset import HSICropDataset
    from ubf.models.losses import charbonnier, spectral_angle_loss, unmixing_loss
    cube = cube_of((10, 10, 4), seed=7)
    cube[:, :3] = -9999
    folder = tmp_path / "d"
    folder.mkdir()
    write_envi_by_hand(folder / "a", cube, "data ignore value = -9999\n")
    dataset = HSICropDataset(str(folder), bands=[0, 1, 2])
    x, y, valid = dataset[0]
    assert valid.shape == (1, 10, 10) and float(valid[:, :, :3].sum()) == 0 and float(valid[:, :, 3:].min()) == 1
    good = cube[:, 3:]
    assert np.allclose(y.numpy()[:, :, 3:].transpose(1, 2, 0), (good - good.min()) / (good.max() - good.min()),
                       atol=1e-6)
    pred = torch.rand(1, 4, 10, 10, generator=torch.Generator().manual_seed(0))
    weight = torch.zeros(4, 2, 1, 1)
    total, terms = unmixing_loss(pred, y[None], weight, {"charbonnier": 1.0, "sad": 0.1}, valid=valid[None])
    diff = (pred - y[None])[..., 3:]
    assert terms["charbonnier"] == pytest.approx(float(torch.sqrt(diff ** 2 + 1e-6).mean()), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(pred[..., 3:], y[None][..., 3:], dim=1, eps=1e-8)
    assert terms["sad"] == pytest.approx(float(torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)).mean()), rel=1e-6)
    # an all-valid mask gives the plain means exactly
    ones = torch.ones(1, 1, 10, 10)
    assert unmixing_loss(pred, y[None], weight, {"charbonnier": 1.0}, valid=ones)[0] == charbonnier(pred, y[None])
    assert spectral_angle_loss(pred, y[None], valid=None) == spectral_angle_loss(pred, y[None])
    from ubf.core.metrics import psnr, quality_assessment_valid
    target = y.numpy().transpose(1, 2, 0)
    guess = np.clip(target + 0.05, 0, 1)
    metrics = quality_assessment_valid(target, guess, dataset.valid_mask(dataset.files[0]))
    assert metrics["PSNR"] == pytest.approx(psnr(target[:, 3:], guess[:, 3:]), rel=1e-9)


def test_unmixing_train_on_an_envi_cube_with_nodata_and_a_bad_band(tmp_path):
    """End to end: SPy-style ENVI with wavelengths, no-data and a bad band trains, and its metrics are finite."""
    from ubf.cli.unmixing import main
    cube = cube_of((24, 24, 6), seed=8)
    cube[:4] = -9999
    for role in ("train", "val"):
        (tmp_path / role).mkdir()
        write_envi_by_hand(tmp_path / role / "scene", cube, "wavelength = {450, 500, 550, 600, 650, 700}\n"
                           "wavelength units = Nanometers\nbbl = {1, 1, 1, 0, 1, 1}\ndata ignore value = -9999\n")
    out = tmp_path / "run"
    assert main(["train", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--test",
                 str(tmp_path / "none"), "--out", str(out), "--epochs", "1", "--bands", "4", "2", "0",
                 "-c", "config/demo_unmixing.json", "--set", "data.crop_size=16", "data.wavelengths=null"]) == 0
    import json
    record = json.loads(open(out / "metrics.jsonl").readline())
    assert np.isfinite(record["val_PSNR"]) and record["val_SAM"] > 0


# ---------------------------------------------------------------- defect 4: 16-bit 3-/4-band GeoTIFF RGB

@pytest.mark.parametrize("bands", [3, 4])
def test_uint16_geotiff_rgb_reads_scaled_by_the_type_range(tmp_path, bands, logged):
    from ubf.data.images import read_rgb
    image = (np.random.default_rng(bands).random((6, 5, bands)) * 4000).astype(np.uint16)
    path = write_tiff_by_hand(tmp_path / f"s{bands}.tif", image, compression=8)
    rgb = read_rgb(path)
    assert rgb.shape == (6, 5, 3)
    assert np.allclose(rgb, image[..., :3] / 65535.0, atol=1e-7)  # as the 16-bit PNG path scales
    assert ("4th band (alpha or NIR) is dropped" in logged.text) == (bands == 4)


def test_uint16_geotiff_rgb_in_infer_and_prepare_rgb(tmp_path):
    from ubf.data.prepare import main
    from PIL import Image
    image = (np.random.default_rng(9).random((12, 10, 4)) * 60000).astype(np.uint16)
    folder = tmp_path / "src" / "sat"
    folder.mkdir(parents=True)
    write_tiff_by_hand(folder / "a.tif", image)
    main.__wrapped__(["rgb", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "8"])
    png = np.asarray(Image.open(tmp_path / "out" / "sat" / "a.png"))
    assert png.shape == (8, 8, 3) and png.dtype == np.uint8
    from ubf.pipeline.unmixing_infer import load_input
    x, gt = load_input(str(folder / "a.tif"), "rgb", None, None, 0)
    assert x.shape == (12, 10, 3) and x.min() == 0.0 and x.max() == 1.0  # infer min-max normalises each image


# ---------------------------------------------------------------- GDAL band metadata

@pytest.mark.parametrize("xml, expected", [
    (gdal_xml([450, 550, 650]), [450, 550, 650]),
    (gdal_xml([0.45, 0.55, 0.65], "Micrometers"), [450, 550, 650]),
    (ascii_value("<GDALMetadata>" + "".join(f'<Item name="CENTRAL_WAVELENGTH_UM" sample="{i}" domain="IMAGERY">{w}'
                 "</Item>" for i, w in enumerate([0.49, 0.56, 0.665])) + "</GDALMetadata>"), [490, 560, 665]),
    (ascii_value('<GDALMetadata><Item name="wavelength" domain="ENVI">{400, 500, 600}</Item>'
                 '<Item name="wavelength_units" domain="ENVI">Nanometers</Item></GDALMetadata>'), [400, 500, 600]),
])
def test_gdal_band_metadata_gives_wavelengths(tmp_path, xml, expected):
    path = write_tiff_by_hand(tmp_path / "g.tif", cube_of((4, 4, 3)), extra=[(42112, 2, xml)])
    assert np.allclose(read_cube(path)[1], expected)


def test_rasterio_written_wavelengths_select_bands(tmp_path):
    """Band selection by wavelength works on a GeoTIFF whose wavelengths only GDAL's metadata holds."""
    rasterio = pytest.importorskip("rasterio")
    from ubf.data.hsi_dataset import HSICropDataset
    cube = cube_of((8, 8, 6), seed=10)
    (tmp_path / "d").mkdir()
    with rasterio.open(tmp_path / "d" / "a.tif", "w", driver="GTiff", height=8, width=8, count=6,
                       dtype="float32") as dst:
        dst.write(cube.transpose(2, 0, 1))
        for band in range(6):
            dst.update_tags(band + 1, wavelength=str(450 + 50 * band), wavelength_units="nm")
    dataset = HSICropDataset(str(tmp_path / "d"), bands={"wavelengths": [640, 550, 460]})
    assert dataset.band_indices == [4, 2, 0]


def _third_party_scene(tmp_path, writer):
    """A 24 x 24 x 6 scene with wavelengths, a -9999 no-data border and one bad band, written by `writer`."""
    cube = cube_of((24, 24, 6), seed=11)
    cube[:4] = -9999
    wavelengths = [450, 500, 550, 600, 650, 700]
    folder = tmp_path / writer
    folder.mkdir()
    if writer == "rasterio":
        rasterio = pytest.importorskip("rasterio")
        from rasterio.transform import from_origin
        path = folder / "scene.tif"
        with rasterio.open(path, "w", driver="GTiff", height=24, width=24, count=6, dtype="float32",
                           crs="EPSG:32633", transform=from_origin(300000, 5000000, 10, 10), nodata=-9999,
                           compress="deflate") as dst:
            dst.write(cube.transpose(2, 0, 1))
            dst.update_tags(bbl="{1, 1, 1, 0, 1, 1}")
            for band, nm in enumerate(wavelengths):
                dst.update_tags(band + 1, wavelength=str(nm), wavelength_units="nm")
    else:
        envi = pytest.importorskip("spectral.io.envi")
        path = folder / "scene.hdr"
        envi.save_image(str(path), cube, ext=".img", force=True,
                        metadata={"wavelength": wavelengths, "wavelength units": "Nanometers", "data ignore value": -9999,
                                  "bbl": [1, 1, 1, 0, 1, 1],
                                  "map info": "{UTM, 1, 1, 300000, 5000000, 10, 10, 33, North, WGS-84}"})
    return str(path), cube


@pytest.mark.parametrize("writer", ["rasterio", "spy"])
def test_third_party_scene_trains_infers_and_prepares(tmp_path, writer):
    """Issue 22's done-when: a GeoTIFF (rasterio) and an ENVI cube (SPy) with wavelengths, no-data and a bad
    band train, infer (a georeferenced abundance raster) and prepare correctly."""
    from ubf.cli.unmixing import main
    from ubf.data.prepare import main as prepare
    path, cube = _third_party_scene(tmp_path, writer)
    scene = read_scene(path)
    assert scene.cube.shape == (24, 24, 5) and np.allclose(scene.wavelengths, [450, 500, 550, 650, 700])
    assert scene.invalid_count == 4 * 24 and scene.georef.epsg == 32633
    folder = os.path.dirname(path)
    run = tmp_path / "run"
    assert main(["train", "--train", folder, "--val", folder, "--test", str(tmp_path / "none"), "--out", str(run),
                 "--epochs", "1", "--bands", "4", "2", "0", "-c", "config/demo_unmixing.json",
                 "--set", "data.crop_size=16", "data.wavelengths=null"]) == 0
    assert main(["infer", "--ckpt", str(run), "--hsi", folder, "--out", str(tmp_path / "abu"), "--workers", "0",
                 "--device", "cpu", "--format", "tiff"]) == 0
    abu = read_scene(str(tmp_path / "abu" / "scene.tif"))
    assert abu.georef.epsg == 32633 and abu.georef.transform[0] == 300000.0
    assert not abu.valid[:4].any() and abu.valid[4:].all()
    assert np.allclose(abu.cube[4:].sum(axis=2), 1.0, atol=1e-5)
    prepare.__wrapped__(["scene", "--src", path, "--out", str(tmp_path / "prep"), "--size", "8", "--split", "train"])
    crops = sorted((tmp_path / "prep" / "trains").glob("*.mat"))
    assert crops and all(int(c.stem.split("_r")[1][:4]) >= 4 for c in crops)  # no crop on the no-data rows
    first = sio.loadmat(str(crops[0]))
    row, col = (int(part[1:]) for part in crops[0].stem.split("_")[-2:])
    assert np.array_equal(first["Y"], cube[row:row + 8, col:col + 8][..., [0, 1, 2, 4, 5]])
    assert np.allclose(first["wavelengths"].ravel(), [450, 500, 550, 650, 700])
