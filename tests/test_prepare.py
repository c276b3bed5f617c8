"""Dataset preparation: tiny files fabricated in each real format, and the real files of ../shared/data."""
import csv
import json
import os
import struct

import h5py
import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from conftest import shared_path
from ubf.core.errors import UserError
from ubf.data.bands import chikusei_wavelengths
from ubf.data.envi import read_envi_header
from ubf.data.matio import read_hsi, read_mat
from ubf.data.prepare import main
from ubf.data.prepare_hsi import HSRS_SC_WAVELENGTHS, resample_bands
from ubf.data.splits import allocate, assign, crop_windows, parse_split, region_grid, valid_windows
from ubf.data.tiff import _lzw_decode, read_tiff_cube


# ---------------------------------------------------------------- fabricated files

def write_v73(path, variables):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte user block, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            value = np.asarray(value)
            f.create_dataset(name, data=value.T)
            f[name].attrs["MATLAB_class"] = np.bytes_({np.float64: "double", np.float32: "single",
                                                       np.uint16: "uint16"}[value.dtype.type])
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def write_planar_tiff(path, cube):
    """Uncompressed little-endian TIFF, one strip per band (PlanarConfiguration 2), from (C, H, W) uint16."""
    bands, height, width = cube.shape
    data = np.ascontiguousarray(cube, dtype="<u2").tobytes()
    n_tags, header = 11, 8
    ifd_size = 2 + n_tags * 12 + 4
    arrays_at = header + ifd_size
    bps_at, offsets_at, counts_at, fmt_at = (arrays_at + k * bands * 4 for k in range(4))
    pixels_at = arrays_at + 4 * bands * 4
    strip = height * width * 2
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, bands, bps_at), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, bands, offsets_at), (277, 3, 1, bands), (278, 4, 1, height), (279, 4, bands, counts_at),
            (284, 3, 1, 2), (339, 3, bands, fmt_at)]
    out = bytearray(b"II*\0" + struct.pack("<I", header) + struct.pack("<H", n_tags))
    for tag, kind, count, value in tags:
        out += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                          else struct.pack("<I", value))
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{bands}H", *[16] * bands) + b"\0" * (bands * 2)
    out += struct.pack(f"<{bands}I", *[pixels_at + i * strip for i in range(bands)])
    out += struct.pack(f"<{bands}I", *[strip] * bands)
    out += struct.pack(f"<{bands}H", *[1] * bands) + b"\0" * (bands * 2)
    with open(path, "wb") as f:
        f.write(bytes(out) + data)


def position_cube(height, width, bands, dtype=np.float64):
    """Values that tell where they came from: row, column and band."""
    r, c, b = np.meshgrid(np.arange(height), np.arange(width), np.arange(bands), indexing="ij")
    return (r * 0.01 + c * 0.0001 + b * 0.000001 + 0.001).astype(dtype)


def load_manifest(out, dataset):
    with open(os.path.join(out, f"manifest_{dataset}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def overlap(a, b):
    """Do the crop windows of two manifest rows share a pixel (same source)?"""
    if a["source"] != b["source"]:
        return False
    ar, ac, ah, aw = (int(a[k]) for k in ("row", "col", "height", "width"))
    br, bc, bh, bw = (int(b[k]) for k in ("row", "col", "height", "width"))
    return ar < br + bh and br < ar + ah and ac < bc + bw and bc < ac + aw


def assert_splits_disjoint(rows):
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["split"] != b["split"]:
                assert not overlap(a, b), (a, b)


# ---------------------------------------------------------------- split rule

def test_parse_split_and_allocate():
    assert parse_split("train=0.8,val=0.1,test=0.1") == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1})
    assert parse_split("test") == {"test": 1.0}
    assert parse_split("val=1,train=3") == {"train": 0.75, "val": 0.25}
    assert allocate(16, {"train": 0.9, "val": 0.1}) == {"train": 14, "val": 2}
    assert allocate(4, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 2, "val": 1, "test": 1}
    assert allocate(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 8, "val": 1, "test": 1}
    for bad in ("train=0.8,foo=0.2", "train=x", "train=0", "train=1,train=2"):
        with pytest.raises(UserError):
            parse_split(bad)
    with pytest.raises(UserError, match="cannot fill"):
        allocate(2, {"train": 0.5, "val": 0.25, "test": 0.25})


