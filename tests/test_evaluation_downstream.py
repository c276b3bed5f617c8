"""`Evaluate.py downstream`: both arms, every seed, mean/std/difference; MRAE by hand; the real split."""
import json
import os

import numpy as np
import pytest

import Evaluate
from data.matio import read_hsi, write_mat
from core.metrics import mrae
from evaluation.downstream import DownstreamSettings, split_real, summarise
from tests.conftest import shared_path


def test_mrae_hand_computed_with_floor():
    gt = np.array([[[0.5, 0.0]]])
    pred = np.array([[[0.4, 0.02]]])
    # 0.1 / 0.5 and 0.02 / 0.01 (the floor)
    assert mrae(gt, pred) == pytest.approx((0.2 + 2.0) / 2)


def test_summary_is_mean_std_and_per_seed_difference():
    report = {}
    for seed, (a, b) in enumerate([(30.0, 31.0), (32.0, 32.5)]):
        for m in ("psnr", "ssim", "sam", "mrae"):
            report[f"real_only.seed{seed}.{m}"], report[f"real_plus_synthetic.seed{seed}.{m}"] = a, b
    out = summarise(report, [0, 1])
    assert out["real_only.psnr_mean"] == 31.0 and out["real_only.psnr_std"] == 1.0
    assert out["delta.psnr_mean"] == 0.75 and out["delta.psnr_std"] == 0.25


def test_single_real_file_is_split_by_columns(tmp_path):
    cube = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0][:40, :64]
    write_mat(str(tmp_path / "a.mat"), {"Y": cube})
    train, test, text = split_real([str(tmp_path / "a.mat")], DownstreamSettings(crop=16, bands=[53, 33, 14]))
    assert train[0][1].shape == (40, 32, 59) and test[0][1].shape == (40, 32, 59)
    assert train[0][0].shape == (40, 32, 3) and "columns" in text


def test_downstream_report(tmp_path):
    real_dir, synthetic_dir = tmp_path / "real", tmp_path / "synthetic"
    for name in ("block_118.mat", "block_282.mat"):
        write_mat(str(real_dir / name), {"Y": read_hsi(shared_path("paper", "chikusei", name))[0][:32, :32]})
    cube = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0][32:64, 32:64]
    write_mat(str(synthetic_dir / "s.mat"), {"HSI": (cube - cube.min()) / (cube.max() - cube.min())})
    out = str(tmp_path / "out")
    assert Evaluate.main(["downstream", "--real", str(real_dir), "--synthetic", str(synthetic_dir), "--out", out,
                          "--steps", "3", "--crop", "16", "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    for arm in ("real_only", "real_plus_synthetic"):
        for m in ("psnr", "ssim", "sam", "mrae"):
            values = [report[f"{arm}.seed{s}.{m}"] for s in (0, 1, 2)]
            assert report[f"{arm}.{m}_mean"] == pytest.approx(np.mean(values))
            assert report[f"{arm}.{m}_std"] == pytest.approx(np.std(values))
    difference = report["real_plus_synthetic.psnr_mean"] - report["real_only.psnr_mean"]
    assert report["delta.psnr_mean"] == pytest.approx(difference)
    assert report["n_test_images"] == 1 and report["settings.bands"] == "53,33,14"
    assert os.path.getsize(os.path.join(out, "plots", "downstream.png")) > 1000
    assert "difference (b - a)" in open(os.path.join(out, "summary.md")).read()


def test_denoising_task_beats_its_noisy_input():
    """The spatial task: a model trained 150 steps on smooth cubes removes much of sigma = 0.1 noise
    (the noisy input itself scores 20 dB: 10 log10(1 / 0.1^2))."""
    import torch
    from core.metrics import psnr
    from evaluation.downstream import test_arm, train_arm
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    cubes = []
    for _ in range(3):
        bands = [0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(0.2, 1.0, (6, 2))]
        cubes.append(np.stack(bands, axis=-1).astype(np.float32))
    pairs = [(c[..., :3], c) for c in cubes]
    settings = DownstreamSettings(seeds=[0], steps=150, batch=4, crop=16, task="denoise", noise_sigma=0.1)
    model = train_arm(pairs[:2], None, settings, 0, torch.device("cpu"), progress=False)
    scores = test_arm(model, pairs[2:], torch.device("cpu"), settings)
    noisy = (cubes[2] + 0.1 * rng.standard_normal(cubes[2].shape)).astype(np.float32)
    assert psnr(cubes[2], noisy) == pytest.approx(20.0, abs=0.3)
    assert scores["psnr"] > 24.0, scores
