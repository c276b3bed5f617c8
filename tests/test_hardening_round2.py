"""Hardening, second round (issue 14): nothing lost, nothing silently wrong, no traceback.

Every CLI is run in-process through its `main(argv)`; a user error ends in `SystemExit(2)` and one
`error: ...` line on stderr. The expectations (which file is named, what stays on disk) are stated
here by hand, not read from the code under test. docs/hardening.md lists each case with its test.
"""
import glob
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli import evaluate as Evaluate
from ubf.cli import synthesis as Synthesis
from ubf.cli import unmixing as Unmixing
from ubf.cli import demo as demo
from ubf.core.checkpoint import load_checkpoint, save_checkpoint
from ubf.core.config import merge_config, read_json_config
from ubf.core.errors import UserError
from ubf.core.fs import check_output_path, remove_stale_temp_files
from ubf.core.runlock import LOCK_NAME, RunLock
from ubf.core.validate import INT_POSITIVE, Number, check_band_indices, check_value
from ubf.data.matio import read_hsi, read_mat, write_mat
from ubf.data.prepare import main as prepare_main
from ubf.data.splits import parse_split
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS, load_diffusion_config
from ubf.pipeline.diffusion_sample import write_samples
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config

CPU = torch.device("cpu")
TINY_TRAIN = {"data": {"crop_size": 16, "samples_per_epoch": 4, "bands": [5, 3, 1], "val": None, "test": None},
              "model": {"widths": [4, 4], "n_blocks": 1},
              "train": {"batch_size": 4, "lr": 5e-3, "seed": 1, "epochs": 1}}
TINY_DDPM = {
    "name": "tiny",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0}, "val": {"data_len": 2}},
    "model": {
        "unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                 "channel_multiplier": [1, 2], "attn_res": [4], "res_blocks": 1, "dropout": 0.0},
        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3, "linear_end": 0.2},
                          "val": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3, "linear_end": 0.2}},
        "diffusion": {"image_size": 8, "channels": 3},
    },
    "train": {"n_iter": 2, "val_freq": 100, "save_checkpoint_freq": 100, "print_freq": 1, "preview_samples": 0},
    "sample": {"sampler": "ddim", "steps": 3, "batch_size": 2},
}


def one_line_error(capsys, call) -> str:
    """Run a CLI call that must fail as a user error; return its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def write_json(path, data) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return str(path)


def tiny_checkpoint(path, out_bands=12, nan=False):
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [8, 8], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=out_bands, widths=(8, 8), n_blocks=1)
    if nan:
        with torch.no_grad():
            model.encoder.stem.weight.fill_(float("nan"))
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": out_bands,
                     "in_channels": 3, "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0}, str(path))
    return str(path)


def rgb_image(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def crops_folder(folder, count=2, bands=8, size=20):
    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        sio.savemat(os.path.join(folder, f"crop_{index}.mat"),
                    {"Y": np.random.default_rng(index).random((size, size + 2, bands)).astype(np.float32)})
    return str(folder)


def other_live_pid() -> int:
    """A process id that is alive and not ours (pytest's parent), as a concurrent run would hold."""
    return os.getppid()


def write_lock(folder, pid, host=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "what": "Unmixing.py train",
                   "started": "2026-01-01 00:00:00"}, f)


# ---------------------------------------------------------------- Unmixing.py infer: names, temp files, batches