def test_assign_is_seeded_and_proportional():
    keys = [f"f{i}" for i in range(20)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    first = assign(keys, fractions, seed=3)
    assert first == assign(list(reversed(keys)), fractions, seed=3)  # order of the input does not matter
    assert first != assign(keys, fractions, seed=4)
    assert sorted(first.values()).count("train") == 16 and list(first.values()).count("val") == 2


def test_regions_cover_the_scene_and_crops_stay_inside():
    grid = region_grid(50, 37, 16)
    cover = np.zeros((50, 37), int)
    for r0, r1, c0, c1 in grid:
        assert r1 - r0 >= 16 and c1 - c0 >= 16
        cover[r0:r1, c0:c1] += 1
        for r, c in crop_windows(r0, r1, c0, c1, 8, 3):
            assert r0 <= r and r + 8 <= r1 and c0 <= c and c + 8 <= c1
    assert len(grid) == 3 * 2 and np.all(cover == 1)
    # centred: 20 rows, crops of 8 every 5 -> 3 crops covering 18 rows, one row of margin each side
    assert crop_windows(0, 20, 0, 8, 8, 5) == [(1, 0), (6, 0), (11, 0)]


def test_valid_windows_matches_brute_force():
    rng = np.random.default_rng(0)
    valid = rng.random((20, 23)) > 0.02
    windows = crop_windows(0, 20, 0, 23, 5, 2)
    expected = [(r, c) for r, c in windows if valid[r:r + 5, c:c + 5].all()]
    assert valid_windows(windows, valid, 5) == expected and 0 < len(expected) < len(windows)


def test_resample_bands_equals_np_interp_per_pixel():
    rng = np.random.default_rng(1)
    cube = rng.random((3, 4, 48))
    target = chikusei_wavelengths()
    out = resample_bands(cube, HSRS_SC_WAVELENGTHS, target)
    assert out.shape == (3, 4, 59)
    for r in range(3):
        for c in range(4):
            np.testing.assert_allclose(out[r, c], np.interp(target, HSRS_SC_WAVELENGTHS, cube[r, c]), atol=1e-12)
    with pytest.raises(UserError, match="extrapolating"):
        resample_bands(cube, HSRS_SC_WAVELENGTHS, chikusei_wavelengths(all_bands=True))


# ---------------------------------------------------------------- Chikusei

@pytest.fixture
def chikusei_cube():
    return position_cube(40, 36, 128)


def test_chikusei_v73_crops_bands_and_disjoint_splits(tmp_path, chikusei_cube):
    src = tmp_path / "HyperspecVNIR_Chikusei_20140729.mat"
    write_v73(src, {"chikusei": chikusei_cube})
    out = tmp_path / "out"
    summary = main(["chikusei", "--src", str(src), "--out", str(out), "--size", "8", "--stride", "4",
                    "--split", "train=0.5,val=0.25,test=0.25"])
    rows = load_manifest(out, "chikusei")
    # region 16 (2 x size, as stride < size): 2 x 2 regions of 20 x 18 pixels, each with
    # (20 - 8) // 4 + 1 = 4 rows and (18 - 8) // 4 + 1 = 3 columns of crops; regions dealt 2 / 1 / 1
    assert len(rows) == 4 * 4 * 3 and summary["written"] == len(rows)
    assert summary["per_split"] == {"train": 24, "val": 12, "test": 12}
    assert_splits_disjoint(rows)
    for row in rows:
        y, wavelengths = read_hsi(os.path.join(out, row["output"]))
        r, c = int(row["row"]), int(row["col"])
        assert y.dtype == np.float32 and y.shape == (8, 8, 59)
        np.testing.assert_array_equal(y, chikusei_cube[r:r + 8, c:c + 8, 7:66].astype(np.float32))
        np.testing.assert_allclose(wavelengths, chikusei_wavelengths())
        assert row["output"].startswith({"train": "trains/", "val": "evals/", "test": "tests/"}[row["split"]])
    assert 398 < wavelengths[0] < 400 and 697 < wavelengths[-1] < 699


def test_chikusei_v5_equals_v73_and_all_bands(tmp_path, chikusei_cube):
    v5, v73 = tmp_path / "v5" / "c.mat", tmp_path / "v73" / "c.mat"
    v5.parent.mkdir()
    v73.parent.mkdir()
    sio.savemat(v5, {"chikusei": chikusei_cube})
    write_v73(v73, {"chikusei": chikusei_cube})
    for src, out in ((v5, "o5"), (v73, "o73")):
        main(["chikusei", "--src", str(src), "--out", str(tmp_path / out), "--size", "16", "--bands", "all"])
    rows5, rows73 = load_manifest(tmp_path / "o5", "chikusei"), load_manifest(tmp_path / "o73", "chikusei")
    assert rows5 == rows73 and len(rows5) == 4  # 2 x 2 regions of 16, default split 0.8 / 0.1 / 0.1
    assert {r["split"] for r in rows5} == {"train", "val", "test"}
    a = read_mat(tmp_path / "o5" / rows5[0]["output"])
    b = read_mat(tmp_path / "o73" / rows5[0]["output"])
    assert a["Y"].shape == (16, 16, 128)
    np.testing.assert_array_equal(a["Y"], b["Y"])
    np.testing.assert_allclose(a["wavelengths"].ravel(), np.linspace(363, 1018, 128))


def test_chikusei_uint16_is_scaled_and_band_first_is_detected(tmp_path):
    raw = (position_cube(20, 18, 128) * 10000).astype(np.uint16)
    src = tmp_path / "c.mat"
    with h5py.File(src, "w") as f:  # written from NumPy without transposing: MATLAB sees 128 x 18 x 20
        f.create_dataset("chikusei", data=raw)
    out = tmp_path / "out"
    main(["chikusei", "--src", str(src), "--out", str(out), "--size", "8", "--split", "train=0.5,val=0.5"])
    rows = load_manifest(out, "chikusei")
    assert len(rows) == 4
    for row in rows:
        r, c = int(row["row"]), int(row["col"])
        y = read_mat(out / row["output"])["Y"]
        np.testing.assert_allclose(y, raw[r:r + 8, c:c + 8, 7:66] / 10000.0, rtol=1e-6)


def test_chikusei_envi_release(tmp_path):
    raw = (position_cube(18, 20, 128) * 10000).astype(np.int16)  # ENVI data type 2, band sequential
    raw.transpose(2, 0, 1).astype("<i2").tofile(tmp_path / "chikusei.bsq")
    wavelengths = ", ".join(f"{w / 1000:.5f}" for w in np.linspace(362.6, 1017.6, 128))
    (tmp_path / "chikusei.hdr").write_text(
        "ENVI\nsamples = 20\nlines = 18\nbands = 128\nheader offset = 0\ndata type = 2\ninterleave = bsq\n"
        f"byte order = 0\nwavelength units = Micrometers\nwavelength = {{\n {wavelengths}}}\n")
    assert read_envi_header(tmp_path / "chikusei.hdr")["samples"] == "20"
    out = tmp_path / "out"
    main(["chikusei", "--src", str(tmp_path / "chikusei.hdr"), "--out", str(out), "--size", "8",
          "--split", "train=0.5,val=0.5"])
    row = load_manifest(out, "chikusei")[0]
    y, wl = read_hsi(out / row["output"])
    r, c = int(row["row"]), int(row["col"])
    np.testing.assert_allclose(y, raw[r:r + 8, c:c + 8, 7:66] / 10000.0, rtol=1e-6)
    np.testing.assert_allclose(wl, np.linspace(362.6, 1017.6, 128)[7:66], atol=0.006)  # the header's own


def test_chikusei_wrong_layout_is_one_line_error(tmp_path, capsys):
    src = tmp_path / "c.mat"
    sio.savemat(src, {"chikusei": np.zeros((10, 12, 100))})
    with pytest.raises(SystemExit) as exit_info:
        main(["chikusei", "--src", str(src), "--out", str(tmp_path / "o"), "--size", "4"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert "10 x 12 x 100" in err and "H x W x 128" in err
    sio.savemat(src, {"hsi_cube": np.zeros((10, 12, 128))})
    with pytest.raises(UserError, match="found: hsi_cube"):
        main.__wrapped__(["chikusei", "--src", str(src), "--out", str(tmp_path / "o"), "--size", "4"])
    with pytest.raises(UserError, match="--wavelength-range applies to unmixing-benchmark, scene, not chikusei"):
        main.__wrapped__(["chikusei", "--src", str(src), "--wavelength-range", "400", "700"])
    with pytest.raises(UserError, match="--region 4 is smaller than --size 8"):
        main.__wrapped__(["chikusei", "--src", str(src), "--size", "8", "--region", "4"])


def test_real_chikusei_block_already_subset(tmp_path):
    src = shared_path("paper", "chikusei", "block_118.mat")  # 128 x 128 x 59: the band axis is the last
    out = tmp_path / "out"
    main(["chikusei", "--src", src, "--out", str(out), "--size", "64"])
    rows = load_manifest(out, "chikusei")
    full, _ = read_hsi(src)
    assert len(rows) == 4 and {r["split"] for r in rows} == {"train", "val", "test"}
    for row in rows:
        y, wl = read_hsi(out / row["output"])
        r, c = int(row["row"]), int(row["col"])
        np.testing.assert_array_equal(y, full[r:r + 64, c:c + 64])
        np.testing.assert_allclose(wl, chikusei_wavelengths())


# ---------------------------------------------------------------- resume, refusal, overwrite

def test_resume_refusal_and_overwrite(tmp_path):
    src = tmp_path / "c.mat"
    sio.savemat(src, {"chikusei": position_cube(32, 32, 128)})
    out = tmp_path / "out"
    args = ["chikusei", "--src", str(src), "--out", str(out), "--size", "8"]
    first = main(args)
    assert first["written"] == 16
    rows = load_manifest(out, "chikusei")
    victim = out / rows[3]["output"]
    kept = out / rows[0]["output"]
    stamp = os.stat(kept).st_mtime_ns
    os.remove(victim)
    again = main(args)  # resumes: only the missing crop is written
    assert (again["written"], again["skipped"]) == (1, 15) and victim.exists()
    assert os.stat(kept).st_mtime_ns == stamp and load_manifest(out, "chikusei") == rows
    with pytest.raises(UserError, match="other settings.*size 8 \\(now 16\\)"):
        main.__wrapped__(["chikusei", "--src", str(src), "--out", str(out), "--size", "16"])
    third = main(["chikusei", "--src", str(src), "--out", str(out), "--size", "16", "--overwrite"])
    assert third["written"] == 4 and not kept.exists()  # the size-8 crops are gone
    assert json.loads((out / "prepare_chikusei.json").read_text())["size"] == 16
    assert sum(len(list((out / split).iterdir())) for split in ("trains", "evals", "tests")) == 4


def test_refuses_files_it_did_not_write(tmp_path):
    src = tmp_path / "c.mat"
    sio.savemat(src, {"chikusei": position_cube(16, 16, 128)})
    out = tmp_path / "out"
    foreign = out / "trains" / "c_r0008_c0008.mat"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"somebody else's")
    with pytest.raises(UserError, match="holds no record"):
        main.__wrapped__(["chikusei", "--src", str(src), "--out", str(out), "--size", "8", "--split", "train"])
    assert foreign.read_bytes() == b"somebody else's"


# ---------------------------------------------------------------- ARAD, Harvard, HSRS-SC, benchmark

def test_arad_v73_split_by_file(tmp_path):
    src = tmp_path / "Train_Spectral"
    src.mkdir()
    cubes = {}
    for i in range(3):
        cube = (position_cube(12, 16, 31) + i).astype(np.float32)
        cubes[f"ARAD_1K_{i:04d}.mat"] = cube
        write_v73(src / f"ARAD_1K_{i:04d}.mat", {"cube": cube, "bands": np.arange(400.0, 701.0, 10.0)[None, :],
                                                  "norm_factor": np.array([[1.5]])})
    out = tmp_path / "out"
    main(["arad", "--src", str(src), "--out", str(out), "--size", "8"])
    rows = load_manifest(out, "arad")
    assert len(rows) == 3 * 2  # one row of two 8 x 8 crops per 12 x 16 cube
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["source"], row["split"]) == row["split"]  # whole files per split
        y, wl = read_hsi(out / row["output"])
        r, c = int(row["row"]), int(row["col"])
        np.testing.assert_array_equal(y, cubes[row["source"]][r:r + 8, c:c + 8])
        np.testing.assert_allclose(wl, np.arange(400, 701, 10))
    assert sorted(split_of.values()) == ["test", "train", "val"]


def test_harvard_crops_avoid_masked_pixels(tmp_path):
    ref = position_cube(24, 28, 31)
    lbl = np.ones((24, 28), np.uint8)
    lbl[10:13, 3:6] = 0  # a moving object masked out
    sio.savemat(tmp_path / "imga1.mat", {"ref": ref, "lbl": lbl})
    out = tmp_path / "out"
    main(["harvard", "--src", str(tmp_path / "imga1.mat"), "--out", str(out), "--size", "8", "--stride", "4",
          "--split", "test"])
    rows = load_manifest(out, "harvard")
    windows = {(int(r["row"]), int(r["col"])) for r in rows}
    every = set(crop_windows(0, 24, 0, 28, 8, 4))
    assert windows == {(r, c) for r, c in every if lbl[r:r + 8, c:c + 8].all()} and len(windows) < len(every)
    y, wl = read_hsi(out / rows[0]["output"])
    assert y.shape == (8, 8, 31) and wl[0] == 420 and wl[-1] == 720


def test_hsrs_sc_tiffs_resampled_with_classes(tmp_path):
    rng = np.random.default_rng(2)
    cubes = {}
    (tmp_path / "src" / "Farmland").mkdir(parents=True)
    (tmp_path / "src" / "Forest").mkdir()
    cubes["Farmland/1.tif"] = rng.integers(0, 4000, (48, 8, 10)).astype(np.uint16)
    write_planar_tiff(tmp_path / "src" / "Farmland" / "1.tif", cubes["Farmland/1.tif"])
    cubes["Forest/1.tif"] = rng.integers(0, 4000, (48, 8, 10)).astype(np.uint16)  # one LZW page per band
    pages = [Image.fromarray(band) for band in cubes["Forest/1.tif"]]
    pages[0].save(tmp_path / "src" / "Forest" / "1.tif", save_all=True, append_images=pages[1:],
                  compression="tiff_lzw")
    out = tmp_path / "out"
    main(["hsrs-sc", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "8"])
    rows = load_manifest(out, "hsrs-sc")
    assert [(r["class"], r["split"], r["output"]) for r in rows] == [
        ("Farmland", "test", "tests/Farmland_1_r0000_c0001.mat"), ("Forest", "test", "tests/Forest_1_r0000_c0001.mat")]
    target = chikusei_wavelengths()
    for row in rows:
        y, wl = read_hsi(out / row["output"])
        assert y.shape == (8, 8, 59)
        np.testing.assert_allclose(wl, target)
        spectrum = cubes[row["source"]][:, 3, 4] / 10000.0  # uint16 read as reflectance x 10000
        np.testing.assert_allclose(y[3, 3], np.interp(target, HSRS_SC_WAVELENGTHS, spectrum), rtol=1e-5)
    bad = tmp_path / "bad" / "Urban"
    bad.mkdir(parents=True)
    write_planar_tiff(bad / "x.tif", np.zeros((31, 8, 8), np.uint16))
    with pytest.raises(UserError, match="31 bands, expected HSRS-SC's 48"):
        main.__wrapped__(["hsrs-sc", "--src", str(tmp_path / "bad"), "--out", str(tmp_path / "o2"), "--size", "8"])


def test_tiff_lzw_decoder_against_pillow(tmp_path):
    # varied enough that the code table fills up: widths 9 to 12 bits and clear codes are all exercised
    image = (np.arange(128 * 128, dtype=np.uint64).reshape(128, 128) ** 2 * 7919 % 65521).astype(np.uint16)
    Image.fromarray(image).save(tmp_path / "x.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_tiff_cube(tmp_path / "x.tif")[..., 0], image)
    # hand-made stream: clear, 'a', 'b', then code 258 ('ab', just added), end; 9 bits each, MSB first
    codes = [256, 97, 98, 258, 257]
    bits = "".join(f"{c:09b}" for c in codes)
    stream = int(bits + "0" * (-len(bits) % 8), 2).to_bytes(-(-len(bits) // 8), "big")
    assert _lzw_decode(stream) == b"abab"


def test_unmixing_benchmark_layout(tmp_path):
    cube = position_cube(12, 10, 5)
    y = cube.transpose(1, 0, 2).reshape(-1, 5).T  # bands x pixels, column-major pixels
    sio.savemat(tmp_path / "scene.mat", {"Y": y, "lines": 12, "cols": 10})
    out = tmp_path / "out"
    main(["unmixing-benchmark", "--src", str(tmp_path / "scene.mat"), "--out", str(out), "--size", "4",
          "--wavelength-range", "400", "800"])
    rows = load_manifest(out, "unmixing-benchmark")
    assert len(rows) == 3 * 2 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert_splits_disjoint(rows)
    for row in rows:
        got, wl = read_hsi(out / row["output"])
        r, c = int(row["row"]), int(row["col"])
        np.testing.assert_array_equal(got, cube[r:r + 4, c:c + 4].astype(np.float32))
        np.testing.assert_allclose(wl, [400, 500, 600, 700, 800])


# ---------------------------------------------------------------- RGB folders

def test_rgb_folders_resize_tiles_and_split(tmp_path):
    rng = np.random.default_rng(3)
    for cls, n in (("airport", 3), ("beach", 2)):
        (tmp_path / "AID" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
                tmp_path / "AID" / cls / f"{cls}_{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(tmp_path / "AID" / "beach" / "tiny.png")
    out = tmp_path / "rgb"
    main(["rgb", "--src", str(tmp_path / "AID"), "--out", str(out), "--size", "16"])
    rows = load_manifest(out, "rgb")
    assert len(rows) == 6 and {r["class"] for r in rows} == {"airport", "beach"}
    row = next(r for r in rows if r["source"] == "airport/airport_0.jpg")
    assert row["output"] == "airport/airport_0.png" and (row["row"], row["col"], row["height"]) == ("0", "5", "30")
    with Image.open(out / "airport" / "airport_0.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
        src = Image.open(tmp_path / "AID" / "airport" / "airport_0.jpg").convert("RGB")
        expected = src.resize((16, 16), Image.Resampling.BICUBIC, box=(5, 0, 35, 30))
        np.testing.assert_array_equal(np.asarray(im), np.asarray(expected))
    tiles = tmp_path / "tiles"
    main(["rgb", "--src", str(tmp_path / "AID"), "--out", str(tiles), "--size", "16", "--rgb-mode", "tiles",
          "--split", "train=0.6,val=0.2,test=0.2", "--format", "jpg"])
    rows = load_manifest(tiles, "rgb")
    assert len(rows) == 5 * 2  # 30 x 40 -> one row of two tiles; the 10 x 10 image is skipped
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["output"].startswith({"train": "trains/", "val": "evals/", "test": "tests/"}[r["split"]] + r["class"])
               and r["output"].endswith(".jpg") for r in rows)
    with Image.open(tiles / rows[0]["output"]) as im:
        assert im.size == (16, 16) and im.format == "JPEG"


# ---------------------------------------------------------------- real data of ../shared/data

def test_real_samson_as_unmixing_benchmark(tmp_path):
    src = shared_path("hsi", "samson.mat")
    out = tmp_path / "out"
    main(["unmixing-benchmark", "--src", src, "--out", str(out), "--size", "32", "--stride", "16",
          "--region", "40", "--wavelength-range", "401", "889"])
    rows = load_manifest(out, "unmixing-benchmark")
    assert_splits_disjoint(rows)
    full, _ = read_hsi(src)
    assert full.shape == (95, 95, 156)
    for row in rows:
        y, wl = read_hsi(out / row["output"])
        r, c = int(row["row"]), int(row["col"])
        np.testing.assert_array_equal(y, full[r:r + 32, c:c + 32])
        assert wl.shape == (156,) and wl[0] == 401 and wl[-1] == 889
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_real_aid_and_rgb_folders(tmp_path):
    aid = shared_path("paper", "aid")
    out = tmp_path / "aid"
    main(["rgb", "--src", aid, "--out", str(out), "--size", "256", "--format", "jpg"])
    rows = load_manifest(out, "rgb")
    assert len(rows) == 5 and {r["class"] for r in rows} == {"aid"}
    for row in rows:  # already 256 x 256 JPEGs: copied byte for byte
        with open(os.path.join(aid, row["source"]), "rb") as a, open(out / row["output"], "rb") as b:
            assert a.read() == b.read()
    rgb = shared_path("rgb")
    out = tmp_path / "rgb"
    main(["rgb", "--src", rgb, "--out", str(out), "--size", "64"])
    rows = load_manifest(out, "rgb")
    # every image under rgb/, counted here by walking the folder; its class is the folder it sits in
    expected = {}
    for folder, _, names in os.walk(rgb):
        for name in names:
            if name.lower().endswith((".png", ".jpg", ".jpeg")):
                expected.setdefault(os.path.relpath(folder, rgb).replace(os.sep, "/"), []).append(name)
    assert {"natural", "remote"} <= set(expected)
    assert {r["class"] for r in rows} == set(expected)
    assert len(rows) == sum(len(v) for v in expected.values())
    for row in rows:
        with Image.open(out / row["output"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
