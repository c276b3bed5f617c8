"""Checkpoints cross over with the reference code, both stages, both ways.

Reference checkpoints are built from the reference's own key names and shapes (tests/reference_layouts.py,
written from its architecture), loaded through our CLIs, exported back with
`python -m ubf.pipeline.export_reference`, and reloaded: the outputs must be equal all the way.
"""
import glob
import json
import os

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli import synthesis as Synthesis
from ubf.cli.unmixing import main as unmixing_main
from ubf.core.checkpoint import load_checkpoint, load_file, save_checkpoint
from ubf.core.errors import UserError
from ubf.data.matio import read_mat
from ubf.pipeline.export_reference import main as export_main
from ubf.pipeline.reference_checkpoints import load_diffusion_resume
from ubf.pipeline.unmixing_infer import load_unmixing_model
from reference_layouts import ddpm_layout, random_state, reference_buffers, unmixing_forward, unmixing_layout

CPU = torch.device("cpu")
BANDS = 59


@pytest.fixture(scope="module")
def reference_unmixing(tmp_path_factory):
    """A stage-1 checkpoint as the reference saves it from DataParallel: {"epoch", "model"}, `module.` keys."""
    folder = tmp_path_factory.mktemp("reference_unmixing")
    layout = unmixing_layout(n_blocks=1, bands=BANDS)
    assert len(layout) == 73  # what the reference's UnmixingAE(n_blocks=1).state_dict() lists
    weights = random_state(layout, seed=0, scale=0.05)  # small enough that the softmax is not one-hot
    weights["decoderlayer.weight"] = weights["decoderlayer.weight"].abs()
    path = folder / "UnmixingAE_Chikusei_epoch_4.pth"
    torch.save({"epoch": 4, "model": {f"module.{k}": v for k, v in weights.items()}}, path)
    return str(path), weights


def test_reference_stage1_checkpoint_gives_the_references_outputs(reference_unmixing):
    path, weights = reference_unmixing
    model, state = load_unmixing_model(path, CPU)
    # MSF-Diff trains on bands 7, 17, 27 (its core/loaddata.py band_select), channel 0 first; our first
    # layer has its input channels turned round, so our list reads them in R, G, B order
    assert state["epoch"] == 3 and state["out_bands"] == BANDS and state["band_indices"] == [27, 17, 7]
    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))  # R, G, B as we read images
    with torch.no_grad():
        abundances, reconstruction = model(x)
        # the reference reads images with OpenCV: the same picture reaches it as B, G, R
        expected_abundances, expected_reconstruction = unmixing_forward(weights, x.flip(1), n_blocks=1)
    # two float32 implementations of a 20-layer network: their sums run in another order (7.7e-6 on one
    # CPU's kernels); a wrong weight or the channel order would be off by 1e-2 and more
    assert torch.allclose(abundances, expected_abundances, atol=2e-5)
    assert torch.allclose(reconstruction, expected_reconstruction, atol=2e-5)


def test_infer_and_synthesis_accept_a_reference_checkpoint(tmp_path, reference_unmixing):
    path, weights = reference_unmixing
    image = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    (tmp_path / "rgb").mkdir()
    Image.fromarray(image).save(tmp_path / "rgb" / "a.png")
    assert unmixing_main(["infer", "--ckpt", path, "--rgb", str(tmp_path / "rgb"), "--out", str(tmp_path / "abu"),
                          "--device", "cpu"]) == 0
    abundances = read_mat(str(tmp_path / "abu" / "a.mat"))["Abu"]
    scaled = (image.astype(np.float32) - image.min()) / (image.max() - image.min())  # infer's per-image min-max
    x = torch.from_numpy(scaled[:, :, ::-1].transpose(2, 0, 1).copy())[None]  # as cv2.imread gives it: B, G, R
    expected = unmixing_forward(weights, x, n_blocks=1)[0][0].permute(1, 2, 0).numpy()
    assert abundances.shape == (12, 10, 5) and (abundances.max(axis=2) < 0.99).mean() > 0.25  # not one-hot
    assert np.allclose(abundances, expected, atol=1e-5)

    sio.savemat(tmp_path / "samples.mat", {"Abu": abundances})
    (tmp_path / "samples").mkdir()
    os.replace(tmp_path / "samples.mat", tmp_path / "samples" / "1_1_sample_abu.mat")
    Synthesis.main(["--abundances", str(tmp_path / "samples"), "--ckpt", path, "--out", str(tmp_path / "syn"),
                    "--device", "cpu", "--endmembers", "minmax", "--no-simplex"])
    (hsi_file,) = glob.glob(str(tmp_path / "syn" / "HSI" / "*.mat"))
    end = weights["decoderlayer.weight"][:, :, 0, 0].numpy()
    end = (end - end.min()) / (end.max() - end.min())  # the reference's global min-max
    assert np.allclose(read_mat(hsi_file)["HSI"], abundances @ end.T, atol=1e-5)