def test_same_file_name_in_two_folders_gets_two_outputs_always(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    rgb_image(str(tmp_path / "a" / "x.png"), 0)
    rgb_image(str(tmp_path / "b" / "x.png"), 1)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        code = Unmixing.main(["infer", "--ckpt", ckpt, "--rgb", str(tmp_path / "a"), str(tmp_path / "b"),
                              "--out", str(out), "--device", "cpu", *extra])
        assert code == 0
        manifest = [json.loads(line) for line in open(out / "manifest.jsonl")]
        outputs = {}
        for entry in manifest:
            outputs[entry["input"]] = entry["output"]
        assert len(set(outputs.values())) == 2 and len(glob.glob(str(out / "*.mat"))) == 2
        # each output holds its own input (GT is the min-max normalised image)
        for source, output in outputs.items():
            pixels = np.asarray(Image.open(source), dtype=np.float32)
            expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
            np.testing.assert_allclose(read_mat(output)["GT"], expected, atol=1e-6)
    # a third run finds both done
    assert Unmixing.main(["infer", "--ckpt", ckpt, "--rgb", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--out", str(out), "--device", "cpu"]) == 0
    assert len(glob.glob(str(out / "*.mat"))) == 2


def test_killed_infer_temp_file_is_removed_on_the_next_run(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    rgb_image(str(tmp_path / "a" / "x.png"), 0)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftover = out / f".x.mat.tmp{dead}"
    leftover.write_bytes(b"\0" * 4096)
    alive = out / f".y.mat.tmp{other_live_pid()}"  # another writer's, still running: kept
    alive.write_bytes(b"\0")
    assert Unmixing.main(["infer", "--ckpt", ckpt, "--rgb", str(tmp_path / "a"), "--out", str(out),
                          "--device", "cpu"]) == 0
    assert not leftover.exists() and alive.exists() and (out / "x.mat").exists()


def test_tiny_non_mat_file_is_skipped_in_an_hsi_batch(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    hsi = tmp_path / "hsi"
    crops_folder(hsi, count=1, bands=12)
    (hsi / "bad.mat").write_bytes(b"not a mat file at all")  # < 128 bytes
    code = Unmixing.main(["infer", "--ckpt", ckpt, "--hsi", str(hsi), "--out", str(tmp_path / "out"),
                          "--device", "cpu"])
    assert code == 1
    assert "bad.mat: not a readable .mat file" in capsys.readouterr().err
    assert os.path.isfile(tmp_path / "out" / "crop_0.mat") and not os.path.exists(tmp_path / "out" / "bad.mat")


def test_nan_abundances_are_never_written_as_done(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "u.pth", nan=True)
    rgb_image(str(tmp_path / "a" / "x.png"), 0)
    out = tmp_path / "out"
    assert Unmixing.main(["infer", "--ckpt", ckpt, "--rgb", str(tmp_path / "a"), "--out", str(out),
                          "--device", "cpu"]) == 1
    assert not (out / "x.mat").exists() and not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--tile", "-5"], "--tile: must be an integer >= 0, got -5"),
    (["--tile-batch", "0"], "--tile-batch: must be an integer >= 1, got 0"),
    (["--overlap", "-1"], "--overlap: must be an integer >= 0, got -1"),
    (["--tile", "2.5"], "--tile: must be an integer >= 0, got '2.5'"),
    (["--tile", "16", "--overlap", "16"], "'infer.overlap' (16) must be smaller than 'infer.tile' (16)"),
])
def test_infer_tiling_flags_are_checked_before_any_work(tmp_path, capsys, flags, needle):
    line = one_line_error(capsys, lambda: Unmixing.main(["infer", "--ckpt", "missing.pth", "--out",
                                                           str(tmp_path / "out"), *flags]))
    assert needle in line
    assert not (tmp_path / "out").exists()


def test_bands_first_cube_is_transposed_when_the_checkpoint_settles_it(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "u.pth", out_bands=12)
    cube = np.random.default_rng(3).random((20, 22, 12)).astype(np.float32)
    sio.savemat(tmp_path / "hwc.mat", {"Y": cube})
    (tmp_path / "chw").mkdir()
    sio.savemat(tmp_path / "chw" / "hwc.mat", {"Y": cube.transpose(2, 0, 1)})  # 12 x 20 x 22
    (tmp_path / "hw").mkdir()
    os.replace(tmp_path / "hwc.mat", tmp_path / "hw" / "hwc.mat")
    for name in ("hw", "chw"):
        assert Unmixing.main(["infer", "--ckpt", ckpt, "--hsi", str(tmp_path / name), "--out",
                              str(tmp_path / f"out_{name}"), "--device", "cpu", "--workers", "0"]) == 0
    same = [read_mat(str(tmp_path / f"out_{name}" / "hwc.mat"))["Abu"] for name in ("hw", "chw")]
    np.testing.assert_array_equal(same[0], same[1])
    assert "is 12 x 20 x 22, read as C x H x W (12 bands expected)" in capsys.readouterr().err


def test_bands_first_square_crops_are_refused_naming_the_axis_order(tmp_path):
    sio.savemat(tmp_path / "c.mat", {"Y": np.random.default_rng(0).random((59, 32, 32)).astype(np.float32)})
    with pytest.raises(UserError, match=r"c.mat: variable 'Y' is 59 x 32 x 32, which looks like bands first"):
        read_hsi(str(tmp_path / "c.mat"))
    # the band count stated by the file settles it: transposed, not refused
    sio.savemat(tmp_path / "w.mat", {"Y": np.zeros((59, 32, 32), np.float32), "wavelengths": np.arange(59.0) + 400})
    cube, wavelengths = read_hsi(str(tmp_path / "w.mat"))
    assert cube.shape == (32, 32, 59) and wavelengths.shape == (59,)


def test_training_on_bands_first_crops_is_refused_before_any_step(tmp_path, capsys):
    folder = tmp_path / "chw"
    folder.mkdir()
    for index in range(2):
        sio.savemat(folder / f"c{index}.mat", {"Y": np.random.default_rng(index).random((59, 24, 24)).astype("f4")})
    config = write_json(tmp_path / "c.json", TINY_TRAIN)
    line = one_line_error(capsys, lambda: Unmixing.main(["train", "-c", config, "--train", str(folder), "--out",
                                                           str(tmp_path / "run"), "--device", "cpu"]))
    assert "looks like bands first (C x H x W" in line
    assert not glob.glob(str(tmp_path / "run" / "checkpoint" / "*.pth"))


# ---------------------------------------------------------------- numbers: flags and configs of every CLI

@pytest.mark.parametrize("change, needle", [
    ({"train": {"batch_size": 0}}, "'train.batch_size' must be an integer >= 1, got 0"),
    ({"train": {"batch_size": -4}}, "'train.batch_size' must be an integer >= 1, got -4"),
    ({"model": {"num_endmembers": 0}}, "'model.num_endmembers' must be an integer >= 1, got 0"),
    ({"train": {"lr": -1e-3}}, "'train.lr' must be a number > 0, got -0.001"),
    ({"train": {"lr": float("nan")}}, "'train.lr' must be a number > 0, got nan"),
    ({"train": {"lr": "0.001"}}, "'train.lr' must be a number > 0, got '0.001'"),
    ({"model": {"encoder": "resnet"}}, "'model.encoder' is 'resnet', expected one of 'sspn', 'pixel_mlp'"),
    ({"train": {"epochs": "10"}}, "'train.epochs' must be an integer >= 1, got '10'"),
    ({"train": {"epochs": 2.5}}, "'train.epochs' must be an integer >= 1, got 2.5"),
    ({"train": {"epochs": 0}}, "'train.epochs' must be an integer >= 1, got 0"),
    ({"model": {"widths": [8, -1]}}, "'model.widths'[1] must be an integer >= 1, got -1"),
    ({"infer": {"overlap": -3}}, "'infer.overlap' must be an integer >= 0, got -3"),
    ({"data": {"bands": [-1, 3, 1]}}, "'data.bands'[0] must be an integer >= 0, got -1"),
    ({"data": {"bands": [5, 3, 9]}}, "band indices [9] out of range for a 8-band cube (0 to 7)"),
])
def test_stage1_config_values_are_checked_before_any_data_is_read(tmp_path, capsys, change, needle):
    cfg = json.loads(json.dumps(TINY_TRAIN))
    for section, values in change.items():
        cfg.setdefault(section, {}).update(values)
    config = write_json(tmp_path / "c.json", cfg)
    train = crops_folder(tmp_path / "crops")
    line = one_line_error(capsys, lambda: Unmixing.main(["train", "-c", config, "--train", train, "--out",
                                                           str(tmp_path / "run"), "--device", "cpu"]))
    assert needle in line
    assert not glob.glob(str(tmp_path / "run" / "checkpoint" / "*.pth"))


def test_epochs_as_a_float_that_is_whole_is_accepted():
    cfg = load_unmixing_config(None, {"train.epochs": 3.0})
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)


@pytest.mark.parametrize("flags, needle", [
    (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size/--batch_size: must be an integer >= 1, got 0"),
    (["--lr", "-1"], "--lr/--learning_rate: must be a number > 0, got -1.0"),
    (["--lr", "nan"], "--lr/--learning_rate: must be a number > 0, got nan"),
    (["--bands", "-1", "3", "1"], "--bands: must be an integer >= 0, got -1"),
])
def test_stage1_train_flags(tmp_path, capsys, flags, needle):
    line = one_line_error(capsys, lambda: Unmixing.main(["train", "--out", str(tmp_path / "run"), *flags]))
    assert needle in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, needle", [
    ({"model": {"unet": {"channel_multiplier": "1,2"}}}, "'model.unet.channel_multiplier' must be a non-empty list"),
    ({"model": {"unet": {"channel_multiplier": [1, "2"]}}}, "'model.unet.channel_multiplier'[1] must be an integer"),
    ({"model": {"beta_schedule": {"train": {"linear_end": 1.5}}}},
     "'model.beta_schedule.train.linear_end' must be a number in (0, 1), got 1.5"),
    ({"model": {"beta_schedule": {"val": {"linear_start": 0}}}},
     "'model.beta_schedule.val.linear_start' must be a number in (0, 1), got 0.0"),
    ({"sample": {"eta": -1}}, "'sample.eta' must be a number in [0, 1], got -1.0"),
    ({"train": {"optimizer": {"lr": "1e-4"}}}, "'train.optimizer.lr' must be a number > 0, got '1e-4'"),
    ({"train": {"ema_scheduler": {"ema_decay": 1.5}}}, "'train.ema_scheduler.ema_decay' must be a number in [0, 1]"),
    ({"model": {"unet": {"dropout": 1.0}}}, "'model.unet.dropout' must be a number in [0, 1), got 1.0"),
    ({"datasets": {"train": {"batch_size": 0}}}, "'datasets.train.batch_size' must be an integer >= 1, got 0"),
])
def test_stage2_config_values(tmp_path, capsys, change, needle):
    cfg = json.loads(json.dumps(TINY_DDPM))
    merge_into(cfg, change)
    config = write_json(tmp_path / "d.json", cfg)
    out = tmp_path / "runs"
    line = one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", config, "--data", str(tmp_path),
                                                            "--root", str(out)]))
    assert needle in line and not out.exists()


