"""`Evaluate.py generation` end to end on small real crops, with tiny caps."""
import json
import os

import numpy as np
import pytest

from ubf.cli import evaluate as Evaluate
from ubf.data.matio import read_hsi, write_mat
from ubf.data.normalize import minmax
from tests.conftest import shared_path

SMALL = ["--pixel-cap", "1500", "--prdc-cap", "800", "--patch-cap", "150", "--block-cap", "6", "--block-size", "8",
         "--image-cap", "4", "--feature-steps", "8", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two 48 x 48 real crops; two synthetic HSIs mixed from real spectra with stored Abu and End."""
    root = tmp_path_factory.mktemp("gen")
    real_dir, synthetic_dir = root / "real", root / "synthetic"
    real = []
    for name in ("block_118.mat", "block_282.mat"):
        cube = read_hsi(shared_path("paper", "chikusei", name))[0][:48, :48]
        write_mat(str(real_dir / name), {"Y": cube})
        real.append(minmax(cube))
    rng = np.random.default_rng(0)
    flat = real[0].reshape(-1, real[0].shape[2])
    endmembers = flat[rng.choice(flat.shape[0], 4, replace=False)].T  # (C, 4)
    for i in range(2):
        logits = rng.normal(size=(6, 6, 4)).repeat(8, axis=0).repeat(8, axis=1)  # blocky abundance maps
        abundances = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        write_mat(str(synthetic_dir / f"s{i}.mat"), {"HSI": (abundances @ endmembers.T).astype(np.float32),
                                                     "Abu": abundances.astype(np.float32), "End": endmembers})
    return str(real_dir), str(synthetic_dir), root


def test_generation_report_with_baselines(sets):
    real_dir, synthetic_dir, root = sets
    out = str(root / "report")
    assert Evaluate.main(["generation", "--real", real_dir, "--synthetic", synthetic_dir, "--out", out,
                          "--feature-cache", str(root / "cache")] + SMALL) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    for key in ("F_p", "D_b", "D_b_ncc", "precision", "recall", "FD", "KID", "FD_real_floor", "KID_real_floor",
                "baseline_dirichlet.F_p", "baseline_dirichlet.FD", "baseline_real_heldout.D_b", "timing.total_s"):
        assert key in report, key
    # the real crops scored as if generated: the ceiling of every score
    assert report["baseline_real_copies.F_p"] == pytest.approx(1.0, abs=1e-6)
    assert report["baseline_real_copies.D_b"] == pytest.approx(1.0, abs=1e-4)
    assert report["baseline_real_copies.precision"] == 1.0 and report["baseline_real_copies.recall"] == 1.0
    assert report["baseline_real_copies.FD"] == pytest.approx(0.0, abs=1e-6)
    # mixtures of real spectra: every spectrum close to a real one, but no block is a copy
    assert 0.9 < report["F_p"] <= 1.0
    assert report["D_b_ncc"] < 0.9 and report["baseline_real_copies.D_b_ncc"] == pytest.approx(1.0, abs=1e-4)
    # the synthetic files obey the mixing model they store
    assert report["abundance_sum_error_max"] < 1e-5 and report["abundance_negative_fraction"] == 0.0
    assert report["mixing_rmse"] < 1e-5
    assert report["baseline_dirichlet.endmembers_from"].endswith("s0.mat")
    for name in ("angle_to_nearest_real.png", "mean_spectra.png", "band_density.png"):
        assert os.path.getsize(os.path.join(out, "plots", name)) > 1000
    assert "| synthetic |" in open(os.path.join(out, "summary.md")).read()
    # a finished report is not silently replaced
    with pytest.raises(SystemExit) as stop:
        Evaluate.main(["generation", "--real", real_dir, "--synthetic", synthetic_dir, "--out", out] + SMALL)
    assert stop.value.code == 2


def test_band_count_mismatch_is_a_user_error(sets, tmp_path, capsys):
    real_dir, _, _ = sets
    write_mat(str(tmp_path / "syn" / "x.mat"), {"HSI": np.zeros((16, 16, 7), np.float32)})
    with pytest.raises(SystemExit) as stop:
        Evaluate.main(["generation", "--real", real_dir, "--synthetic", str(tmp_path / "syn"),
                       "--out", str(tmp_path / "out"), "--no-baselines", "--feature-cache", "none"] + SMALL)
    assert stop.value.code == 2
    assert "7 bands, but the real set" in capsys.readouterr().err
