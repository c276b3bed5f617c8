"""Inputs and flags of issue 24 that are not file formats: run names that leave --out, class names with a
comma, hidden abundance files, batches and workers the machine cannot hold, sampler flags that would be
ignored, and the reference's file layout of `-p val`.
"""
import copy
import glob
import json
import os

import numpy as np
import pytest
import scipy.io as sio
import torch

from ubf.cli import diffusion as Diffusion
from ubf.cli.unmixing import main as unmixing_main
from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.data.abundance_dataset import list_abundance_files
from ubf.data.matio import write_mat
from ubf.pipeline.class_labels import requested_labels
from test_diffusion_cli import TINY, write_json


def refused(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def abundances(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mat(str(tmp_path / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)})
    return str(tmp_path / "abu")


@pytest.fixture
def tiny_config(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["train"].update({"n_iter": 2, "val_freq": 100, "save_checkpoint_freq": 100, "print_freq": 1,
                         "preview_samples": 0})
    cfg["sample"].update({"steps": 3})
    return write_json(tmp_path / "tiny.json", cfg)


# run names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "..", "a/b", ""])
def test_a_run_name_cannot_put_the_run_folder_outside_out(tmp_path, capsys, abundances, tiny_config, name):
    out = tmp_path / "runs"
    line = refused(capsys, lambda: Diffusion.main(["-p", "train", "-c", tiny_config, "--data", abundances, "--root",
                                                   str(out), "--device", "cpu", "--set", f"name={name}"]))
    assert "'name'" in line and ("one folder name" in line or "non-empty" in line), line
    line = refused(capsys, lambda: unmixing_main(["train", "--train", abundances, "--out", str(tmp_path / "u"),
                                                  "--set", f"name={name}"]))
    assert "'name'" in line, line
    assert sorted(os.listdir(tmp_path)) == ["abu", "tiny.json"]  # nothing created, inside or outside


# class names -------------------------------------------------------------------------------------------

def test_a_class_whose_name_holds_a_comma_can_be_selected():
    names = ["a,b", "c", "all"]
    assert requested_labels(names, "a,b", 3) == [0, 0, 0]
    assert requested_labels(["a", "b", "c"], "a,b", 4) == [0, 1, 0, 1]  # still a list when no class has that name


def test_a_class_named_like_a_list_trains_and_samples(tmp_path, capsys):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["diffusion"].update({"class_conditional": True})
    cfg["train"].update({"n_iter": 2, "print_freq": 1, "val_freq": 100, "save_checkpoint_freq": 100,
                         "preview_samples": 0})
    cfg["sample"].update({"steps": 3, "sampler": "ddim"})
    config = write_json(tmp_path / "c.json", cfg)
    for i, name in enumerate(["a,b", "c", "a,b"]):
        write_mat(str(tmp_path / "abu" / f"{i}.mat"), {"Abu": np.full((8, 8, 3), 1 / 3, np.float32), "class": name})
    out = str(tmp_path / "runs")
    Diffusion.main(["-p", "train", "-c", config, "--data", str(tmp_path / "abu"), "--root", out, "--device", "cpu"])
    (ckpt,) = glob.glob(os.path.join(out, "*", "checkpoint", "*.pth"))
    Diffusion.main(["-p", "val", "-c", config, "--ckpt", ckpt, "--root", out, "--device", "cpu", "--class", "a,b",
                    "--num-samples", "2"])
    records = [json.loads(x) for x in open(glob.glob(os.path.join(out, "*", "mat_results", "samples.jsonl"))[0])]
    assert [r["class"] for r in records] == ["a,b", "a,b"]


def test_hidden_abundance_files_are_named_not_skipped_silently(tmp_path, abundances):
    write_mat(os.path.join(abundances, ".hidden.mat"), {"Abu": np.full((8, 8, 3), 1 / 3, np.float32)})
    records = []
    handler = __import__("logging").Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        files = list_abundance_files(abundances)
    finally:
        get_logger().removeHandler(handler)
    assert len(files) == 3
    assert any("1 hidden .mat file(s) not used (e.g. .hidden.mat)" in r.getMessage() for r in records)


# what the machine cannot hold ---------------------------------------------------------------------------

def test_a_batch_the_memory_cannot_hold_is_refused_before_training(tmp_path, capsys, abundances, tiny_config,
                                                                   monkeypatch):
    from ubf.pipeline import diffusion_train
    monkeypatch.setattr(diffusion_train, "available_memory", lambda device: 64 * 2 ** 20)  # a 64 MiB machine
    line = refused(capsys, lambda: Diffusion.main(["-p", "train", "-c", tiny_config, "--data", abundances, "--root",
                                                   str(tmp_path / "runs"), "--device", "cpu", "--batch-size", "100000",
                                                   "--set", "datasets.train.batching=stream"]))
    per_sample = diffusion_train.activation_bytes_per_sample(
        __import__("ubf.pipeline.diffusion_config", fromlist=["x"]).load_diffusion_config(tiny_config)["model"])
    assert f"datasets.train.batch_size 100000: about {per_sample * 100000 / 2 ** 30:,.1f} GiB" in line
    assert "more than the 0.1 GiB free on cpu" in line and not (tmp_path / "runs").exists()
    # the reference's batching takes at most the epoch's 3 files: the same flag trains
    assert Diffusion.main(["-p", "train", "-c", tiny_config, "--data", abundances, "--root", str(tmp_path / "runs"),
                           "--device", "cpu", "--batch-size", "100000"]) == 0


def test_the_activation_estimate_counts_what_a_forward_pass_produces():
    """Hand count for a one-level UNet of 8 channels at 8 x 8 would be long; instead: it scales with the
    image area and the channel width exactly as activations do."""
    from ubf.pipeline.diffusion_config import load_diffusion_config
    from ubf.pipeline.diffusion_train import activation_bytes_per_sample
    small = load_diffusion_config(None, {"model.unet.inner_channel": 8, "model.unet.norm_groups": 4,
                                         "model.unet.channel_multiplier": [1, 2], "model.unet.attn_res": [],
                                         "model.unet.res_blocks": 1, "model.diffusion.image_size": 16})["model"]
    big = copy.deepcopy(small)
    big["diffusion"]["image_size"] = 32
    a, b = activation_bytes_per_sample(small), activation_bytes_per_sample(big)
    assert b / a == pytest.approx(4.0, rel=0.02)  # the noise-level embedding does not grow with the image


@pytest.mark.parametrize("argv", [
    ["infer", "--workers", "100000"],
])
def test_more_workers_than_the_machine_can_run_are_refused(tmp_path, capsys, argv):
    from test_safety_infer import image_folder, tiny_checkpoint
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    images = image_folder(tmp_path / "rgb", count=1)
    line = refused(capsys, lambda: unmixing_main(argv + ["--ckpt", ckpt, "--rgb", images, "--out",
                                                         str(tmp_path / "abu"), "--device", "cpu"]))
    assert "--workers 100000: more loader processes than this machine can run usefully" in line
    assert not (tmp_path / "abu").exists()


# sampler flags ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--steps", "20"], "--steps 20: the ancestral sampler runs all of the schedule's steps and has no eta"),
    (["--eta", "0.5"], "--eta 0.5: the ancestral sampler"),
    (["--sampler", "dpmpp2m", "--eta", "0.5"], "--eta 0.5: DPM-Solver++ (2M) is deterministic"),
])
def test_sampler_flags_the_sampler_would_ignore_are_refused(tmp_path, capsys, flags, needle):
    cfg = copy.deepcopy(TINY)
    cfg["sample"].update({"steps": 3})
    cfg["sample"]["sampler"] = "ancestral"
    config = write_json(tmp_path / "anc.json", cfg)
    line = refused(capsys, lambda: Diffusion.main(["-p", "val", "-c", config, "--root", str(tmp_path / "runs"),
                                                   "--device", "cpu", *flags]))
    assert needle in line, line


