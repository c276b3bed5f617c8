"""`Evaluate.py reconstruction` reports the core metrics of the unmixing network's reconstruction."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from ubf.cli import evaluate as Evaluate
from ubf.core.checkpoint import save_checkpoint
from ubf.core.metrics import quality_assessment
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.matio import read_hsi, write_mat
from ubf.models.unmixing import build_unmixing_model
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS
from tests.conftest import shared_path


def test_reconstruction_report_matches_direct_metrics(tmp_path):
    cube = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0][:40, :36]
    write_mat(str(tmp_path / "hsi" / "a.mat"), {"Y": cube})
    config = copy.deepcopy(UNMIXING_DEFAULTS)
    config["model"].update(encoder="pixel_mlp", mlp_hidden=8, num_endmembers=3)
    torch.manual_seed(0)
    model = build_unmixing_model(config["model"], 3, 59)
    ckpt = str(tmp_path / "best.pth")
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": config, "band_indices": [53, 33, 14],
                     "in_channels": 3, "out_bands": 59, "wavelengths": None, "epoch": 0}, ckpt)
    out = str(tmp_path / "out")
    assert Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out", out,
                          "--tile", "16", "--overlap", "4", "--no-progress", "--device", "cpu"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    model_input, target = prepare_pair(cube, [53, 33, 14])
    with torch.no_grad():
        _, recon = model.eval()(torch.from_numpy(model_input.transpose(2, 0, 1).copy())[None])
    expected = quality_assessment(target, recon[0].permute(1, 2, 0).numpy())
    # a per-pixel encoder makes tiled inference exact, so the numbers must agree
    for name in ("PSNR", "SSIM", "SAM", "ERGAS", "RMSE", "CC"):
        assert report[name.lower()] == pytest.approx(expected[name], rel=1e-5), name
        assert report[f"file.a.{name.lower()}"] == pytest.approx(expected[name], rel=1e-5)
    assert report["physical.abundance_sum_error_max"] < 1e-5
    assert report["physical.mixing_rmse"] < 1e-5
    assert os.path.getsize(os.path.join(out, "plots", "examples.png")) > 1000
    assert np.isfinite(report["timing.total_s"])


def test_band_mismatch_is_a_user_error(tmp_path, capsys):
    write_mat(str(tmp_path / "hsi" / "a.mat"), {"Y": np.random.rand(16, 16, 10).astype(np.float32)})
    config = copy.deepcopy(UNMIXING_DEFAULTS)
    config["model"].update(encoder="pixel_mlp", mlp_hidden=4, num_endmembers=2)
    model = build_unmixing_model(config["model"], 3, 59)
    ckpt = str(tmp_path / "best.pth")
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": config, "band_indices": [1, 2, 3],
                     "in_channels": 3, "out_bands": 59}, ckpt)
    with pytest.raises(SystemExit):
        Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out", str(tmp_path / "o")])
    assert "10 bands" in capsys.readouterr().err
