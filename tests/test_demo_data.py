import json
import os

import numpy as np
import pytest

from ubf.core.errors import UserError
from ubf.data.bands import chikusei_wavelengths
from ubf.data.demo_data import STYLE_GENERATORS, main, make_demo_dataset, smooth_abundances
from ubf.data.images import list_images, read_rgb
from ubf.data.matio import read_hsi, read_mat
from ubf.data.spectral_library import resample_spectra


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    return out, make_demo_dataset(out, seed=3, size=24, n_train=2, n_val=1, n_test=1, n_external=3)


def test_layout_and_formats(demo):
    out, made = demo
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        files = sorted(os.listdir(made[split]))
        assert files == [f"scene_{i:03d}.mat" for i in range(n)]
    cube, wavelengths = read_hsi(os.path.join(made["train"], "scene_000.mat"))
    assert cube.shape == (24, 24, 59) and cube.dtype == np.float32
    np.testing.assert_allclose(wavelengths, chikusei_wavelengths())
    assert np.all(np.isfinite(cube)) and cube.min() >= 0 and cube.max() < 1.5
    images = list_images(made["rgb"])
    assert [os.path.basename(p) for p in images] == ["blobs_001.png", "fields_000.png", "stripes_002.png"]
    rgb = read_rgb(images[0])
    assert rgb.shape == (24, 24, 3) and rgb.min() == 0 and rgb.max() == 1  # min-max over the 3 bands
    manifest = json.load(open(made["manifest"]))
    assert manifest["materials"] == made["materials"] and manifest["seed"] == 3


def test_scenes_are_linear_mixtures_of_the_library(demo):
    """Y = (Abu @ S) * shading + small noise: Y / (Abu @ S) is nearly the same across bands per pixel."""
    _, made = demo
    data = read_mat(os.path.join(made["test"], "scene_000.mat"))
    abu, y = data["Abu"], data["Y"]
    assert abu.min() >= 0 and np.allclose(abu.sum(-1), 1, atol=1e-5)
    spectra = resample_spectra(chikusei_wavelengths(), made["materials"])
    mixed = abu @ spectra
    shading = np.median(y / mixed, axis=-1, keepdims=True)
    assert 0.6 <= shading.min() and shading.max() <= 1.4
    assert np.abs(y - mixed * shading).max() < 0.03  # noise 0.003 std
    band = [53, 33, 14]
    np.testing.assert_allclose(data["RGB"], (y[..., band] - y[..., band].min()) / np.ptp(y[..., band]), atol=1e-6)


def test_seeded_and_never_overwritten(demo, tmp_path):
    out, made = demo
    again = make_demo_dataset(str(tmp_path), seed=3, size=24, n_train=2, n_val=1, n_test=1, n_external=3)
    a = read_mat(os.path.join(made["val"], "scene_000.mat"))["Y"]
    b = read_mat(os.path.join(again["val"], "scene_000.mat"))["Y"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="exists already"):
        make_demo_dataset(out, seed=3, size=24, n_train=2, n_val=1, n_test=1, n_external=3)


def test_spatial_generators_give_distinct_statistics():
    rng = np.random.default_rng(0)
    for name, generate in STYLE_GENERATORS.items():
        abu = generate(rng, 32, 4)
        assert abu.shape == (32, 32, 4), name
        assert abu.min() >= 0 and np.allclose(abu.sum(-1), 1), name
        assert abu.std(axis=(0, 1)).max() > 0.1, name  # not a constant image
    smooth = smooth_abundances(rng, 32, 4)
    # smooth scene fields vary gently: neighbouring pixels differ far less than the field's spread
    assert np.abs(np.diff(smooth, axis=0)).mean() < 0.2 * smooth.std()


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--size", "16", "--train", "1", "--val", "0", "--test", "0", "--external", "1",
          "--materials", "seawater", "calcite"])
    assert os.path.isfile(tmp_path / "hsi" / "train" / "scene_000.mat")
    assert os.path.isfile(tmp_path / "rgb" / "fields_000.png")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--materials", "unobtainium", "calcite"])
