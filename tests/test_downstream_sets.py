"""On-the-fly synthetic sets from abundance maps (ubf/evaluation/synthetic_sets.py) against a real
Synthesis.py run, `Evaluate.py downstream --abundances`, and the convergence curves."""
import json
import os

import numpy as np
import pytest
import torch

from ubf.cli import evaluate as Evaluate
from ubf.cli import synthesis as Synthesis
from ubf.core.checkpoint import save_checkpoint
from ubf.core.errors import UserError
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.matio import read_mat, write_mat
from ubf.evaluation import synthetic_sets
from ubf.evaluation.downstream import Curve, DownstreamSettings, random_crop, train_arm
from ubf.evaluation.synthetic_sets import load_abundance_set

C, K, BANDS = 59, 4, [53, 33, 14]


def fabricate_checkpoint(path: str, seed: int = 0) -> np.ndarray:
    """An unmixing checkpoint holding only what synthesis reads: decoder.weight (C, K, 1, 1)."""
    weight = torch.rand(C, K, 1, 1, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1
    save_checkpoint({"stage": "unmixing", "model": {"decoder.weight": weight}, "config": {"data": {}},
                     "out_bands": C}, path)
    return weight[:, :, 0, 0].numpy()


def fabricate_abundances(folder, sizes=((20, 28), (24, 24), (16, 36)), seed: int = 0) -> list[np.ndarray]:
    """Sampler-like files (SR in [-1, 1], slightly off the simplex) and one Abu-only file."""
    rng = np.random.default_rng(seed)
    maps = []
    for i, (h, w) in enumerate(sizes):
        abu = rng.dirichlet(np.ones(K) * 0.5, size=(h, w)).astype(np.float32)
        if i == 0:
            write_mat(os.path.join(folder, f"m{i}.mat"), {"Abu": abu})
            maps.append(abu)
        else:
            sr = np.clip(2 * abu - 1 + rng.normal(scale=0.05, size=abu.shape), -1, 1).astype(np.float32)
            write_mat(os.path.join(folder, f"m{i}.mat"), {"SR": sr})
            maps.append((sr + 1) / 2)
    return maps


@pytest.fixture
def material(tmp_path):
    ckpt = str(tmp_path / "unmixing.pth")
    end = fabricate_checkpoint(ckpt)
    folder = tmp_path / "abundances"
    maps = fabricate_abundances(str(folder))
    return ckpt, str(folder), end, maps, tmp_path


@pytest.mark.parametrize("flags, mode, simplex", [([], "minmax", False),
                                                   (["--endmembers", "raw", "--simplex"], "raw", True)])
def test_crops_rendered_on_the_fly_equal_crops_of_the_synthesis_output(material, flags, mode, simplex):
    ckpt, folder, _, _, tmp_path = material
    out = str(tmp_path / f"synthesis_{mode}")
    Synthesis.main(["--abundances", folder, "--ckpt", ckpt, "--out", out, "--no-progress", *flags])  # a real run
    source = load_abundance_set(folder, ckpt, BANDS, mode, simplex)
    assert len(source) == 3 and source.bands == C
    for index, name in enumerate(("m0", "m1", "m2")):
        written = read_mat(os.path.join(out, "HSI", name + ".mat"))["HSI"]
        real_like = prepare_pair(written, BANDS)  # what a synthetic HSI file gets in `Evaluate.py downstream`
        rows, cols = slice(3, 3 + 12), slice(5, 5 + 12)
        model_input, target = source.pair(index, rows, cols)
        np.testing.assert_allclose(target, real_like[1][rows, cols], atol=2e-6)
        np.testing.assert_allclose(model_input, real_like[0][rows, cols], atol=2e-6)
        # a random crop draws the same window, turn and flip as the same crop of the file would
        ours = source.crop(index, 12, np.random.default_rng(7))
        theirs = random_crop(real_like, 12, np.random.default_rng(7))
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


def test_brightness_multiplies_and_extremes_are_streamed(material, monkeypatch):
    ckpt, _, end, _, tmp_path = material
    rng = np.random.default_rng(3)
    abu = rng.dirichlet(np.ones(K), size=(30, 10)).astype(np.float32)
    bright = rng.uniform(0.5, 1.5, size=(30, 10)).astype(np.float32)
    folder = tmp_path / "bright"
    write_mat(str(folder / "a.mat"), {"Abu": abu, "Bright": bright})
    monkeypatch.setattr(synthetic_sets, "RENDER_ROWS", 7)  # the extremes come from 5 blocks of rows
    source = load_abundance_set(str(folder), ckpt, BANDS, "raw", False)
    hsi = (abu.astype(np.float64) @ end.T.astype(np.float64)) * bright[..., None]
    lo, hi, lo3, hi3 = source.extremes[0]
    assert lo == pytest.approx(hsi.min(), rel=1e-5) and hi == pytest.approx(hsi.max(), rel=1e-5)
    assert lo3 == pytest.approx(hsi[..., BANDS].min(), rel=1e-5)
    assert hi3 == pytest.approx(hsi[..., BANDS].max(), rel=1e-5)
    model_input, target = source.pair(0)
    np.testing.assert_allclose(target, (hsi - hsi.min()) / (hsi.max() - hsi.min()), atol=2e-6)
    three = hsi[..., BANDS]
    np.testing.assert_allclose(model_input, (three - three.min()) / (three.max() - three.min()), atol=2e-6)
    assert source.nbytes() == abu.nbytes + bright.nbytes  # abundances (and brightness) only
    as_is = load_abundance_set(str(folder), ckpt, BANDS, "raw", False, synthetic_norm="as_is")
    np.testing.assert_allclose(as_is.pair(0)[1], hsi, rtol=1e-5)  # the target as rendered
    np.testing.assert_allclose(as_is.pair(0)[0], model_input, atol=2e-6)  # the input still min-maxed


def test_bad_abundance_files_are_one_line_errors(material):
    ckpt, _, _, _, tmp_path = material
    write_mat(str(tmp_path / "shape" / "a.mat"), {"Abu": np.full((6, 6, K), 0.25, np.float32),
                                                  "Bright": np.ones((6, 5), np.float32)})
    with pytest.raises(UserError, match=r"a\.mat: 'Bright' has shape"):
        load_abundance_set(str(tmp_path / "shape"), ckpt, BANDS)
    write_mat(str(tmp_path / "k" / "a.mat"), {"Abu": np.full((6, 6, K + 1), 0.2, np.float32)})
    with pytest.raises(UserError, match=r"a\.mat: abundances have K = 5"):
        load_abundance_set(str(tmp_path / "k"), ckpt, BANDS)


def smooth_cube(rng, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(0.2, 1, (C, 2))],
                    axis=-1).astype(np.float32)