# -p val in the reference's layout ---------------------------------------------------------------------

def test_val_in_the_reference_layout_writes_its_names_and_key(tmp_path, abundances, tiny_config):
    """The reference's -p val (Diffusion.py:156-177) saves `{current_step}_{idx}_sample_abu.mat`, idx from 1,
    current_step 0 in the val phase (base_model.py begin_step), with the one key SR (core/vis.py save_mat)."""
    out = str(tmp_path / "runs")
    Diffusion.main(["-p", "train", "-c", tiny_config, "--data", abundances, "--root", out, "--device", "cpu"])
    (ckpt,) = glob.glob(os.path.join(out, "*", "checkpoint", "*.pth"))
    run = os.path.dirname(os.path.dirname(ckpt))
    Diffusion.main(["-p", "val", "-c", tiny_config, "--ckpt", ckpt, "--device", "cpu", "--num-samples", "2",
                    "--layout", "reference", "--sampler", "ddim"])
    names = sorted(n for n in os.listdir(os.path.join(run, "mat_results")) if n.endswith(".mat"))
    assert names == ["0_1_sample_abu.mat", "0_2_sample_abu.mat"]
    stored = sio.loadmat(os.path.join(run, "mat_results", names[0]))
    assert sorted(k for k in stored if not k.startswith("__")) == ["SR"] and stored["SR"].shape == (8, 8, 3)
    assert float(np.abs(stored["SR"]).max()) <= 1.0


def test_demo_size_is_bounded_before_any_data_is_made(tmp_path, capsys):
    from ubf.cli.demo import main as demo_main
    line = refused(capsys, lambda: demo_main(["--size", "100000", "--out", str(tmp_path / "demo")]))
    assert "argument --size: must be an integer in [8, 1024], got 100000" in line
    assert not (tmp_path / "demo").exists()


def test_a_k_above_the_sampled_pixels_is_one_line(tmp_path, capsys):
    from ubf.cli import evaluate as Evaluate
    for folder in ("real", "syn"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            sio.savemat(tmp_path / folder / f"{i}.mat",
                        {"HSI": np.random.default_rng(i).random((8, 8, 59)).astype(np.float32)})
    line = refused(capsys, lambda: Evaluate.main(["generation", "--real", str(tmp_path / "real"), "--synthetic",
                                                  str(tmp_path / "syn"), "--out", str(tmp_path / "report"),
                                                  "--no-progress", "--feature-cache", "none", "--no-baselines",
                                                  "--feature-steps", "1", "--k", "1000", "--prdc-cap", "2000"]))
    assert "--k 1000: precision/recall need more sampled pixels than k (128 real, 128 synthetic)" in line
