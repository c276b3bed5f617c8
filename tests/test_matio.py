import h5py
import numpy as np
import pytest
import scipy.io as sio

from ubf.core.errors import UserError
from conftest import shared_path
from ubf.data.matio import LazyMatArray, read_array, read_hsi, read_mat, write_mat


def write_v73(path, variables):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte user block, axes reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            f.create_dataset(name, data=np.asarray(value).transpose())


def test_v73_arrays_come_back_in_matlab_order(tmp_path):
    cube = np.random.default_rng(0).random((7, 5, 4)).astype(np.float32)
    write_v73(tmp_path / "a.mat", {"cube": cube, "bands": np.arange(400, 440, 10.0)[None]})
    data, wavelengths = read_hsi(str(tmp_path / "a.mat"))
    np.testing.assert_array_equal(data, cube)
    np.testing.assert_array_equal(wavelengths, [400, 410, 420, 430])
    with LazyMatArray(str(tmp_path / "a.mat")) as lazy:
        assert lazy.shape == (7, 5, 4)
        np.testing.assert_array_equal(lazy.window(slice(2, 6), slice(1, 4)), cube[2:6, 1:4])


def test_v5_and_v73_agree(tmp_path):
    cube = np.random.default_rng(1).random((6, 3, 2))
    sio.savemat(tmp_path / "v5.mat", {"ref": cube})
    write_v73(tmp_path / "v73.mat", {"ref": cube})
    np.testing.assert_allclose(read_hsi(str(tmp_path / "v5.mat"))[0], read_hsi(str(tmp_path / "v73.mat"))[0])


def test_missing_key_lists_available_keys(tmp_path):
    sio.savemat(tmp_path / "k.mat", {"foo": np.zeros((2, 2, 2)), "bar": 1})
    with pytest.raises(UserError, match=r"k.mat: no key among .* \(found: foo, bar\)|\(found: bar, foo\)"):
        read_hsi(str(tmp_path / "k.mat"))
    with pytest.raises(UserError, match=r"no key 'Y' \(found:"):
        read_array(str(tmp_path / "k.mat"), key="Y")
    assert read_hsi(str(tmp_path / "k.mat"), key="foo")[0].shape == (2, 2, 2)


def test_nan_truncated_and_not_a_mat_file(tmp_path):
    cube = np.ones((3, 3, 2))
    cube[1, 1, 0] = np.nan
    sio.savemat(tmp_path / "n.mat", {"Y": cube})
    with pytest.raises(UserError, match="n.mat: variable 'Y' contains 1 NaN/Inf"):
        read_hsi(str(tmp_path / "n.mat"))
    sio.savemat(tmp_path / "t.mat", {"Y": np.random.rand(20, 20, 20)})
    raw = (tmp_path / "t.mat").read_bytes()
    (tmp_path / "t.mat").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(UserError, match="t.mat"):
        read_hsi(str(tmp_path / "t.mat"))
    (tmp_path / "x.mat").write_text("hello")
    with pytest.raises(UserError, match="x.mat: not a readable .mat file"):
        read_mat(str(tmp_path / "x.mat"))


def test_write_mat_refuses_to_overwrite(tmp_path):
    write_mat(str(tmp_path / "o.mat"), {"Y": np.zeros((2, 2, 2), np.float32)})
    with pytest.raises(UserError, match="exists already"):
        write_mat(str(tmp_path / "o.mat"), {"Y": np.ones((2, 2, 2))}, overwrite=False)
    assert read_mat(str(tmp_path / "o.mat"))["Y"].sum() == 0


def test_benchmark_layout_is_reshaped_column_major():
    path = shared_path("hsi", "samson.mat")
    raw = read_mat(path)
    cube, _ = read_hsi(path)
    lines, cols = int(raw["lines"].ravel()[0]), int(raw["cols"].ravel()[0])
    assert cube.shape == (lines, cols, raw["Y"].shape[0])
    # pixel (row r, column c) is column c * lines + r of Y (MATLAB column-major)
    for r, c in [(0, 0), (3, 7), (lines - 1, cols - 2)]:
        np.testing.assert_allclose(cube[r, c], raw["Y"][:, c * lines + r], rtol=1e-6)


def test_real_chikusei_crop():
    cube, _ = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))
    assert cube.shape == (128, 128, 59) and cube.dtype == np.float32


def test_mat_shape_without_reading_values(tmp_path):
    from ubf.data.matio import mat_shape
    sio.savemat(tmp_path / "v5.mat", {"cube": np.zeros((4, 3, 2))})
    write_v73(tmp_path / "v73.mat", {"cube": np.zeros((4, 3, 2))})
    assert mat_shape(str(tmp_path / "v5.mat"), "cube") == (4, 3, 2)
    assert mat_shape(str(tmp_path / "v73.mat"), "cube") == (4, 3, 2)
    with pytest.raises(UserError, match=r"no key 'Y' \(found: cube\)"):
        mat_shape(str(tmp_path / "v73.mat"), "Y")
