"""experiments/study_failed_run.py: one seed of a study's downstream arm retrained from its report."""
import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import shared_path
from ubf.cli import evaluate as Evaluate
from ubf.data.matio import read_hsi, write_mat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))


def tiny_study(root):
    """A study folder as far as the script reads it: one denoising arm's report (seeds 0 and 1, pre-training
    on a synthetic HSI, fine-tuning on a Chikusei crop, tested on another), written by Evaluate.py itself."""
    whole = {n: read_hsi(shared_path("paper", "chikusei", n))[0] for n in ("block_118.mat", "block_282.mat")}
    write_mat(str(root / "train" / "a.mat"), {"Y": whole["block_118.mat"][:32, :32]})
    write_mat(str(root / "test" / "b.mat"), {"Y": whole["block_282.mat"][:32, :32]})
    write_mat(str(root / "synthetic" / "s.mat"), {"HSI": np.clip(whole["block_118.mat"][64:96, 64:96], 0, None)})
    out = root / "downstream_chikusei_denoise_control_structure"
    assert Evaluate.main(["downstream", "--task", "denoise", "--model", "unet", "--real", str(root / "train"),
                          "--real-test", str(root / "test"), "--synthetic", str(root / "synthetic"), "--out", str(out),
                          "--protocol", "pretrain", "--pretrain-steps", "3", "--steps", "4", "--eval-every", "2",
                          "--finetune-lr-scale", "0.3", "--crop", "16", "--batch-size", "2", "--seeds", "0", "1",
                          "--no-progress", "--device", "cpu"]) == 0
    return json.load(open(out / "report.json"))


def test_a_seed_is_retrained_from_its_report_and_scores_what_the_study_recorded(tmp_path, capsys):
    """The retrained seed-1 model scores what Evaluate.py recorded for it, on the same test-PSNR curve; the
    training image scores above the noisy input (its own fit); a second run refuses to overwrite, an
    unknown seed is refused in one line."""
    import study_failed_run
    report = tiny_study(tmp_path)
    assert study_failed_run.main([str(tmp_path), "--arm", "control_structure", "--seed", "1"]) == 0
    folder = tmp_path / "failed_run_control_structure_s1"
    result = json.load(open(folder / "report.json"))
    assert result["retrained_psnr"] == pytest.approx(report["real_plus_synthetic.seed1.psnr"], abs=1e-4)
    assert np.allclose(np.asarray(result["curve"]), np.asarray(report["curve.real_plus_synthetic.seed1"]), atol=1e-4)
    assert result["input_psnr"] == pytest.approx(report["input.psnr"])
    assert 0 <= result["wrong_fraction"] <= 1 and result["output_range"][0] <= result["output_range"][1]
    assert result["clipped_psnr"] >= result["retrained_psnr"] - 1e-6  # clipping to [0, 1] never moves away
    assert (folder / "failure.png").stat().st_size > 1000
    assert "recorded / retrained" in (folder / "report.md").read_text()
    capsys.readouterr()
    for argv, message in (([str(tmp_path), "--arm", "control_structure", "--seed", "1"], "already holds a result"),
                          ([str(tmp_path), "--arm", "control_structure", "--seed", "7"], "holds seed 7 (seeds: 0, 1)")):
        with pytest.raises(SystemExit) as stop:
            study_failed_run.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