def merge_into(base: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict):
            merge_into(base.setdefault(key, {}), value)
        else:
            base[key] = value


@pytest.mark.parametrize("flags, needle", [
    (["-p", "val", "--eta", "-1"], "--eta: must be a number in [0, 1], got -1.0"),
    (["-p", "val", "--steps", "0"], "--steps: must be an integer >= 1, got 0"),
    (["-p", "val", "--num-samples", "0"], "--num-samples: must be an integer >= 1, got 0"),
    (["-p", "train", "--batch-size", "0"], "--batch-size/--batch_size: must be an integer >= 1, got 0"),
    (["-p", "train", "--n-iter", "-5"], "--n-iter/--n_iter: must be an integer >= 1, got -5"),
    (["-p", "train", "--workers", "-1"], "--workers: must be an integer >= 0, got -1"),
])
def test_stage2_flags(tmp_path, capsys, flags, needle):
    line = one_line_error(capsys, lambda: Diffusion.main([*flags, "--root", str(tmp_path / "runs")]))
    assert needle in line and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (["reconstruction", "--ckpt", "c.pth", "--hsi", ".", "--tile", "0"], "--tile: must be an integer >= 1"),
    (["reconstruction", "--ckpt", "c.pth", "--hsi", ".", "--overlap", "-2"], "--overlap: must be an integer >= 0"),
    (["downstream", "--real", ".", "--synthetic", ".", "--test-fraction", "1.5"],
     "--test-fraction: must be a number in (0, 1), got 1.5"),
    (["downstream", "--real", ".", "--synthetic", ".", "--lr", "0"], "--lr/--learning_rate: must be a number > 0, got 0.0"),
    (["downstream", "--real", ".", "--synthetic", ".", "--rgb-bands", "0", "-1", "2"],
     "--rgb-bands: must be an integer >= 0, got -1"),
    (["generation", "--real", ".", "--synthetic", ".", "--pixel-cap", "-1"], "--pixel-cap: must be an integer >= 1"),
])
def test_evaluate_flags(tmp_path, capsys, argv, needle):
    line = one_line_error(capsys, lambda: Evaluate.main([*argv, "--out", str(tmp_path / "rep")]))
    assert needle in line and not (tmp_path / "rep").exists()