def test_cli_abundance_set_with_unet_sr4_and_curves(material):
    ckpt, folder, _, _, tmp_path = material
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_mat(str(tmp_path / "real" / f"{name}.mat"), {"Y": smooth_cube(rng)})
    out = str(tmp_path / "out")
    common = ["downstream", "--real", str(tmp_path / "real"), "--task", "sr4", "--model", "unet",
              "--crop", "16", "--batch-size", "2", "--seeds", "0", "--no-progress", "--device", "cpu"]
    assert Evaluate.main([*common, "--abundances", folder, "--endmembers", ckpt, "--out", out, "--steps", "4",
                          "--eval-every", "2", "--protocol", "pretrain", "--pretrain-steps", "3",
                          "--synthetic-cap", "1"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["n_synthetic_files"] == 3  # abundance sets are not capped
    assert report["settings.model"] == "unet" and report["settings.width"] == 16
    assert report["settings.skip"] == "identity" and report["task_description"].startswith("x4 super-resolution")
    assert report["settings.lr"] == 1e-3  # the UNet's default (the cnn keeps 2e-3)
    assert report["settings.endmember_mode"] == "minmax" and report["settings.simplex"] is False
    assert [s for s, _ in report["curve.real_only.seed0"]] == [0, 2, 4]
    # steps counted across pre-training (3) and fine-tuning (4): 0, 2, 4, 6 and the last, 7
    assert [s for s, _ in report["curve.real_plus_synthetic.seed0"]] == [0, 2, 4, 6, 7]
    assert report["curve.real_only.seed0"][-1][1] == pytest.approx(report["real_only.seed0.psnr"])
    # the UNet starts as its path: at step 0 it scores exactly the bicubic input
    assert report["curve.real_only.seed0"][0][1] == pytest.approx(report["input.psnr"])
    assert os.path.getsize(os.path.join(out, "plots", "curves.png")) > 1000
    assert "curves.png" in open(os.path.join(out, "summary.md")).read()
    # the real-only arm (with its curve) is reused by a second set with the same settings
    again = str(tmp_path / "again")
    assert Evaluate.main([*common, "--abundances", folder, "--endmembers", ckpt, "--out", again, "--steps", "4",
                          "--eval-every", "2", "--reuse-real-only", os.path.join(out, "report.json")]) == 0
    second = json.load(open(os.path.join(again, "report.json")))
    assert second["real_only_from"].endswith("report.json")
    assert second["curve.real_only.seed0"] == report["curve.real_only.seed0"]


def test_cli_flag_mistakes_are_one_line_errors(material, capsys):
    ckpt, folder, _, _, tmp_path = material
    base = ["downstream", "--real", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    for extra, message in ((["--abundances", folder], "--abundances needs --endmembers"),
                           (["--synthetic", folder, "--endmembers", ckpt], "render --abundances"),
                           (["--abundances", folder, "--endmembers", ckpt, "--task", "sr4", "--crop", "30"],
                            "multiple of 4")):
        with pytest.raises(SystemExit) as stop:
            Evaluate.main(base + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_curve_records_the_untrained_model_and_every_n_steps():
    rng = np.random.default_rng(1)
    cubes = [smooth_cube(rng, 24)[..., :6] for _ in range(2)]
    pairs = [(c[..., :3], c) for c in cubes]
    settings = DownstreamSettings(seeds=[0], steps=5, batch=2, crop=12, task="denoise", model="unet",
                                  eval_every=2, skip="identity")
    curve = Curve(2, pairs[1:], torch.device("cpu"), settings)
    train_arm(pairs[:1], None, settings, 0, torch.device("cpu"), False, curve)
    assert [s for s, _ in curve.points] == [0, 2, 4, 5]
    noisy_psnr = curve.points[0][1]
    assert noisy_psnr == pytest.approx(20.0, abs=0.5)  # sigma 0.1: 10 log10(1 / 0.01), the noisy input itself