def test_evaluate_reconstruction_accepts_a_reference_checkpoint(tmp_path, reference_unmixing):
    from ubf.cli import evaluate as Evaluate
    path, weights = reference_unmixing
    (tmp_path / "hsi").mkdir()
    for i in range(2):
        sio.savemat(tmp_path / "hsi" / f"c{i}.mat",
                    {"Y": np.random.default_rng(i).random((12, 12, BANDS)).astype(np.float32)})
    assert Evaluate.main(["reconstruction", "--ckpt", path, "--hsi", str(tmp_path / "hsi"), "--out",
                          str(tmp_path / "report"), "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_files"] == 2 and report["band_indices"] == "27,17,7" and report["num_endmembers"] == 5
    assert np.isfinite(report["psnr"]) and 0 <= report["sam"] < 90


def test_stage1_round_trip_reference_ours_reference(tmp_path, reference_unmixing):
    path, weights = reference_unmixing
    out = str(tmp_path / "exported.pth")
    assert export_main(["unmixing", path, out]) == 0
    exported = load_file(out)
    # the reference reads ["epoch"] and ["model"]; the band list rides along in its channel order
    assert exported["epoch"] == 4 and set(exported) == {"epoch", "model", "input_bands"}
    assert exported["input_bands"] == [7, 17, 27]
    assert {k: tuple(v.shape) for k, v in exported["model"].items()} == unmixing_layout(1, BANDS)
    assert all(torch.equal(exported["model"][k], weights[k]) for k in weights)
    first, _ = load_unmixing_model(path, CPU)
    again, _ = load_unmixing_model(out, CPU)
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(first(x), again(x)))


def test_our_stage1_checkpoint_exports_and_refuses_what_the_reference_cannot_hold(tmp_path, capsys):
    from ubf.models.unmixing import UnmixingAutoencoder
    from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    model = UnmixingAutoencoder(out_bands=31, n_blocks=2)
    config = dict(cfg, model=dict(cfg["model"], n_blocks=2))
    state = {"stage": "unmixing", "model": model.state_dict(), "config": config,
             "epoch": 9, "band_indices": [25, 15, 5], "in_channels": 3, "out_bands": 31}
    save_checkpoint(state, str(tmp_path / "ours.pth"))
    assert export_main(["unmixing", str(tmp_path / "ours.pth"), str(tmp_path / "ref.pth")]) == 0
    exported = load_file(str(tmp_path / "ref.pth"))
    assert exported["epoch"] == 10  # the reference counts finished epochs from 1
    assert {k: tuple(v.shape) for k, v in exported["model"].items()} == unmixing_layout(2, 31)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        got = unmixing_forward(exported["model"], x.flip(1), n_blocks=2)  # the reference's B, G, R input
    assert torch.allclose(expected[0], got[0], atol=1e-6) and torch.allclose(expected[1], got[1], atol=1e-6)
    with pytest.raises(SystemExit):  # the existing file is not replaced without --overwrite
        export_main(["unmixing", str(tmp_path / "ours.pth"), str(tmp_path / "ref.pth")])
    assert "exists already" in capsys.readouterr().err

    narrow = UnmixingAutoencoder(out_bands=8, widths=(4, 4), n_blocks=1)
    save_checkpoint(dict(state, model=narrow.state_dict(), out_bands=8, band_indices=[7, 4, 1],
                         config=dict(cfg, model=dict(cfg["model"], widths=[4, 4], n_blocks=1))),
                    str(tmp_path / "narrow.pth"))
    with pytest.raises(SystemExit):
        export_main(["unmixing", str(tmp_path / "narrow.pth"), str(tmp_path / "narrow_ref.pth")])
    err = capsys.readouterr().err
    assert "error:" in err and "widths [4, 4]" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "narrow_ref.pth")


