"""The faithful defaults that are not a config value: the default stage-1 network trains and infers,
checkpoints of the final epoch are used, `End` of either shape is read, Chikusei crops are 128 px,
and the `RGB` key of the authors' crops holds bands 14, 33, 53 in that order."""
import json
import os

import numpy as np
import pytest
import torch

from ubf.cli import unmixing as Unmixing
from conftest import shared_path
from ubf.data.bands import BAND_PRESETS, chikusei_wavelengths
from ubf.data.matio import read_hsi, read_mat, write_mat
from ubf.data.prepare import build_parser, resolve_settings
from ubf.evaluation.baselines import endmembers_from_file
from ubf.evaluation.physical import PhysicalStats
from ubf.pipeline.unmixing_config import load_unmixing_config
from ubf.pipeline.unmixing_train import train_unmixing


def mixed_crops(folder, count=2, size=16, bands=59, seed=0):
    """Tiny crops that follow the linear mixing model: 3 smooth spectra, Dirichlet abundances."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, bands)
    spectra = np.stack([0.2 + 0.6 * grid, 0.8 - 0.5 * grid, 0.3 + 0.4 * np.sin(3 * grid)], axis=1)  # (C, 3)
    for i in range(count):
        abundances = rng.dirichlet(np.ones(3), size=(size, size))
        write_mat(os.path.join(folder, f"crop_{i}.mat"), {"Y": (abundances @ spectra.T).astype(np.float32)})
    return str(folder)


def test_default_network_trains_then_infers_with_the_final_epoch(tmp_path):
    """Paper SSPN, random decoder, every default but the data size: the loss falls, the test metrics and
    `infer` use latest.pth, and the abundances are on the simplex."""
    train = mixed_crops(tmp_path / "train")
    test = mixed_crops(tmp_path / "test", count=1, seed=1)
    cfg = load_unmixing_config(None, {"data.train": train, "data.val": test, "data.test": test, "train.epochs": 6,
                                      "train.batch_size": 2, "data.bands": [40, 25, 10]})
    assert cfg["model"]["encoder"] == "sspn" and cfg["model"]["decoder_init"] == "random"
    assert cfg["model"]["widths"] == [32, 64, 128, 96, 48] and cfg["train"]["lr"] == 2e-4
    run = tmp_path / "run"
    torch.manual_seed(0)
    metrics = train_unmixing(cfg, str(run), torch.device("cpu"))
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    losses, psnr = [r["train_loss"] for r in records], [r["val_PSNR"] for r in records]
    # from a random decoder at lr 2e-4 the loss falls slowly but at every epoch (measured: 0.725 -> 0.688)
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.02
    assert psnr[-1] > psnr[0]
    assert json.load(open(run / "config.json"))["profile"] == "faithful"
    assert metrics["checkpoint"].endswith("latest.pth") and metrics["epoch"] == 6
    assert np.isfinite(metrics["PSNR"]) and 0 <= metrics["SAM"] < 90

    out = tmp_path / "abundances"
    assert Unmixing.main(["infer", "--ckpt", str(run), "--hsi", test, "--out", str(out), "--device", "cpu"]) == 0
    data = read_mat(str(out / "crop_0.mat"))
    assert data["Abu"].shape == (16, 16, 5) and data["Y"].shape == (16, 16, 59)
    assert data["Abu"].min() >= 0 and np.allclose(data["Abu"].sum(-1), 1, atol=1e-5)
    entry = json.loads(open(out / "manifest.jsonl").readline())
    assert entry["checkpoint"].endswith(os.path.join("checkpoint", "latest.pth"))
    improved = tmp_path / "abundances_improved"
    Unmixing.main(["infer", "--ckpt", str(run), "--hsi", test, "--out", str(improved), "--device", "cpu",
                   "--profile", "improved"])
    entry = json.loads(open(improved / "manifest.jsonl").readline())
    assert entry["checkpoint"].endswith(os.path.join("checkpoint", "best.pth"))


def test_end_of_either_shape_is_read(tmp_path):
    rng = np.random.default_rng(2)
    end = rng.random((59, 5)).astype(np.float32)
    abundances = rng.dirichlet(np.ones(5), size=(4, 4)).astype(np.float32)
    cube = abundances @ end.T
    for name, stored in (("matrix", end), ("conv", end[:, :, None, None])):
        path = str(tmp_path / f"{name}.mat")
        write_mat(path, {"HSI": cube, "Abu": abundances, "End": stored})
        np.testing.assert_array_equal(endmembers_from_file(path), end)
        stats = PhysicalStats()
        stats.add(cube, abundances, read_mat(path)["End"])
        assert stats.mixing_values == cube.size and stats.mixing_sq < 1e-8


@pytest.mark.parametrize("dataset, size", [("chikusei", 128), ("arad", 256), ("harvard", 256)])
def test_default_crop_sizes(dataset, size):
    """The authors' stored Chikusei crops are 128 x 128 (../shared/data/README.md); the others stay 256."""
    assert resolve_settings(build_parser().parse_args([dataset, "--src", "x"]))["size"] == size
    assert resolve_settings(build_parser().parse_args([dataset, "--src", "x", "--size", "64"]))["size"] == 64


def test_chikusei_rgb_preset_is_red_green_blue():
    """Textbook colour ranges: red 620-700 nm, green 495-570 nm, blue 450-495 nm, in that channel order."""
    wavelengths = chikusei_wavelengths()
    red, green, blue = (wavelengths[i] for i in BAND_PRESETS["chikusei-rgb"])
    assert 620 <= red <= 700 and 495 <= green <= 570 and 450 <= blue <= 495


@pytest.mark.parametrize("block", ["block_118.mat", "block_282.mat"])
def test_stored_rgb_key_holds_bands_14_33_53_in_that_order(block):
    """Each channel of the authors' `RGB` is, up to one affine map, exactly one band of `Y`: find it by
    correlation with all 59 bands, then check the global min-max over the three bands reproduces it."""
    path = shared_path("paper", "chikusei", block)
    rgb = np.asarray(read_mat(path, ["RGB"])["RGB"], dtype=np.float64)
    cube = read_hsi(path)[0].astype(np.float64)
    flat = cube.reshape(-1, cube.shape[2])
    found = []
    for channel in range(3):
        correlations = [np.corrcoef(rgb[..., channel].ravel(), flat[:, band])[0, 1] for band in range(flat.shape[1])]
        found.append(int(np.argmax(correlations)))
        assert max(correlations) > 0.99999
    assert found == [14, 33, 53]  # blue, green, red: the reverse of an RGB photo's channel order
    three = cube[..., found]
    np.testing.assert_allclose(rgb, (three - three.min()) / (three.max() - three.min()), atol=1e-5)
    # so the preset that matches a photo's R, G, B channels is the key's channels reversed
    assert list(BAND_PRESETS["chikusei-rgb"]) == found[::-1]