def test_flag_errors_are_one_line_without_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        Unmixing.main(["infer", "--tile", "-5"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # prog is sys.argv[0]: Unmixing.py when run as a script
    assert line.startswith("error: ") and line.endswith(
        " infer: argument --tile: must be an integer >= 0, got -5 (see " + line.split(" ")[1] + " infer --help)")


def test_synthesis_and_demo_flags(tmp_path, capsys):
    line = one_line_error(capsys, lambda: Synthesis.main(["--rgb-bands", "-1", "2", "3", "--out", str(tmp_path / "s")]))
    assert "--rgb-bands: must be an integer >= 0, got -1" in line
    line = one_line_error(capsys, lambda: demo.main(["--size", "0", "--out", str(tmp_path / "d")]))
    assert "--size: must be an integer in [8, 1024], got 0" in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_negative_band_index_never_wraps_around():
    with pytest.raises(UserError, match=r"band indices \[-1\] out of range for a 59-band cube"):
        check_band_indices([-1, 10, 20], 59, "--rgb-bands")
    assert check_band_indices([58, 0, 3], 59, "x") == [58, 0, 3]


@pytest.mark.parametrize("text", ["train=0.8,val=0.4,test=0.3", "train=1,val=0.5", "train=0.5"])
def test_split_fractions_must_sum_to_one(text):
    with pytest.raises(UserError, match="sum to"):
        parse_split(text)


def test_split_ratios_and_fractions_that_sum_to_one_are_accepted():
    assert parse_split("train=3,val=1") == {"train": 0.75, "val": 0.25}
    assert parse_split("train=0.7,val=0.2,test=0.1") == pytest.approx({"train": 0.7, "val": 0.2, "test": 0.1})


def test_prepare_split_summing_to_one_and_a_half_is_refused(tmp_path, capsys):
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", str(tmp_path), "--out", str(tmp_path / "o"),
                                                          "--split", "train=1,val=0.5"]))
    assert "sum to 1.5, not 1" in line and not (tmp_path / "o").exists()