def test_resuming_training_from_a_reference_stage1_checkpoint_is_refused_clearly(tmp_path, reference_unmixing):
    from ubf.pipeline.unmixing_config import load_unmixing_config
    from ubf.pipeline.unmixing_train import train_unmixing
    path, _ = reference_unmixing
    (tmp_path / "crops").mkdir()
    crop = np.random.default_rng(0).random((16, 16, BANDS)).astype(np.float32)
    sio.savemat(tmp_path / "crops" / "c.mat", {"Y": crop})
    cfg = load_unmixing_config(None, {"data.train": str(tmp_path / "crops")})
    cfg["data"].update(val=None, test=None)
    with pytest.raises(UserError, match="stage-1 checkpoint of the reference code"):
        train_unmixing(cfg, str(tmp_path / "run"), CPU, resume=path)


# stage 2 ----------------------------------------------------------------------------------------

TINY_UNET = dict(in_channel=3, out_channel=3, inner=8, groups=4, mults=(1, 2), attn_res=(4,), res_blocks=1,
                 image_size=8, timesteps=30)
TINY_CONFIG = {
    "name": "tiny",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0}, "val": {"data_len": 2}},
    "model": {"unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                       "channel_multiplier": [1, 2], "attn_res": [4], "res_blocks": 1, "dropout": 0.0},
              "beta_schedule": {phase: {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2}
                                for phase in ("train", "val")},
              "diffusion": {"image_size": 8, "channels": 3}},
    "train": {"print_freq": 1, "val_freq": 1000, "save_checkpoint_freq": 1000, "preview_samples": 0},
    "sample": {"sampler": "ddim", "steps": 4, "batch_size": 2, "project_simplex": False},
}


@pytest.fixture(scope="module")
def reference_ddpm(tmp_path_factory):
    """`I6_E2_gen.pth` + `I6_E2_opt.pth` as the reference's `save_network` writes them, and a config."""
    folder = tmp_path_factory.mktemp("reference_ddpm")
    rng = np.random.default_rng(0)
    for i in range(3):
        sio.savemat(folder / f"a{i}.mat", {"Abu": rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)})
    layout = ddpm_layout(**TINY_UNET)
    assert len(layout) == 136  # what the reference's GaussianDiffusion(UNet(...)).state_dict() lists
    gen = random_state({k: v for k, v in layout.items() if k.startswith("denoise_fn.")}, seed=3, scale=0.1)
    gen = {**reference_buffers(1e-3, 0.2, 30), **gen}
    # the reference's Adam over netG.parameters(): the UNet's tensors in the layout's order, six steps taken
    params = [torch.nn.Parameter(v.clone()) for k, v in gen.items() if k.startswith("denoise_fn.")]
    adam = torch.optim.Adam(params, lr=1e-4)
    for _ in range(6):
        for p in params:
            p.grad = torch.randn_like(p)
        adam.step()
    ckpt = folder / "checkpoint"
    ckpt.mkdir()
    torch.save(gen, ckpt / "I6_E2_gen.pth")
    torch.save({"epoch": 2, "iter": 6, "scheduler": None, "optimizer": adam.state_dict()}, ckpt / "I6_E2_opt.pth")
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["datasets"]["train"]["dataroot"] = str(folder)
    (folder / "tiny.json").write_text(json.dumps(cfg))
    return {"prefix": str(ckpt / "I6_E2"), "gen": gen, "config": str(folder / "tiny.json"),
            "optimizer": adam.state_dict()}


