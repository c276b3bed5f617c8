import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ubf.cli import synthesis as Synthesis
from ubf.core.checkpoint import save_checkpoint
from ubf.core.errors import UserError
from ubf.core.simplex import project_to_simplex
from ubf.data.bands import chikusei_wavelengths
from ubf.data.matio import read_mat, write_mat
from ubf.pipeline.synthesis import (SynthesisOptions, newest_abundance_dir, newest_unmixing_checkpoint,
                                prepare_endmembers, run_synthesis)

C, K = 59, 4


def fabricate_checkpoint(path, real_dir=None, wavelengths=True, k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(C, k, 1, 1, generator=g) * 0.8 + 0.1
    state = {"stage": "unmixing", "model": {"decoder.weight": weight, "encoder.head.weight": torch.zeros(2)},
             "config": {"data": {"train": real_dir, "key": None}},
             "wavelengths": chikusei_wavelengths() if wavelengths else None, "out_bands": C}
    save_checkpoint(state, path)
    return weight[:, :, 0, 0].numpy()


def fabricate_abundances(folder, k=K, n=3, size=8, seed=0):
    """Sampler-like outputs: SR in [-1, 1] (slightly off the simplex) with projected Abu; one file with Abu only."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        abu = rng.dirichlet(np.ones(k), size=(size, size)).astype(np.float32)
        sr = np.clip(2 * abu - 1 + rng.normal(scale=0.05, size=abu.shape), -1, 1).astype(np.float32)
        write_mat(os.path.join(folder, f"sample_{i}.mat"), {"SR": sr, "Abu": project_to_simplex((sr + 1) / 2)}
                  if i else {"Abu": abu})


@pytest.fixture
def setup(tmp_path):
    real = tmp_path / "real"
    rng = np.random.default_rng(5)
    write_mat(str(real / "crop.mat"), {"Y": rng.random((6, 6, C)).astype(np.float32)})
    ckpt = str(tmp_path / "best.pth")
    end = fabricate_checkpoint(ckpt, str(real))
    abundances = tmp_path / "mat_results"
    fabricate_abundances(str(abundances))
    return ckpt, str(abundances), end, tmp_path


IMPROVED = SynthesisOptions(endmembers="raw", simplex=True, end_layout="matrix")


def test_every_spectrum_is_end_times_abu(setup):
    ckpt, abundances, end, tmp_path = setup
    out = str(tmp_path / "out")
    summary = run_synthesis(abundances, ckpt, out, options=IMPROVED)
    assert summary["files"] == 3 and summary["real_spectra"] is not None
    for i in range(3):
        data = read_mat(os.path.join(out, "HSI", f"sample_{i}.mat"))
        hsi, abu, end_saved = data["HSI"], data["Abu"], data["End"]
        assert hsi.shape == (8, 8, C) and abu.shape == (8, 8, K) and end_saved.shape == (C, K)
        np.testing.assert_allclose(end_saved, end, rtol=1e-6)  # raw: the decoder weight itself
        np.testing.assert_allclose(hsi, abu @ end.T, rtol=1e-5, atol=1e-6)
        assert abu.min() >= 0 and np.allclose(abu.sum(-1), 1, atol=1e-5)
        np.testing.assert_allclose(data["wavelengths"].ravel(), chikusei_wavelengths())
    # every preview is the stored cube's bands, black and white at the 0.5th / 99.5th percentile of
    # those bands over the set (one range for all, so the previews stay comparable)
    bands = [47, 29, 12]  # nearest 640 / 550 / 460 nm on the Chikusei grid (test_bands_images)
    pooled = np.concatenate([read_mat(os.path.join(out, "HSI", f"sample_{i}.mat"))["HSI"][..., bands].ravel()
                             for i in range(3)])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    for i in range(3):
        data = read_mat(os.path.join(out, "HSI", f"sample_{i}.mat"))
        with Image.open(os.path.join(out, "RGB", f"sample_{i}.png")) as image:
            assert image.size == (8, 8) and image.mode == "RGB"
            rgb = np.asarray(image, dtype=np.float64) / 255
        np.testing.assert_allclose(rgb, np.clip((data["HSI"][..., bands] - lo) / (hi - lo), 0, 1),
                                   atol=1 / 255 + 1e-5)
    with Image.open(os.path.join(out, "spectra.png")) as image:
        assert image.size[0] >= 300 and image.size[1] >= 200  # a readable figure, not an empty file
    with Image.open(os.path.join(out, "contact_sheet.png")) as image:
        assert image.size == (2 * 128 + 32, 2 * 128 + 32)  # 3 previews, 2 columns, enlarged x16


def test_defaults_are_the_reference_minmax_endmembers_and_unprojected_sr(setup):
    """The reference's Synthesis.py: End = (W - min W) / (max W - min W) over the whole matrix, saved
    (C, K, 1, 1); Abu = (SR + 1) / 2 with no projection; HSI = the 1x1 convolution of Abu by End."""
    ckpt, abundances, end, tmp_path = setup
    out = str(tmp_path / "raw")
    run_synthesis(abundances, ckpt, out)
    sr = read_mat(os.path.join(abundances, "sample_1.mat"))["SR"]
    data = read_mat(os.path.join(out, "HSI", "sample_1.mat"))
    np.testing.assert_allclose(data["Abu"], (sr + 1) / 2, atol=1e-6)  # SR read, not the projected Abu
    assert not np.allclose(data["Abu"].sum(-1), 1, atol=1e-3)
    only_abu = read_mat(os.path.join(abundances, "sample_0.mat"))["Abu"]
    np.testing.assert_allclose(read_mat(os.path.join(out, "HSI", "sample_0.mat"))["Abu"], only_abu)
    expected_end = (end - end.min()) / (end.max() - end.min())
    assert data["End"].shape == (C, K, 1, 1)
    np.testing.assert_allclose(data["End"][:, :, 0, 0], expected_end, atol=1e-6)
    assert data["End"].min() == 0 and np.isclose(data["End"].max(), 1)
    np.testing.assert_allclose(data["HSI"], data["Abu"] @ expected_end.T, rtol=1e-5, atol=1e-6)


def test_prepare_endmembers_rejects_unknown_mode():
    with pytest.raises(UserError):
        prepare_endmembers(np.ones((3, 2), np.float32), "scaled")


def test_k_mismatch_names_both_numbers(setup, tmp_path):
    ckpt, _, _, _ = setup
    other = tmp_path / "k6"
    fabricate_abundances(str(other), k=6, n=1)
    with pytest.raises(UserError, match=r"K = 6.*K = 4"):
        run_synthesis(str(other), ckpt, str(tmp_path / "out6"))


def test_never_overwrites_silently(setup):
    ckpt, abundances, _, tmp_path = setup
    out = str(tmp_path / "twice")
    run_synthesis(abundances, ckpt, out, options=IMPROVED)
    before = os.path.getmtime(os.path.join(out, "HSI", "sample_0.mat"))
    with pytest.raises(UserError, match="exists already"):
        run_synthesis(abundances, ckpt, out)
    assert os.path.getmtime(os.path.join(out, "HSI", "sample_0.mat")) == before
    run_synthesis(abundances, ckpt, out, options=SynthesisOptions(overwrite=True))


def test_cie_needs_wavelengths_and_renders_with_them(setup):
    ckpt, abundances, _, tmp_path = setup
    run_synthesis(abundances, ckpt, str(tmp_path / "cie"), options=SynthesisOptions(rgb="cie"))
    assert os.path.isfile(tmp_path / "cie" / "RGB" / "sample_2.png")
    bare = str(tmp_path / "bare.pth")
    fabricate_checkpoint(bare, wavelengths=False)
    with pytest.raises(UserError, match="wavelengths"):
        run_synthesis(abundances, bare, str(tmp_path / "cie2"), options=SynthesisOptions(rgb="cie"))


def test_rgb_bands_choose_the_preview_channels(setup):
    ckpt, abundances, end, tmp_path = setup
    out = str(tmp_path / "bands")
    run_synthesis(abundances, ckpt, out, options=SynthesisOptions(endmembers="raw", simplex=True, rgb_bands=[10, 20, 30]))
    data = read_mat(os.path.join(out, "HSI", "sample_0.mat"))
    rgb = np.asarray(Image.open(os.path.join(out, "RGB", "sample_0.png")), dtype=np.float64) / 255
    pooled = np.concatenate([read_mat(os.path.join(out, "HSI", f"sample_{i}.mat"))["HSI"][..., [10, 20, 30]].ravel()
                             for i in range(3)])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    expected = np.clip((data["HSI"][..., [10, 20, 30]] - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(rgb, expected, atol=1 / 255 + 1e-5)
    with pytest.raises(UserError, match="out of range"):
        run_synthesis(abundances, ckpt, str(tmp_path / "b2"), options=SynthesisOptions(rgb_bands=[0, 1, 59]))


def test_defaults_pick_the_newest_runs(tmp_path):
    old, new = tmp_path / "ddpm" / "a_1" / "mat_results", tmp_path / "ddpm" / "b_2" / "mat_results"
    fabricate_abundances(str(old), n=1)
    fabricate_abundances(str(new), n=1)
    (tmp_path / "ddpm" / "c_3" / "mat_results").mkdir(parents=True)  # empty: not a candidate
    os.utime(old, (1, 1))
    assert newest_abundance_dir(str(tmp_path / "ddpm")) == str(new)
    for run, names in (("r1", ["latest.pth"]), ("r2", ["best.pth", "latest.pth"])):
        for name in names:
            fabricate_checkpoint(str(tmp_path / "unmixing" / run / "checkpoint" / name))
    os.utime(tmp_path / "unmixing" / "r1" / "checkpoint" / "latest.pth", (1, 1))
    newest = newest_unmixing_checkpoint(str(tmp_path / "unmixing"))
    assert newest.endswith(os.path.join("r2", "checkpoint", "latest.pth"))  # the final epoch, as the reference
    best = newest_unmixing_checkpoint(str(tmp_path / "unmixing"), prefer="best")
    assert best.endswith(os.path.join("r2", "checkpoint", "best.pth"))
    with pytest.raises(UserError, match="Diffusion.py"):
        newest_abundance_dir(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="Unmixing.py"):
        newest_unmixing_checkpoint(str(tmp_path / "nothing"))


def test_cli_reports_user_errors_in_one_line(setup, capsys):
    ckpt, _, _, tmp_path = setup
    with pytest.raises(SystemExit) as exit_info:
        Synthesis.main(["--abundances", str(tmp_path / "missing"), "--ckpt", ckpt, "--out", str(tmp_path / "o"),
                        "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing: abundance folder not found" in errors[0]
    assert "Traceback" not in err


def test_cli_runs(setup, capsys):
    ckpt, abundances, end, tmp_path = setup
    Synthesis.main(["--abundances", abundances, "--ckpt", ckpt, "--out", str(tmp_path / "cli"), "--device", "cpu",
                    "--rgb", "cie", "--no-simplex"])
    assert "contact sheet" in capsys.readouterr().out
    assert json.load(open(tmp_path / "cli" / "synthesis.json"))["options"]["profile"] == "faithful"
    Synthesis.main(["--abundances", abundances, "--ckpt", ckpt, "--out", str(tmp_path / "improved"), "--device",
                    "cpu", "--profile", "improved"])
    options = json.load(open(tmp_path / "improved" / "synthesis.json"))["options"]
    assert (options["profile"], options["endmembers"], options["simplex"]) == ("improved", "raw", True)
    data = read_mat(str(tmp_path / "improved" / "HSI" / "sample_1.mat"))
    assert np.allclose(data["Abu"].sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(data["End"][:, :, 0, 0], end, rtol=1e-6)  # raw: the decoder weight itself


def test_minmax_is_an_affine_map_of_the_raw_cube_on_the_simplex(setup):
    """With sum(a) = 1: E' a = (E a - m) / (M - m) for E' = (E - m) / (M - m)."""
    ckpt, abundances, end, tmp_path = setup
    run_synthesis(abundances, ckpt, str(tmp_path / "r"), options=IMPROVED)
    run_synthesis(abundances, ckpt, str(tmp_path / "m"), options=SynthesisOptions(endmembers="minmax", simplex=True))
    raw = read_mat(str(tmp_path / "r" / "HSI" / "sample_2.mat"))["HSI"]
    scaled = read_mat(str(tmp_path / "m" / "HSI" / "sample_2.mat"))["HSI"]
    np.testing.assert_allclose(scaled, (raw - end.min()) / (end.max() - end.min()), atol=1e-5)


def test_class_of_a_conditional_sample_travels_into_its_synthetic_hsi(setup):
    """A class-conditional sample stores its scene class as `class` (Diffusion.py -p val --class); the
    synthetic HSI made from it keeps that label, and unlabelled samples stay unlabelled."""
    ckpt, abundances, end, tmp_path = setup
    labelled = read_mat(os.path.join(abundances, "sample_1.mat"))
    write_mat(os.path.join(abundances, "sample_1.mat"), {**labelled, "class": "farmland"})
    out = str(tmp_path / "labelled")
    run_synthesis(abundances, ckpt, out, options=IMPROVED)
    assert str(read_mat(os.path.join(out, "HSI", "sample_1.mat"), ["class"])["class"][0]) == "farmland"
    assert "class" not in read_mat(os.path.join(out, "HSI", "sample_2.mat"))


def test_previews_show_the_data_when_endmembers_lie_far_outside_it(tmp_path):
    """Endmembers far outside the data (as the improved stage 1 learns) with mixtures near the centre:
    previews scaled by the endmembers' range came out flat grey; scaled by the data they span the
    grey levels."""
    real = tmp_path / "real"
    write_mat(str(real / "crop.mat"), {"Y": np.random.default_rng(1).random((6, 6, C)).astype(np.float32)})
    ckpt = str(tmp_path / "far.pth")
    end = fabricate_checkpoint(ckpt, str(real))
    state = torch.load(ckpt, weights_only=False)
    far = (torch.from_numpy(end) - 0.5) * 20  # ten times farther from the centre
    state["model"]["decoder.weight"] = far[:, :, None, None]
    save_checkpoint(state, ckpt)
    rng = np.random.default_rng(2)
    folder = tmp_path / "near_centre"
    for i in range(2):
        abu = 0.25 + 0.04 * rng.dirichlet(np.ones(K), size=(16, 16)) - 0.01  # sums to one, close to uniform
        write_mat(str(folder / f"s{i}.mat"), {"Abu": abu.astype(np.float32)})
    out = str(tmp_path / "out")
    run_synthesis(str(folder), ckpt, out, options=IMPROVED)
    with Image.open(os.path.join(out, "RGB", "s0.png")) as image:
        grey = np.asarray(image, dtype=np.float64)
    assert grey.max() - grey.min() > 200  # the endmembers' range would leave about 2 % of it