def test_number_rules_by_hand():
    assert check_value(1e4, INT_POSITIVE, "x") == 10000
    for bad in (True, "3", math.inf, 0, -2, 1.5):
        with pytest.raises(UserError):
            check_value(bad, INT_POSITIVE, "x")
    assert Number(low=0, high=1, open_low=True).describe() == "a number in (0, 1]"


# ---------------------------------------------------------------- configs: encoding, typos, resume

def test_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes('{\n "name": "caf\u00e9"\n}'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.json: not UTF-8 text \(byte 0xe9 at line 2\)"):
        read_json_config(str(path))
    line = one_line_error(capsys, lambda: Unmixing.main(["train", "-c", str(path), "--out", str(tmp_path / "r")]))
    assert "not UTF-8" in line
    line = one_line_error(capsys, lambda: Diffusion.main(["-c", str(path), "--root", str(tmp_path / "r")]))
    assert "not UTF-8" in line


@pytest.mark.parametrize("user, hint", [
    ({"train": {"lr": 1e-4}}, "did you mean 'train.optimizer.lr'?"),
    ({"model": {"unet": {"dropuot": 0.1}}}, "did you mean 'model.unet.dropout'?"),
    ({"model": {"beta_schedule": {"train": {"linear_strat": 1e-4}}}},
     "did you mean 'model.beta_schedule.train.linear_start'?"),
    ({"train": {"optimiser": {"lr": 1}}}, "did you mean 'train.optimizer'?"),
])
def test_nested_config_typo_suggests_the_key(user, hint):
    with pytest.raises(UserError) as info:
        merge_config(DIFFUSION_DEFAULTS, user, "d.json")
    assert hint in str(info.value)


def test_stage1_resume_without_config_uses_the_checkpoints(tmp_path):
    train = crops_folder(tmp_path / "crops")
    cfg = json.loads(json.dumps(TINY_TRAIN))
    cfg["model"]["num_endmembers"] = 3  # not the default: the default config would not fit the checkpoint
    config = write_json(tmp_path / "c.json", cfg)
    run = str(tmp_path / "run")
    Unmixing.main(["train", "-c", config, "--train", train, "--out", run, "--device", "cpu"])
    latest = os.path.join(run, "checkpoint", "latest.pth")
    killed_write = os.path.join(run, "checkpoint", ".latest.pth.tmp999999999")  # a save cut short by kill -9
    open(killed_write, "wb").write(b"\0" * 1000)
    Unmixing.main(["train", "--resume", latest, "--out", run, "--epochs", "2", "--device", "cpu"])
    assert not os.path.exists(killed_write)
    state = load_checkpoint(latest, "unmixing")
    assert state["epoch"] == 1 and state["config"]["model"]["num_endmembers"] == 3
    assert not os.path.exists(os.path.join(run, LOCK_NAME))


def test_stage1_resume_with_a_config_of_another_network_is_one_line(tmp_path, capsys):
    train = crops_folder(tmp_path / "crops")
    cfg = json.loads(json.dumps(TINY_TRAIN))
    cfg["model"]["num_endmembers"] = 3
    run = str(tmp_path / "run")
    Unmixing.main(["train", "-c", write_json(tmp_path / "c3.json", cfg), "--train", train, "--out", run,
                   "--device", "cpu"])
    cfg["model"]["num_endmembers"] = 4
    line = one_line_error(capsys, lambda: Unmixing.main([
        "train", "-c", write_json(tmp_path / "c4.json", cfg), "--train", train, "--out", run, "--epochs", "2",
        "--resume", os.path.join(run, "checkpoint", "latest.pth"), "--device", "cpu"]))
    assert "model.num_endmembers 3 in the checkpoint, 4 now" in line and "resume without -c" in line


def test_demo_checks_its_configs_before_making_data(tmp_path, capsys):
    cfg = json.loads(json.dumps(TINY_TRAIN))
    cfg["train"]["lr"] = "fast"
    bad = write_json(tmp_path / "u.json", cfg)
    line = one_line_error(capsys, lambda: demo.main(["--unmixing-config", bad, "--out", str(tmp_path / "d")]))
    assert "'train.lr' must be a number > 0, got 'fast'" in line and not (tmp_path / "d").exists()


# ---------------------------------------------------------------- one writer per run folder

def test_second_training_into_a_locked_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    write_lock(run, other_live_pid())
    before = sorted(os.listdir(run))
    line = one_line_error(capsys, lambda: Unmixing.main(["train", "-c", write_json(tmp_path / "c.json", TINY_TRAIN),
                                                           "--train", crops_folder(tmp_path / "crops"),
                                                           "--out", str(run), "--device", "cpu"]))
    assert f"{run}: in use by another Unmixing.py train (process {other_live_pid()}" in line
    assert sorted(os.listdir(run)) == before


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    write_lock(tmp_path / "run", int(dead))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / LOCK_NAME).write_text("")  # killed while creating its lock
    for folder in ("run", "torn"):
        with RunLock(str(tmp_path / folder), "test") as lock:
            assert json.load(open(lock.path))["pid"] == os.getpid()
        assert not os.path.exists(lock.path)


