"""Bad inputs of the readers (issue 24): every one ends in one line naming the file, before anything is allocated.

Broken files are made here byte by byte (TIFF, ENVI), with h5py (v7.3 .mat: huge declared sizes, external
links, virtual datasets, external storage) and scipy (a v5 .mat whose zlib stream is corrupt).
"""
import json
import os

import h5py
import numpy as np
import pytest
import scipy.io as sio

from test_readers_formats import cube_of, write_envi_by_hand, write_tiff_by_hand
from ubf.core.errors import UserError
from ubf.data import limits
from ubf.data.cubes import read_cube
from ubf.data.matio import ALLOW_EXTERNAL_ENV, mat_keys, read_hsi, read_mat


def one_line_exit(main, argv, capsys, code=2):
    with pytest.raises(SystemExit) as done:
        main(argv)
    output = capsys.readouterr().err.strip()
    assert done.value.code == code, output
    err = output.splitlines()[-1]  # log lines may come before it
    assert err.startswith("error: ") and "Traceback" not in output
    return err


# ---------------------------------------------------------------- ENVI headers

@pytest.mark.parametrize("field, value, message", [
    ("samples", "0", "'samples = 0' must be positive"),
    ("lines", "-4", "'lines = -4' must be positive"),
    ("bands", "0", "'bands = 0' must be positive"),
    ("header offset", "-16", "'header offset = -16' must be at least 0"),
    ("samples", "7.5", "'samples = 7.5' is not an integer"),
    ("data type", "6", "data type 6 is not supported"),
    ("byte order", "2", "byte order 2"),
])
def test_envi_header_fields_are_checked_once(tmp_path, field, value, message):
    header = write_envi_by_hand(tmp_path / "a", cube_of((4, 5, 3)))
    text = open(header).read()
    key = f"{field} = "
    start = text.index(key)
    text = text[:start] + key + value + text[text.index("\n", start):]
    open(header, "w").write(text)
    with pytest.raises(UserError, match=message) as err:
        read_cube(header)
    assert str(err.value).startswith(header)


def test_envi_data_shorter_than_declared(tmp_path):
    header = write_envi_by_hand(tmp_path / "a", cube_of((4, 5, 3)))
    with open(tmp_path / "a.img", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match=r"a.img: 100 bytes, but the header a.hdr describes 240"):
        read_cube(header)


def test_envi_header_declaring_a_huge_cube_is_refused_by_the_file_size(tmp_path, capsys):
    from ubf.data.prepare import main
    header = write_envi_by_hand(tmp_path / "a", cube_of((4, 5, 3)))
    text = open(header).read().replace("samples = 5", "samples = 100000").replace("lines = 4", "lines = 100000")
    open(header, "w").write(text.replace("bands = 3", "bands = 59"))
    err = one_line_exit(main, ["scene", "--src", header, "--out", str(tmp_path / "o")], capsys)
    assert "a.img: 240 bytes, but the header a.hdr describes 2360000000000" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- TIFF tags

@pytest.mark.parametrize("drop, message", [
    ((273,), r"without StripOffsets \(tag 273\)"),
    ((279,), r"without StripByteCounts \(tag 279\)"),
    ((273, 279), r"StripOffsets \(tag 273\) and StripByteCounts \(tag 279\)"),
])
def test_tiff_without_strip_tables(tmp_path, drop, message):
    path = write_tiff_by_hand(tmp_path / "a.tif", cube_of((4, 5, 3)), drop=drop)
    with pytest.raises(UserError, match=message) as err:
        read_cube(path)
    assert str(err.value).startswith(path)


def test_tiff_with_inconsistent_strip_counts(tmp_path):
    cube = cube_of((4, 5, 3))
    path = write_tiff_by_hand(tmp_path / "a.tif", cube, rows_per_strip=2, drop=(279,), extra=[(279, 4, [120])])
    with pytest.raises(UserError, match="lists 2 strips offsets but 1 byte counts"):
        read_cube(path)
    past = write_tiff_by_hand(tmp_path / "b.tif", cube, drop=(279,), extra=[(279, 4, [10 ** 6])])
    with pytest.raises(UserError, match="strip 0 ends at byte 1000008, past the end of the file"):
        read_cube(past)


