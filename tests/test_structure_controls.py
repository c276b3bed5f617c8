"""Synthetic-structure controls (ubf/evaluation/structure_controls.py): the statistics against known
fields, the matched statistics on inferred-like maps of real AID tiles, the simplex, seeds, files."""
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from ubf.core.errors import UserError
from ubf.data.matio import read_mat
from ubf.evaluation import structure_controls as sc
from tests.conftest import shared_path

SIZE = 64


def blurred_noise_maps(scale: float, count: int = 4, size: int = SIZE, k: int = 3, seed: int = 0):
    """Softmax of Gaussian-filtered white noise (scipy, periodic): maps of a known smoothness."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(count):
        z = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), scale, mode="wrap")
                      for _ in range(k)], -1)
        maps.append(sc.softmax(3 * z / z.std()).astype(np.float32))
    return maps


@pytest.fixture(scope="module")
def inferred_like():
    """Per-pixel softmax of a linear map of the colours of real AID tiles (what a per-pixel unmixing
    encoder gives): 12 maps of 64 x 64, K = 5, with a brightness map (the tiles' mean intensity)."""
    folder = shared_path("rgb", "aid")
    files = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))[::125][:12]
    weights = np.random.default_rng(0).normal(size=(3, 5)) * 3
    maps, bright = [], []
    for path in files:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)[:SIZE, :SIZE] / 255
        bright.append((0.5 + rgb.mean(2)).astype(np.float32))
        rgb = (rgb - rgb.mean((0, 1))) / (rgb.std((0, 1)) + 1e-6)
        maps.append(sc.softmax(rgb @ weights).astype(np.float32))
    return maps, bright


def test_statistics_of_known_maps():
    # left half pure endmember 0, right half pure endmember 1, never endmember 2
    half = np.zeros((8, 10, 3), np.float32)
    half[:, :5, 0], half[:, 5:, 1] = 1, 1
    stats = sc.map_statistics([half], [np.full((8, 10), 2.0)])
    assert stats["shares"] == pytest.approx([0.5, 0.5, 0.0]) and stats["mean_max"] == pytest.approx(1.0)
    assert stats["bright_mean"] == pytest.approx(2.0) and stats["bright_std"] == pytest.approx(0.0)
    # white noise filtered by a Gaussian of std s has the covariance exp(-d^2 / (4 s^2)): 1/e at d = 2 s
    rng = np.random.default_rng(1)
    for s in (2.0, 4.0):
        field = np.stack([ndimage.gaussian_filter(rng.standard_normal((256, 256)), s, mode="wrap")
                          for _ in range(2)], -1)
        assert sc.correlation_length([field]) == pytest.approx(2 * s, rel=0.1)


def check_matched(stats, generated, source_brightness=True):
    """Shares within 0.03 and mean largest abundance within 0.03 (absolute), correlation length within
    15 %, brightness mean and std within 10 %."""
    assert np.abs(np.subtract(generated["shares"], stats["shares"])).max() < 0.03, (generated, stats)
    assert generated["mean_max"] == pytest.approx(stats["mean_max"], abs=0.03)
    assert generated["correlation_length"] == pytest.approx(stats["correlation_length"], rel=0.15)
    if source_brightness:
        assert generated["bright_mean"] == pytest.approx(stats["bright_mean"], rel=0.1)
        assert generated["bright_std"] == pytest.approx(stats["bright_std"], rel=0.1)


def on_simplex(maps):
    for m in maps:
        assert m.min() >= 0 and np.abs(m.sum(-1) - 1).max() < 1e-5


def test_dead_leaves_match_inferred_like_maps(inferred_like):
    source, bright = inferred_like
    maps, brights, fit = sc.dead_leaves_maps(source, 12, SIZE, seed=0, brightness=bright)
    assert len(maps) == 12 and maps[0].shape == (SIZE, SIZE, 5) and brights[0].shape == (SIZE, SIZE)
    on_simplex(maps)
    check_matched(fit["source"], sc.map_statistics(maps, brights))
    # every disk is filled with a pixel of the source maps (with that pixel's brightness)
    pool = np.concatenate([np.concatenate([m.reshape(-1, 5), b.reshape(-1, 1)], 1) for m, b in zip(source, bright)])
    generated = np.concatenate([maps[0].reshape(-1, 5), brights[0].reshape(-1, 1)], 1)
    distance, _ = cKDTree(pool).query(generated)
    assert distance.max() < 1e-5


def test_gaussian_fields_match_inferred_like_maps(inferred_like):
    source, bright = inferred_like
    maps, brights, fit = sc.gaussian_field_maps(source, 12, SIZE, seed=0, brightness=bright)
    on_simplex(maps)
    check_matched(fit["source"], sc.map_statistics(maps, brights))
    assert fit["temperature"] > 0 and len(fit["offsets"]) == 5


@pytest.mark.parametrize("kind", ["dead_leaves", "gaussian_field"])
def test_seeds_reproduce_and_the_length_follows_the_target(kind):
    generate = sc.CONTROLS[kind]
    lengths = []
    for scale in (1.0, 2.5, 5.0):
        source = blurred_noise_maps(scale, count=3)
        maps, _, fit = generate(source, 4, 48, seed=3)
        lengths.append((fit["source"]["correlation_length"], sc.map_statistics(maps)["correlation_length"]))
    targets, generated = zip(*lengths)
    assert targets[0] < targets[1] < targets[2]
    assert generated[0] < generated[1] < generated[2], lengths
    again, _, _ = generate(source, 4, 48, seed=3)
    np.testing.assert_array_equal(again[0], maps[0])
    other, _, _ = generate(source, 4, 48, seed=4)
    assert not np.array_equal(other[0], maps[0])


def test_control_files(tmp_path):
    from ubf.pipeline.synthesis import read_sampled_abundances
    source = blurred_noise_maps(2.0, count=2)
    bright = [np.full((SIZE, SIZE), 0.8, np.float32), np.full((SIZE, SIZE), 1.2, np.float32)]
    out = str(tmp_path / "control")
    summary = sc.write_control_set("dead_leaves", source, out, 3, (40, 48), seed=0, brightness=bright)
    files = sorted(os.listdir(out))
    assert files == ["control.json", "dead_leaves_0000.mat", "dead_leaves_0001.mat", "dead_leaves_0002.mat"]
    data = read_mat(os.path.join(out, "dead_leaves_0001.mat"))
    assert data["Abu"].shape == (40, 48, 3) and data["Bright"].shape == (40, 48)
    np.testing.assert_allclose(data["SR"], 2 * data["Abu"] - 1, atol=1e-6)
    np.testing.assert_allclose(read_sampled_abundances(os.path.join(out, "dead_leaves_0001.mat")), data["Abu"],
                               atol=1e-6)  # what Synthesis.py and Evaluate.py --abundances read
    assert set(np.unique(data["Bright"])) <= {np.float32(0.8), np.float32(1.2)}
    written = json.load(open(os.path.join(out, "control.json")))
    assert written["kind"] == "dead_leaves" and written["size"] == [40, 48] and summary["count"] == 3
    assert "r_max" in written and written["generated"]["n_maps"] == 3
    with pytest.raises(UserError, match="exists already"):
        sc.write_control_set("dead_leaves", source, out, 3, 40, seed=0)
    with pytest.raises(UserError, match="expected one of"):
        sc.write_control_set("voronoi", source, out, 3, 40, seed=0)
    maps, brights = sc.read_abundance_maps(out)
    assert len(maps) == 3 and brights is not None and maps[0].shape == (40, 48, 3)