def test_lock_from_another_machine_names_the_file_to_delete(tmp_path):
    write_lock(tmp_path / "run", 12345, host="some-other-host")
    with pytest.raises(UserError, match=r"process 12345 on some-other-host.*delete .*\.run\.lock if that run is over"):
        RunLock(str(tmp_path / "run")).acquire()


def test_diffusion_run_folder_in_use_is_refused(tmp_path, capsys):
    abu = tmp_path / "abu"
    for i in range(2):
        write_mat(str(abu / f"a{i}.mat"), {"Abu": np.full((10, 10, 3), 1 / 3, np.float32)})
    run = tmp_path / "run"
    write_lock(run, other_live_pid())
    config = write_json(tmp_path / "d.json", TINY_DDPM)
    line = one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", config, "--data", str(abu),
                                                            "--run-dir", str(run), "--device", "cpu"]))
    assert "in use by another" in line and sorted(os.listdir(run)) == [LOCK_NAME]


# ---------------------------------------------------------------- failures while writing

def test_disk_full_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    save_checkpoint({"stage": "unmixing", "model": {"w": torch.ones(2)}}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 1000)  # part of the file made it to disk
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1000 vs 998")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"latest.pth: could not write checkpoint \(\[enforce fail"):
        save_checkpoint({"stage": "unmixing", "model": {"w": torch.zeros(2)}}, path)
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temporary file left
    monkeypatch.undo()
    assert float(load_checkpoint(path)["model"]["w"].sum()) == 2.0


def test_failed_config_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from ubf.core.config import save_config
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')

    def broken_dump(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(UserError, match=r"config.json: could not write \(No space left on device\)"):
        save_config({"new": True}, str(path))
    assert os.listdir(tmp_path) == ["config.json"] and path.read_text() == '{"old": true}'


# ---------------------------------------------------------------- output paths

def cli_calls(tmp_path, out):
    """One call per CLI that writes into `out` (the inputs need not be valid: the output is checked first)."""
    return {
        "Synthesis.py": lambda: Synthesis.main(["--abundances", str(tmp_path), "--ckpt", "c.pth", "--out", out]),
        "Evaluate.py": lambda: Evaluate.main(["reconstruction", "--ckpt", "c.pth", "--hsi", str(tmp_path),
                                              "--out", out]),
        "ubf.data.prepare": lambda: prepare_main(["rgb", "--src", str(tmp_path), "--out", out]),
        "demo.py": lambda: demo.main(["--out", out]),
    }


@pytest.mark.parametrize("cli", ["Synthesis.py", "Evaluate.py", "ubf.data.prepare", "demo.py"])
def test_output_path_that_is_a_file_is_one_line(tmp_path, capsys, cli):
    (tmp_path / "a_file").write_text("keep me")
    line = one_line_error(capsys, cli_calls(tmp_path, str(tmp_path / "a_file"))[cli])
    assert line == f"error: {tmp_path / 'a_file'}: is a file, not a folder; choose another output folder"
    line = one_line_error(capsys, cli_calls(tmp_path, str(tmp_path / "a_file" / "sub"))[cli])
    assert f"cannot create the output folder, {tmp_path / 'a_file'} is a file" in line
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    # as root chmod does not stop writes; the check asks os.access, so ask it to say no
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(folder))
    with pytest.raises(UserError, match=r"ro/out: the output folder is not writable \(Permission denied on .*ro\)"):
        check_output_path(str(folder / "out"))


# ---------------------------------------------------------------- tiny non-MAT files in every CLI that reads .mat

def test_tiny_non_mat_file_is_one_line_in_every_cli(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mat").write_bytes(b"hello")  # 5 bytes
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    config = write_json(tmp_path / "c.json", TINY_TRAIN)
    ddpm = write_json(tmp_path / "d.json", TINY_DDPM)
    calls = [
        lambda: Unmixing.main(["train", "-c", config, "--train", str(bad), "--out", str(tmp_path / "r1")]),
        lambda: Diffusion.main(["-p", "train", "-c", ddpm, "--data", str(bad), "--root", str(tmp_path / "r2")]),
        lambda: Synthesis.main(["--abundances", str(bad), "--ckpt", ckpt, "--out", str(tmp_path / "r3")]),
        lambda: Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(bad), "--out", str(tmp_path / "r4")]),
        lambda: prepare_main(["chikusei", "--src", str(bad / "x.mat"), "--out", str(tmp_path / "r5")]),
    ]
    for call in calls:
        assert "x.mat: not a readable .mat file" in one_line_error(capsys, call)
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r5").exists()


# ---------------------------------------------------------------- clearer messages

def test_synthesis_names_no_key_flag_it_does_not_have(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "u.pth", out_bands=12)
    (tmp_path / "abu").mkdir()
    sio.savemat(tmp_path / "abu" / "a.mat", {"samples": np.zeros((4, 4, 5), np.float32)})
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", str(tmp_path / "abu"), "--ckpt", ckpt,
                                                            "--out", str(tmp_path / "out")]))
    assert "a.mat: no key among SR, Abu (found: samples)" in line and "--key" not in line
    assert "Diffusion.py -p val" in line


