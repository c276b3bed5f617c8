"""The whole pipeline through `demo.py` at tiny settings: data, 5 CLI steps, every output checked."""
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from ubf.cli import demo as demo
from ubf.data.bands import chikusei_wavelengths
from ubf.data.matio import read_mat

TINY_UNMIXING = {
    "name": "e2e_unmixing",
    "data": {"crop_size": 16, "samples_per_epoch": 4},
    "model": {"encoder": "pixel_mlp", "mlp_hidden": 16, "decoder_init": "distant_pixels"},
    "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1},
}
TINY_DDPM = {
    "name": "e2e_ddpm",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0}, "val": {"data_len": 2}},
    "model": {
        "unet": {"inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2], "attn_res": [],
                 "res_blocks": 1, "dropout": 0.0},
        "beta_schedule": {phase: {"schedule": "linear", "n_timestep": 50, "linear_start": 1e-4, "linear_end": 2e-2}
                          for phase in ("train", "val")},
        "diffusion": {"image_size": 16},
    },
    "train": {"n_iter": 3, "val_freq": 3, "save_checkpoint_freq": 3, "print_freq": 1, "preview_samples": 1},
    "sample": {"sampler": "ddim", "steps": 3, "batch_size": 2},
}


def on_simplex(abundances: np.ndarray, atol: float = 1e-5) -> bool:
    return abundances.min() >= -atol and np.allclose(abundances.sum(-1), 1.0, atol=atol)


def opens_as_png(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


@pytest.mark.slow
def test_demo_runs_every_step_and_outputs_are_consistent(tmp_path, capsys):
    configs = {}
    for name, content in (("unmixing", TINY_UNMIXING), ("ddpm", TINY_DDPM)):
        configs[name] = str(tmp_path / f"{name}.json")
        with open(configs[name], "w") as f:
            json.dump(content, f)
    out = tmp_path / "demo"
    demo.main(["--out", str(out), "--size", "24", "--samples", "2", "--device", "cpu",
               "--unmixing-config", configs["unmixing"], "--ddpm-config", configs["ddpm"]])
    printed = capsys.readouterr().out
    assert "Demo finished" in printed and "contact_sheet.png" in printed
    assert "profile: improved" in printed  # the demo shows the improved pipeline and says so

    # stage 1: checkpoint with the 59-band decoder, inferred abundances on the simplex
    checkpoint = out / "unmixing" / "checkpoint" / "best.pth"
    assert checkpoint.is_file()
    inferred = sorted(glob.glob(str(out / "abundances" / "*.mat")))
    assert len(inferred) == 12  # one per external demo image
    for path in inferred:
        abu = read_mat(path)["Abu"]
        assert abu.shape == (24, 24, 5) and np.all(np.isfinite(abu)) and on_simplex(abu)
    assert len(glob.glob(str(out / "abundances" / "previews" / "*.png"))) == 12

    # stage 2: sampled abundances
    samples = sorted(glob.glob(str(out / "ddpm" / "e2e_ddpm_*" / "mat_results" / "*.mat")))
    assert len(samples) == 2
    for path in samples:
        data = read_mat(path)
        assert data["SR"].shape == (16, 16, 5) and np.abs(data["SR"]).max() <= 1 + 1e-6
        assert on_simplex(data["Abu"])

    # stage 3: HSI == End @ Abu per pixel, on the simplex, finite, with wavelengths
    hsis = sorted(glob.glob(str(out / "synthesis" / "HSI" / "*.mat")))
    assert len(hsis) == 2
    for path in hsis:
        data = read_mat(path)
        hsi, abu, end = data["HSI"], data["Abu"], data["End"]
        assert hsi.shape == (16, 16, 59) and abu.shape == (16, 16, 5) and end.shape == (59, 5, 1, 1)  # as the reference
        end = end[:, :, 0, 0]
        assert np.all(np.isfinite(hsi)) and on_simplex(abu)
        # the improved profile's stage 1 (near-data) stores a brightness; the DDPM generates it, synthesis multiplies
        bright = data["Bright"][..., None] if "Bright" in data else np.ones((16, 16, 1), np.float32)
        assert ("Bright" in data) == ("Bright" in read_mat(inferred[0])) and bright.min() >= 0
        np.testing.assert_allclose(hsi, bright * (abu @ end.T), rtol=1e-5, atol=1e-6)
        # convex mixtures stay between the endmembers' extremes in every band (before the brightness)
        lit = bright[..., 0] > 1e-3  # a 3-step DDPM may draw black pixels (brightness 0)
        mixed = hsi[lit] / bright[lit]
        assert np.all(mixed >= end.min(1) - 1e-4) and np.all(mixed <= end.max(1) + 1e-4)
        np.testing.assert_allclose(data["wavelengths"].ravel(), chikusei_wavelengths())

    # pictures
    for path in glob.glob(str(out / "synthesis" / "RGB" / "*.png")):
        assert opens_as_png(path) == (16, 16)
    for name in ("contact_sheet.png", "spectra.png"):
        opens_as_png(str(out / "synthesis" / name))
    assert len(glob.glob(str(out / "data" / "rgb" / "*.png"))) == 12
    timings = json.load(open(out / "timings.json"))["seconds"]
    assert set(timings) == {"data", "unmixing train", "unmixing infer", "diffusion train", "diffusion sample",
                            "synthesis", "reference", "generation scores"}
    # the generation scores against HSIs rendered from the DDPM's training maps, printed side by side
    assert len(glob.glob(str(out / "reference" / "HSI" / "*.mat"))) == 12
    report = json.load(open(out / "generation" / "report.json"))
    assert not report["settings.normalise_real"]
    assert "FD_half" in printed and "Dirichlet" in printed and "noisy samples" in printed


def test_demo_refuses_to_mix_with_an_earlier_run(tmp_path):
    (tmp_path / "synthesis").mkdir()
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--unmixing-config", __file__, "--ddpm-config", __file__])
    assert (tmp_path / "synthesis").is_dir()


def test_real_data_split(tmp_path):
    source = tmp_path / "paper"
    for name in ("chikusei/block_1.mat", "chikusei/block_2.mat", "chikusei/block_3.mat"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(b"")
    (source / "aid").mkdir()
    Image.new("RGB", (4, 4)).save(source / "aid" / "a.jpg")
    folders = demo.split_real_data(str(source), str(tmp_path / "out"))
    listing = {split: sorted(os.listdir(folders[split])) for split in ("train", "val", "test", "rgb")}
    assert listing == {"train": ["block_3.mat"], "val": ["block_2.mat"], "test": ["block_1.mat"],
                       "rgb": ["0000_a.jpg"]}