def test_tiff_declaring_a_huge_cube_is_refused_before_allocating(tmp_path, capsys):
    from test_unmixing_infer import tiny_checkpoint
    from ubf.cli.unmixing import main
    (tmp_path / "hsi").mkdir()
    path = write_tiff_by_hand(tmp_path / "hsi" / "big.tif", cube_of((2, 2, 12)), drop=(256, 257, 278),
                              extra=[(256, 4, [100000]), (257, 4, [100000])])
    with pytest.raises(UserError, match=r"declares 100000 x 100000 x 12 float32 values \(447.03 GiB\) but holds only"):
        read_cube(path)
    # through a CLI: infer --hsi reports the file in that one line, writes nothing for it, exits 1
    tiny_checkpoint(tmp_path / "ckpt.pth")
    assert main(["infer", "--ckpt", str(tmp_path / "ckpt.pth"), "--hsi", str(tmp_path / "hsi"), "--out",
                 str(tmp_path / "out"), "--workers", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "big.tif: declares 100000 x 100000 x 12" in err and "Traceback" not in err
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".mat")]


def test_memory_bound_is_checked_before_reading(tmp_path, monkeypatch):
    path = write_tiff_by_hand(tmp_path / "a.tif", cube_of((8, 8, 4)))
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    with pytest.raises(UserError, match=r"reading it needs 2.00 KiB, more than the 1000 B of memory available"):
        read_cube(path)
    header = write_envi_by_hand(tmp_path / "e", cube_of((8, 8, 4)))
    with pytest.raises(UserError, match="more than the 1000 B of memory available"):
        read_cube(header)


# ---------------------------------------------------------------- MATLAB v7.3 (HDF5) and v5

def test_hdf5_mat_declaring_a_huge_cube_is_refused_before_allocating(tmp_path):
    path = str(tmp_path / "big.mat")
    with h5py.File(path, "w") as f:
        f.create_dataset("Y", shape=(59, 100000, 100000), dtype="f4", chunks=(1, 64, 64))
    with pytest.raises(UserError, match=r"big.mat: variable 'Y': declares 100000 x 100000 x 59 float32 values "
                                        r"\(2.15 TiB\) but holds only 0 B"):
        read_hsi(path)
    from ubf.data.matio import LazyMatArray
    with pytest.raises(UserError, match="holds only 0 B"):
        LazyMatArray(path)


def _linked_mat(tmp_path, kind):
    other = str(tmp_path / "elsewhere.h5")
    with h5py.File(other, "w") as f:
        f["Y"] = np.ones((3, 5, 4), np.float32)
    path = str(tmp_path / f"{kind}.mat")
    with h5py.File(path, "w") as f:
        if kind == "external_link":
            f["Y"] = h5py.ExternalLink(other, "Y")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(3, 5, 4), dtype="f4")
            layout[:] = h5py.VirtualSource(other, "Y", shape=(3, 5, 4))
            f.create_virtual_dataset("Y", layout)
        else:
            raw = str(tmp_path / "raw.bin")
            np.ones(60, np.float32).tofile(raw)
            f.create_dataset("Y", shape=(3, 5, 4), dtype="f4", external=[(raw, 0, 240)])
    return path


@pytest.mark.parametrize("kind", ["external_link", "virtual", "external_storage"])
def test_v73_mat_linking_to_another_file_is_refused_unless_allowed(tmp_path, monkeypatch, kind):
    path = _linked_mat(tmp_path, kind)
    monkeypatch.delenv(ALLOW_EXTERNAL_ENV, raising=False)
    for reader in (read_hsi, mat_keys, read_mat):
        with pytest.raises(UserError, match=rf"{kind}.mat: variable 'Y' links to another file .*{ALLOW_EXTERNAL_ENV}=1"):
            reader(path)
    monkeypatch.setenv(ALLOW_EXTERNAL_ENV, "1")
    cube, _ = read_hsi(path)
    assert cube.shape == (4, 5, 3) and float(cube.min()) == 1.0


def test_v73_external_link_refused_in_training(tmp_path, monkeypatch, capsys):
    from ubf.cli.unmixing import main
    monkeypatch.delenv(ALLOW_EXTERNAL_ENV, raising=False)
    folder = tmp_path / "train"
    folder.mkdir()
    os.replace(_linked_mat(tmp_path, "external_link"), folder / "a.mat")
    err = one_line_exit(main, ["train", "--train", str(folder), "--val", str(folder), "--out", str(tmp_path / "r"),
                               "-c", "config/demo_unmixing.json"], capsys)
    assert "links to another file" in err


def test_corrupt_zlib_stream_in_a_compressed_v5_mat(tmp_path, capsys):
    from ubf.cli.unmixing import main
    folder = tmp_path / "train"
    folder.mkdir()
    path = str(folder / "z.mat")
    sio.savemat(path, {"Y": np.random.default_rng(0).random((20, 20, 5)).astype(np.float32)}, do_compression=True)
    data = bytearray(open(path, "rb").read())
    for i in range(200, 260):
        data[i] ^= 0x55
    open(path, "wb").write(bytes(data))
    with pytest.raises(UserError, match=r"z.mat: not a readable .mat file \(Error -3 while decompressing"):
        read_hsi(path)
    err = one_line_exit(main, ["train", "--train", str(folder), "--val", str(folder), "--out", str(tmp_path / "r"),
                               "-c", "config/demo_unmixing.json"], capsys)
    assert "z.mat: not a readable .mat file" in err