def test_diffusion_names_no_key_flag_it_does_not_have(tmp_path, capsys):
    (tmp_path / "abu").mkdir()
    sio.savemat(tmp_path / "abu" / "a.mat", {"Y": np.zeros((10, 10, 3), np.float32)})
    line = one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", write_json(tmp_path / "d.json", TINY_DDPM),
                                                            "--data", str(tmp_path / "abu"),
                                                            "--root", str(tmp_path / "runs")]))
    assert "a.mat: no key among Abu, SR (found: Y)" in line and "--key" not in line


def test_file_where_a_folder_is_expected_says_so(tmp_path, capsys):
    a_file = tmp_path / "crops.mat"
    a_file.write_text("x")
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    calls = [
        lambda: Unmixing.main(["train", "-c", write_json(tmp_path / "c.json", TINY_TRAIN), "--train", str(a_file),
                               "--out", str(tmp_path / "r")]),
        lambda: Unmixing.main(["infer", "--ckpt", ckpt, "--rgb", str(a_file), "--out", str(tmp_path / "o")]),
        lambda: Diffusion.main(["-c", write_json(tmp_path / "d.json", TINY_DDPM), "--data", str(a_file),
                                "--root", str(tmp_path / "runs")]),
        lambda: Synthesis.main(["--abundances", str(a_file), "--ckpt", ckpt, "--out", str(tmp_path / "s")]),
    ]
    for call in calls:
        line = one_line_error(capsys, call)
        assert f"{a_file}: is a file, but a" in line and "expected here" in line and "not found" not in line


def test_evaluate_band_mismatch_names_the_file_and_the_checkpoint(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "u.pth", out_bands=12)
    hsi = crops_folder(tmp_path / "hsi", count=1, bands=10)
    line = one_line_error(capsys, lambda: Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", hsi,
                                                           "--out", str(tmp_path / "rep")]))
    assert line == f"error: {os.path.join(hsi, 'crop_0.mat')}: 10 bands, but the checkpoint {ckpt} has 12"


# ---------------------------------------------------------------- no partial outputs, no empty leftovers

def test_synthesis_checks_every_input_before_writing(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "u.pth", out_bands=12)
    abu = tmp_path / "abu"
    abu.mkdir()
    sio.savemat(abu / "a.mat", {"Abu": np.full((4, 4, 5), 0.2, np.float32)})
    bad = np.full((4, 4, 5), 0.2, np.float32)
    bad[1, 1, 1] = np.nan
    sio.savemat(abu / "b.mat", {"Abu": bad})
    out = tmp_path / "out"
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", str(abu), "--ckpt", ckpt,
                                                            "--out", str(out)]))
    assert "b.mat: 'Abu' contains NaN/Inf values" in line
    assert not glob.glob(str(out / "HSI" / "*")) and not glob.glob(str(out / "RGB" / "*"))