def test_diffusion_training_continues_from_a_reference_pair(tmp_path, reference_ddpm):
    Diffusion.main(["-p", "train", "-c", reference_ddpm["config"], "--resume", reference_ddpm["prefix"] + "_gen.pth",
                    "--n-iter", "8", "--root", str(tmp_path / "runs"), "--device", "cpu"])
    (path,) = glob.glob(str(tmp_path / "runs" / "tiny_*" / "checkpoint" / "I8_E*.pth"))
    state = load_checkpoint(path, "diffusion")
    assert state["step"] == 8
    adam = state["optimizer"]["state"]
    assert len(adam) == len(reference_ddpm["optimizer"]["state"])
    assert all(int(s["step"]) == 8 for s in adam.values())  # 6 reference steps + 2 here, not a fresh Adam
    moved = [k for k, v in state["model"].items() if not torch.equal(v, reference_ddpm["gen"]["denoise_fn." + k])]
    assert len(moved) == len(state["model"])
    assert sorted(os.listdir(os.path.dirname(reference_ddpm["prefix"]))) == ["I6_E2_gen.pth", "I6_E2_opt.pth"]


def test_a_gen_file_without_its_opt_file_cannot_continue_training(tmp_path, reference_ddpm):
    alone = tmp_path / "I6_E2_gen.pth"
    alone.write_bytes(open(reference_ddpm["prefix"] + "_gen.pth", "rb").read())
    from ubf.pipeline.diffusion_config import load_diffusion_config
    cfg = load_diffusion_config(reference_ddpm["config"])
    with pytest.raises(UserError, match="I6_E2_opt.pth is not beside it"):
        load_diffusion_resume(str(alone), cfg)
    cfg["model"]["unet"]["inner_channel"] = 16
    with pytest.raises(UserError, match="do not fit the config"):
        load_diffusion_resume(reference_ddpm["prefix"], cfg)


def test_stage2_round_trip_reference_ours_reference(tmp_path, reference_ddpm):
    from ubf.pipeline.diffusion_config import load_diffusion_config
    cfg = load_diffusion_config(reference_ddpm["config"])
    state = load_diffusion_resume(reference_ddpm["prefix"], cfg)
    ours = str(tmp_path / "I6_E2.pth")
    save_checkpoint({**state, "format": None}, ours)
    assert export_main(["diffusion", ours, str(tmp_path / "back" / "I6_E2")]) == 0
    gen, opt = load_file(str(tmp_path / "back" / "I6_E2_gen.pth")), load_file(str(tmp_path / "back" / "I6_E2_opt.pth"))
    original = reference_ddpm["gen"]
    assert list(gen) == list(original)  # the reference's names in its order, buffers included
    assert all(torch.equal(gen[k], original[k]) for k in original)
    assert opt["epoch"] == 2 and opt["iter"] == 6 and opt["scheduler"] is None
    reference_adam = reference_ddpm["optimizer"]
    assert opt["optimizer"]["param_groups"] == reference_adam["param_groups"]
    assert all(torch.equal(opt["optimizer"]["state"][i][key], reference_adam["state"][i][key])
               for i in reference_adam["state"] for key in ("exp_avg", "exp_avg_sq"))

    def sample(resume, out):
        Diffusion.main(["-p", "val", "-c", reference_ddpm["config"], "--resume", resume, "--run-dir", out,
                        "--num-samples", "2", "--device", "cpu", "--seed", "5"])
        return [read_mat(f)["SR"] for f in sorted(glob.glob(os.path.join(out, "mat_results", "*.mat")))]

    first = sample(reference_ddpm["prefix"], str(tmp_path / "s1"))
    again = sample(str(tmp_path / "back" / "I6_E2"), str(tmp_path / "s2"))
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, again))