def test_v5_mat_declaring_huge_dims_is_one_line(tmp_path):
    import struct
    path = str(tmp_path / "h.mat")
    sio.savemat(path, {"Y": np.ones((2, 3, 4), np.float32)})
    data = bytearray(open(path, "rb").read())
    at = data.find(struct.pack("<iiiii", 5, 12, 2, 3, 4))
    data[at + 8:at + 20] = struct.pack("<iii", 100000, 100000, 59)
    open(path, "wb").write(bytes(data))
    with pytest.raises(UserError, match=r"h.mat: not a readable .mat file \(variable 'Y' declares 100000 x 100000 x "
                                        r"59 single values, 2.15 TiB, but the file holds"):
        read_hsi(path)


# ---------------------------------------------------------------- training data

def test_one_pixel_training_cube_is_one_line(tmp_path, capsys):
    from ubf.cli.unmixing import main
    folder = tmp_path / "train"
    folder.mkdir()
    sio.savemat(str(folder / "a.mat"), {"Y": np.random.default_rng(0).random((1, 1, 59)).astype(np.float32)})
    err = one_line_exit(main, ["train", "--train", str(folder), "--val", str(folder), "--out", str(tmp_path / "r"),
                               "-c", "config/demo_unmixing.json", "--epochs", "1"], capsys)
    assert "a.mat: 1 x 1 pixels is too small to train on (at least 2 x 2" in err


# ---------------------------------------------------------------- spectral-response files

@pytest.mark.parametrize("name, content, message", [
    ("bad.json", b'{"bands": [{"name": "B1", "center_nm": 500, ', "unreadable JSON"),
    ("text_fwhm.json", json.dumps({"bands": [{"name": "B1", "center_nm": 500, "fwhm_nm": "ten"}]}).encode(),
     "band centres and FWHM must be numbers"),
    ("number_as_text.json", json.dumps({"bands": [{"name": "B1", "center_nm": 500, "fwhm_nm": "10"}]}).encode(),
     "band centres and FWHM must be numbers"),
    ("list.json", b"[1, 2, 3]", "expected a JSON object"),
    ("binary.json", bytes(range(256)) * 4, "not a text file"),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "not a text file"),
    ("ragged.json", json.dumps({"wavelength_nm": [400, 500], "responses": {"a": [0, 1], "b": [1]}}).encode(),
     "responses must be numbers"),
    ("nan_fwhm.csv", b"band,center_nm,fwhm_nm\nB1,500,nan\n", "every FWHM positive"),
])
def test_bad_spectral_response_files_are_one_line(tmp_path, capsys, name, content, message):
    from ubf.data.sensors import main
    path = tmp_path / name
    path.write_bytes(content)
    (tmp_path / "src").mkdir()
    write_envi_by_hand(tmp_path / "src" / "a", cube_of((4, 4, 6)), "wavelength = {450, 500, 550, 600, 650, 700}\n")
    err = one_line_exit(main, ["render", "--sensor", str(path), "--src", str(tmp_path / "src"), "--out",
                               str(tmp_path / "out")], capsys)
    assert name in err and message in err


def test_sensors_render_of_envi_as_envi(tmp_path):
    """Issue 24: `render --src ENVI --format envi` raised KeyError 'HSI'. Values: the Gaussian band of a cube
    that is constant per band equals that constant (a response-weighted mean)."""
    from ubf.data.sensors import main
    (tmp_path / "src").mkdir()
    cube = np.ones((4, 5, 6), np.float32) * np.float32(0.25)
    write_envi_by_hand(tmp_path / "src" / "a", cube, "wavelength = {450, 500, 550, 600, 650, 700}\n"
                       "map info = {UTM, 1, 1, 300000, 5000000, 10, 10, 33, North, WGS-84}\n")
    sensor = tmp_path / "s.csv"
    sensor.write_text("band,center_nm,fwhm_nm\nG,560,20\nR,640,20\n")
    assert main(["render", "--sensor", str(sensor), "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--format", "envi"]) == 0
    header = open(tmp_path / "out" / "a.hdr").read()
    assert "band names = {G, R}" in header and "fwhm = {20.0000, 20.0000}" in header
    assert "map info = {UTM, 1, 1, 300000, 5000000, 10, 10, 33, North, WGS-84}" in header
    raw = np.fromfile(tmp_path / "out" / "a.img", "<f4").reshape(2, 4, 5)
    assert np.allclose(raw, 0.25, atol=1e-6)