def test_prepare_leaves_nothing_after_nan_found_part_way(tmp_path, capsys):
    cube = np.random.default_rng(0).random((32, 32, 59)).astype(np.float32)
    cube[20, 20, 5] = np.nan  # in the last of the four 16 x 16 crops
    sio.savemat(tmp_path / "c.mat", {"chikusei": cube})
    out = tmp_path / "out"
    line = one_line_error(capsys, lambda: prepare_main(["chikusei", "--src", str(tmp_path / "c.mat"), "--out",
                                                          str(out), "--size", "16", "--split", "train=3,test=1"]))
    assert "c.mat: NaN/Inf values in rows 16-32, cols 16-32" in line
    assert not out.exists()


def abundance_folder(folder, value=1 / 3, count=2):
    for i in range(count):
        write_mat(os.path.join(folder, f"a{i}.mat"), {"Abu": np.full((10, 10, 3), value, np.float32)})
    return str(folder)


def test_failed_diffusion_start_leaves_no_run_folder(tmp_path, capsys):
    config = write_json(tmp_path / "d.json", TINY_DDPM)
    out = tmp_path / "runs"
    out.mkdir()
    abu = tmp_path / "abu"
    write_mat(str(abu / "a0.mat"), {"Abu": np.full((10, 10, 4), 0.25, np.float32)})  # K = 4, config says 3
    one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", config, "--data", str(abu),
                                                     "--root", str(out), "--device", "cpu"]))
    # a bad crop found only during training (file 2 of 2): no checkpoint yet, so no run folder stays
    abundance_folder(tmp_path / "abu2")
    sio.savemat(tmp_path / "abu2" / "a1.mat", {"Abu": np.full((10, 10, 3), np.nan, np.float32)})
    one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", config, "--data", str(tmp_path / "abu2"),
                                                     "--root", str(out), "--device", "cpu"]))
    assert os.listdir(out) == []


def test_abundances_far_outside_zero_one_are_refused_for_ddpm_training(tmp_path, capsys):
    config = write_json(tmp_path / "d.json", TINY_DDPM)
    abu = abundance_folder(tmp_path / "abu", value=40.0)  # e.g. reflectance, not abundances
    line = one_line_error(capsys, lambda: Diffusion.main(["-p", "train", "-c", config, "--data", abu,
                                                            "--root", str(tmp_path / "runs"), "--device", "cpu"]))
    assert "a0.mat: 'Abu' has values from 40 to 40, far outside [0, 1]" in line
    assert not (tmp_path / "runs").exists() or os.listdir(tmp_path / "runs") == []


def test_val_with_resume_honours_out(tmp_path):
    config = write_json(tmp_path / "d.json", TINY_DDPM)
    abu = abundance_folder(tmp_path / "abu")
    train_root = tmp_path / "runs"
    Diffusion.main(["-p", "train", "-c", config, "--data", abu, "--root", str(train_root), "--device", "cpu"])
    (run,) = glob.glob(str(train_root / "tiny_*"))
    (ckpt,) = glob.glob(os.path.join(run, "checkpoint", "*.pth"))
    other = tmp_path / "samples_here"
    Diffusion.main(["-p", "val", "-c", config, "--resume", ckpt, "--root", str(other), "--device", "cpu",
                   "--num-samples", "2"])
    assert os.listdir(os.path.join(run, "mat_results")) == []  # the checkpoint's run folder is untouched
    assert len(glob.glob(str(other / "tiny_*" / "mat_results" / "*_sample_abu.mat"))) == 2
    assert not glob.glob(str(other / "tiny_*" / LOCK_NAME)) and not os.path.exists(os.path.join(run, LOCK_NAME))


def test_nan_samples_are_never_written(tmp_path):
    paths = {"mat_results": str(tmp_path / "m"), "results": str(tmp_path / "r")}
    os.makedirs(paths["mat_results"])
    samples = torch.zeros(2, 3, 4, 4)
    samples[1, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="the sampler produced NaN/Inf values"):
        write_samples(samples, paths, step=1, start=1, project=True, record={})
    assert os.listdir(paths["mat_results"]) == []


def test_stale_temp_file_helper_keeps_live_writers(tmp_path):
    (tmp_path / f".a.mat.tmp{os.getpid()}").write_text("mine, in progress")
    (tmp_path / ".b.mat.tmp999999999").write_text("gone")
    (tmp_path / "c.mat.tmp1").write_text("not hidden: not ours")
    removed = remove_stale_temp_files(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".b.mat.tmp999999999"]
    assert sorted(os.listdir(tmp_path)) == sorted([f".a.mat.tmp{os.getpid()}", "c.mat.tmp1"])
