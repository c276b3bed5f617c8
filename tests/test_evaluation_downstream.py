"""`Evaluate.py downstream`: both arms, every seed, mean/std/difference; MRAE by hand; the real split."""
import json
import os

import numpy as np
import pytest

from ubf.cli import evaluate as Evaluate
from ubf.data.matio import read_hsi, write_mat
from ubf.core.metrics import mrae
from ubf.evaluation.downstream import DownstreamSettings, split_real, summarise
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


def smooth_cubes(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` 32 x 32 x 6 cubes of random plane waves around 0.5: smooth, known, cheap to learn."""
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    cubes = []
    for _ in range(count):
        bands = [0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(0.2, 1.0, (6, 2))]
        cubes.append(np.stack(bands, axis=-1).astype(np.float32))
    return cubes


def test_denoising_task_beats_its_noisy_input():
    """The spatial task: a model trained 150 steps on smooth cubes removes much of sigma = 0.1 noise
    (the noisy input itself scores 20 dB: 10 log10(1 / 0.1^2))."""
    import torch
    from ubf.core.metrics import psnr
    from ubf.evaluation.downstream import test_arm, train_arm
    rng = np.random.default_rng(0)
    cubes = smooth_cubes(3, rng)
    pairs = [(c[..., :3], c) for c in cubes]
    settings = DownstreamSettings(seeds=[0], steps=150, batch=4, crop=16, task="denoise", noise_sigma=0.1)
    model = train_arm(pairs[:2], None, settings, 0, torch.device("cpu"), progress=False)
    scores = test_arm(model, pairs[2:], torch.device("cpu"), settings)
    noisy = (cubes[2] + 0.1 * rng.standard_normal(cubes[2].shape)).astype(np.float32)
    assert psnr(cubes[2], noisy) == pytest.approx(20.0, abs=0.3)
    assert scores["psnr"] > 24.0, scores


def test_synthetic_files_get_the_real_files_preprocessing(tmp_path):
    """Per-file min-max is blind to gain and offset: a real crop stored at 0.4 x + 0.1 must give the
    same (input, target) pair as the crop itself, as a held-out real file would; `as_is` keeps the
    narrow target beside an input stretched to [0, 1] (another input-to-target map)."""
    from ubf.evaluation.downstream import load_pairs
    cube = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0][:24, :24].astype(np.float64)
    write_mat(str(tmp_path / "real.mat"), {"Y": cube})
    write_mat(str(tmp_path / "scaled.mat"), {"HSI": 0.4 * cube + 0.1})
    bands = [53, 33, 14]
    (real_in, real_target), = load_pairs([str(tmp_path / "real.mat")], bands, True, None)
    (syn_in, syn_target), = load_pairs([str(tmp_path / "scaled.mat")], bands, False, None)
    np.testing.assert_allclose(syn_in, real_in, atol=1e-5)
    np.testing.assert_allclose(syn_target, real_target, atol=1e-5)
    (raw_in, raw_target), = load_pairs([str(tmp_path / "scaled.mat")], bands, False, None, "as_is")
    np.testing.assert_allclose(raw_in, real_in, atol=1e-5)
    assert raw_target.max() - raw_target.min() == pytest.approx(0.4 * (cube.max() - cube.min()), rel=1e-4)


def test_pretraining_on_copies_of_the_training_crop_is_more_training():
    """Protocol `pretrain`: arm (b) first fits the synthetic set alone, then the real files. With the
    real training crop itself as the synthetic set that is twice the training, so at an early stage
    of training it must score clearly above the real-only arm of the same seed."""
    import torch
    from ubf.evaluation.downstream import test_arm, train_arm
    cubes = smooth_cubes(2, np.random.default_rng(1))
    pairs = [(c[..., :3], c) for c in cubes]
    device = torch.device("cpu")
    scores = {}
    for protocol in ("mix", "pretrain"):
        settings = DownstreamSettings(seeds=[0], steps=40, batch=4, crop=16, protocol=protocol)
        model = train_arm(pairs[:1], pairs[:1] if protocol == "pretrain" else None, settings, 0, device, False)
        scores[protocol] = test_arm(model, pairs[1:], device, settings)["psnr"]
    assert scores["pretrain"] > scores["mix"] + 1.0, scores


def test_cli_records_protocol_and_normalisation(tmp_path):
    real_dir, synthetic_dir = tmp_path / "real", tmp_path / "synthetic"
    for name in ("block_118.mat", "block_282.mat"):
        write_mat(str(real_dir / name), {"Y": read_hsi(shared_path("paper", "chikusei", name))[0][:32, :32]})
    write_mat(str(synthetic_dir / "s.mat"), {"HSI": read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0][32:64, 32:64]})
    out = str(tmp_path / "out")
    assert Evaluate.main(["downstream", "--real", str(real_dir), "--synthetic", str(synthetic_dir), "--out", out,
                          "--steps", "2", "--pretrain-steps", "2", "--protocol", "pretrain", "--seeds", "0",
                          "--crop", "16", "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["settings.protocol"] == "pretrain" and report["settings.synthetic_norm"] == "minmax"
    assert "Protocol: pretrain" in open(os.path.join(out, "summary.md")).read()


def test_real_only_arm_is_reused_only_when_it_would_be_the_same(tmp_path):
    """Several synthetic sets against one real-only arm: a second run with the same real data and
    settings takes the first run's real-only results, and they equal what it would have trained;
    other steps (another real-only model) are trained anew."""
    real_dir, syn_a, syn_b = tmp_path / "real", tmp_path / "a", tmp_path / "b"
    for name in ("block_118.mat", "block_282.mat"):
        write_mat(str(real_dir / name), {"Y": read_hsi(shared_path("paper", "chikusei", name))[0][:32, :32]})
    cube = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0]
    write_mat(str(syn_a / "s.mat"), {"HSI": cube[32:64, 32:64]})
    write_mat(str(syn_b / "s.mat"), {"HSI": cube[64:96, 64:96]})
    common = ["--real", str(real_dir), "--seeds", "0", "--crop", "16", "--batch-size", "2", "--no-progress",
              "--device", "cpu"]
    run = lambda syn, out, *extra: Evaluate.main(["downstream", "--synthetic", str(syn), "--out", str(tmp_path / out),
                                                  "--steps", "3", *common, *extra]) == 0
    assert run(syn_a, "first") and run(syn_b, "reused", "--reuse-real-only", str(tmp_path / "first" / "report.json"))
    assert run(syn_b, "trained")
    first, reused, trained = (json.load(open(tmp_path / n / "report.json")) for n in ("first", "reused", "trained"))
    assert reused["real_only_from"].endswith("report.json") and "real_only_from" not in trained
    for m in ("psnr", "sam"):
        assert reused[f"real_only.seed0.{m}"] == first[f"real_only.seed0.{m}"] == trained[f"real_only.seed0.{m}"]
    assert reused["real_plus_synthetic.seed0.psnr"] == trained["real_plus_synthetic.seed0.psnr"]
    assert Evaluate.main(["downstream", "--synthetic", str(syn_b), "--out", str(tmp_path / "other"), "--steps", "4",
                          *common, "--reuse-real-only", str(tmp_path / "first" / "report.json")]) == 0
    assert "real_only_from" not in json.load(open(tmp_path / "other" / "report.json"))
    assert run(syn_b, "other_eps", "--adam-eps", "1e-5", "--reuse-real-only", str(tmp_path / "first" / "report.json"))
    other_eps = json.load(open(tmp_path / "other_eps" / "report.json"))
    assert "real_only_from" not in other_eps and other_eps["settings.adam_eps"] == 1e-5
    assert other_eps["real_only.seed0.psnr"] != first["real_only.seed0.psnr"]  # another optimiser, another model


def test_real_test_folder_tests_on_another_scene_and_trains_on_every_real_file(tmp_path, capsys):
    """--real-test: both --real files train, the --real-test file (another block) alone tests."""
    whole = {n: read_hsi(shared_path("paper", "chikusei", n))[0] for n in ("block_118.mat", "block_282.mat")}
    real_dir, test_dir, synthetic_dir = tmp_path / "real", tmp_path / "test", tmp_path / "synthetic"
    write_mat(str(real_dir / "a.mat"), {"Y": whole["block_118.mat"][:32, :32]})
    write_mat(str(real_dir / "b.mat"), {"Y": whole["block_118.mat"][32:64, :32]})
    write_mat(str(test_dir / "c.mat"), {"Y": whole["block_282.mat"][:32, :32]})
    write_mat(str(synthetic_dir / "s.mat"), {"HSI": np.clip(whole["block_118.mat"][64:96, :32], 0, None)})
    out = str(tmp_path / "out")
    assert Evaluate.main(["downstream", "--real", str(real_dir), "--real-test", str(test_dir), "--synthetic",
                          str(synthetic_dir), "--out", out, "--steps", "2", "--crop", "16", "--batch-size", "2",
                          "--seeds", "0", "--no-progress", "--device", "cpu"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["n_test_images"] == 1 and "a.mat, b.mat" in report["split"] and "c.mat" in report["split"]
    assert report["real_test_dir"] == os.path.abspath(test_dir)
    # a file in both folders (here through a link) is refused before anything is written
    os.symlink(str(real_dir / "b.mat"), str(test_dir / "b.mat"))
    with pytest.raises(SystemExit) as stop:
        Evaluate.main(["downstream", "--real", str(real_dir), "--real-test", str(test_dir), "--synthetic",
                       str(synthetic_dir), "--out", str(tmp_path / "out2"), "--steps", "2", "--crop", "16",
                       "--seeds", "0", "--no-progress", "--device", "cpu"])
    assert stop.value.code == 2 and "b.mat: in both --real and --real-test" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out2" / "report.json")


def test_fine_tuning_learning_rate_scale_and_gradient_clipping(monkeypatch):
    """finetune_lr_scale: the real-data phase after pre-training starts at lr x scale (the pre-training
    phase and a real-only arm at lr); grad_clip: every step clips the gradient's norm to the given value."""
    import torch
    from ubf.evaluation import downstream
    started, clipped, epsilons = [], [], []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, lr, eps):
            started.append(lr)
            epsilons.append(eps)
            super().__init__(params, lr=lr, eps=eps)

    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm):
        clipped.append(max_norm)
        return real_clip(params, max_norm)
    monkeypatch.setattr(downstream.torch.optim, "Adam", RecordingAdam)
    monkeypatch.setattr(downstream.torch.nn.utils, "clip_grad_norm_", recording_clip)
    cubes = smooth_cubes(2, np.random.default_rng(1))
    pairs = [(c[..., :3], c) for c in cubes]
    settings = DownstreamSettings(seeds=[0], steps=3, pretrain_steps=2, batch=2, crop=16, protocol="pretrain",
                                  lr=1e-3, finetune_lr_scale=0.3, grad_clip=0.5)
    downstream.train_arm(pairs[:1], pairs[1:], settings, 0, torch.device("cpu"), False)
    downstream.train_arm(pairs[:1], None, settings, 0, torch.device("cpu"), False)
    assert started == pytest.approx([1e-3, 3e-4, 1e-3]) and clipped == [0.5] * (2 + 3 + 3)
    assert epsilons == [1e-8] * 3  # torch's default unless asked
    settings.adam_eps = 1e-5
    downstream.train_arm(pairs[:1], None, settings, 0, torch.device("cpu"), False)
    assert epsilons[-1] == 1e-5
