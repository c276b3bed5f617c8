"""Bad inputs and interruptions of stages 1 and 2 end in one clear line and lose nothing.

Cases already covered elsewhere are listed in docs/hardening.md with their tests; this file holds
the rest: Ctrl-C / SIGTERM during training and an exact resume, NaN loss, a kill during a checkpoint
write, unwritable run folders, and bad training data reached through the CLI.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli import synthesis as Synthesis
import ubf.pipeline.diffusion_train as diffusion_train
import ubf.pipeline.unmixing_train as unmixing_train
from ubf.cli.unmixing import main as unmixing_main
from ubf.core.checkpoint import load_checkpoint, save_checkpoint
from ubf.core.errors import UserError
from ubf.data.matio import write_mat
from ubf.data.prepare import main as prepare_main
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.synthesis import read_sampled_abundances
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config
from ubf.pipeline.unmixing_train import train_unmixing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
TINY = {"data": {"crop_size": 16, "samples_per_epoch": 12, "augment": True, "bands": [5, 3, 1], "val": None,
                 "test": None},
        "model": {"widths": [4, 4], "n_blocks": 1, "decoder_init": "distant_pixels"},
        "train": {"batch_size": 4, "lr": 5e-3, "seed": 11, "epochs": 2}}  # 3 steps per epoch


def cube(seed=0, size=24, bands=8):
    return np.random.default_rng(seed).random((size, size, bands)).astype(np.float32)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    for index in range(2):
        sio.savemat(folder / f"crop_{index}.mat", {"Y": cube(index)})
    return str(folder)


def tiny_config(train_dir, **train):
    cfg = load_unmixing_config(None, {"data.train": train_dir})
    for section, values in TINY.items():
        cfg[section].update(values)
    cfg["train"].update(train)
    return cfg


def handlers_now() -> dict:
    """The SIGINT and SIGTERM handlers in force: the run must give back whatever was there before it,
    which is not `default_int_handler` when the suite was started in the background or under nohup
    (SIGINT ignored from the start)."""
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def signal_at_call(monkeypatch, call, signals):
    """Make the loss send `signals` to this process while it computes step number `call` (1-based, over epochs)."""
    calls = {"n": 0}
    real_loss = unmixing_train.unmixing_loss

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            for sig in signals:
                signal.raise_signal(sig)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(unmixing_train, "unmixing_loss", loss)


def weights(run):
    return load_checkpoint(os.path.join(run, "checkpoint", "latest.pth"), "unmixing")["model"]


@pytest.fixture(scope="module")
def straight_run(crops, tmp_path_factory):
    """Two uninterrupted epochs, the reference for the resumed runs."""
    run = str(tmp_path_factory.mktemp("straight") / "run")
    train_unmixing(tiny_config(crops), run, CPU)
    return run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_writes_interrupted_and_resume_is_exact(tmp_path, crops, straight_run, monkeypatch,
                                                                 capsys, sig):
    split = str(tmp_path / "split")
    before = handlers_now()
    signal_at_call(monkeypatch, 5, [sig])  # epoch 2, step 2: one step of epoch 2 is done
    with pytest.raises(KeyboardInterrupt):
        train_unmixing(tiny_config(crops), split, CPU)
    monkeypatch.undo()
    assert handlers_now() == before  # handlers are given back
    interrupted_path = os.path.join(split, "checkpoint", "interrupted.pth")
    interrupted = load_checkpoint(interrupted_path, "unmixing")
    assert interrupted["epoch"] == 0 and interrupted["partial"]["epoch"] == 1 and interrupted["partial"]["steps"] == 1
    assert load_checkpoint(os.path.join(split, "checkpoint", "latest.pth"))["epoch"] == 0  # last finished epoch
    assert f"--resume {interrupted_path}" in open(os.path.join(split, "train.log")).read()
    # starting over in the same folder is refused and names the newest checkpoint
    with pytest.raises(SystemExit):
        unmixing_main(["train", "--out", split])
    assert "interrupted.pth: a run exists" in capsys.readouterr().err

    train_unmixing(tiny_config(crops), split, CPU, resume=interrupted_path)
    for name, value in weights(straight_run).items():
        assert torch.equal(value, weights(split)[name]), name
    assert not os.path.exists(interrupted_path)  # superseded by the finished epoch
    records = [json.loads(line) for line in open(os.path.join(split, "metrics.jsonl"))]
    expected = [json.loads(line) for line in open(os.path.join(straight_run, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] == pytest.approx(expected[1]["train_loss"], abs=1e-7)


def test_second_ctrl_c_aborts_at_once_and_keeps_latest(tmp_path, crops, monkeypatch):
    run = str(tmp_path / "run")
    before = handlers_now()
    monkeypatch.setattr(unmixing_train.StopRequest, "REPEAT_GRACE_S", 0.0)
    signal_at_call(monkeypatch, 4, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        train_unmixing(tiny_config(crops), run, CPU)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(run, "checkpoint", "interrupted.pth"))
    assert load_checkpoint(os.path.join(run, "checkpoint", "latest.pth"))["epoch"] == 0
    assert handlers_now() == before


def test_ctrl_c_passed_on_by_torchrun_counts_once(tmp_path, crops, monkeypatch):
    """torchrun forwards the terminal's SIGINT to its workers, which then get it twice within milliseconds."""
    run = str(tmp_path / "run")
    signal_at_call(monkeypatch, 4, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        train_unmixing(tiny_config(crops), run, CPU)
    monkeypatch.undo()
    state = load_checkpoint(os.path.join(run, "checkpoint", "interrupted.pth"), "unmixing")
    assert state["partial"] == {**state["partial"], "epoch": 1, "steps": 0}


def test_nan_loss_stops_before_touching_the_weights(tmp_path, crops, monkeypatch):
    run = str(tmp_path / "run")
    calls = {"n": 0}
    real_loss = unmixing_train.unmixing_loss

    def loss(*args, **kwargs):
        calls["n"] += 1
        total, terms = real_loss(*args, **kwargs)
        return (total * float("nan"), terms) if calls["n"] == 5 else (total, terms)

    monkeypatch.setattr(unmixing_train, "unmixing_loss", loss)
    latest = os.path.join(run, "checkpoint", "latest.pth")
    with pytest.raises(UserError, match=f"loss became nan at epoch 2, step 2; the last good checkpoint is {latest}"):
        train_unmixing(tiny_config(crops), run, CPU)
    state = load_checkpoint(latest, "unmixing")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(open(os.path.join(run, "metrics.jsonl")).read().splitlines()) == 1


def test_constant_crop_trains_without_nan(tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    sio.savemat(folder / "a_constant.mat", {"Y": np.full((24, 24, 8), 0.3, np.float32)})  # min == max
    sio.savemat(folder / "b_normal.mat", {"Y": cube(3)})
    train_unmixing(tiny_config(str(folder), epochs=1), str(tmp_path / "run"), CPU)
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").read())
    assert np.isfinite(record["train_loss"])


KILL_DURING_WRITE = textwrap.dedent("""
    import sys, time, torch
    from ubf.core import checkpoint
    path = sys.argv[1]
    checkpoint.save_checkpoint({"stage": "unmixing", "model": {"w": torch.ones(3)}, "epoch": 1}, path)
    def slow_save(obj, f):
        f.write(b"PK partial checkpoint")
        f.flush()
        time.sleep(120)
    checkpoint.torch.save = slow_save
    checkpoint.save_checkpoint({"stage": "unmixing", "model": {"w": torch.zeros(3)}, "epoch": 2}, path)
""")


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "latest.pth"
    child = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(path)], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 120
    while not [f for f in os.listdir(tmp_path) if ".tmp" in f] and time.time() < deadline:
        assert child.poll() is None, "the child ended before writing"
        time.sleep(0.1)
    time.sleep(0.2)
    child.kill()  # SIGKILL: no handler, no clean-up
    child.wait()
    state = load_checkpoint(str(path), "unmixing")
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    # the partial temp file stays behind, under a hidden name that never shadows a checkpoint
    assert [f for f in os.listdir(tmp_path) if f != "latest.pth"][0].startswith(".latest.pth.tmp")


def test_run_folder_that_cannot_be_created(tmp_path, crops):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError, match="a_file/run: the run folder is not writable"):
        train_unmixing(tiny_config(crops), str(tmp_path / "a_file" / "run"), CPU)


def test_read_only_run_folder(tmp_path, crops):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        with pytest.raises(UserError, match="run: the run folder is not writable"):
            train_unmixing(tiny_config(crops), str(run), CPU)
    finally:
        run.chmod(0o700)


def write_config(path, train_dir, extra=None):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["train"] = train_dir
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(json.dumps(cfg))
    return str(path)


def bad_folder(tmp_path, case):
    """A training folder with one good crop and one bad file (or nothing at all)."""
    folder = tmp_path / "bad"
    folder.mkdir()
    if case == "empty":
        return str(folder)
    sio.savemat(folder / "a_good.mat", {"Y": cube(0)})
    if case == "misnamed key":
        sio.savemat(folder / "b_bad.mat", {"cube_typo": cube(1)})
    elif case == "inf":
        bad = cube(1)
        bad[3, 4, 5] = np.inf
        sio.savemat(folder / "b_bad.mat", {"Y": bad})
    elif case == "truncated":
        sio.savemat(folder / "b_bad.mat", {"Y": cube(1)})
        raw = (folder / "b_bad.mat").read_bytes()
        (folder / "b_bad.mat").write_bytes(raw[:len(raw) // 3])
    elif case == "band count":
        sio.savemat(folder / "b_bad.mat", {"Y": cube(1, bands=10)})
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("empty", "bad: no HSI crops (.mat) for 'train'"),
    ("misnamed key", "b_bad.mat: no key among Y, HSI"),
    ("inf", "b_bad.mat: variable 'Y' contains 1 NaN/Inf values"),
    ("truncated", "b_bad.mat: not a readable .mat file"),
    ("band count", "b_bad.mat: 10 bands, but"),
])
def test_bad_training_data_is_one_line(tmp_path, capsys, case, message):
    config = write_config(tmp_path / "c.json", bad_folder(tmp_path, case))
    with pytest.raises(SystemExit) as exit_info:
        unmixing_main(["train", "-c", config, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run" / "checkpoint")


def test_key_flag_that_names_no_variable(tmp_path, capsys, crops):
    config = write_config(tmp_path / "c.json", crops)
    with pytest.raises(SystemExit):
        unmixing_main(["train", "-c", config, "--key", "cube", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert "crop_0.mat: no key 'cube' (found: Y)" in capsys.readouterr().err


def test_config_typo_suggests_the_key(tmp_path, capsys, crops):
    config = write_config(tmp_path / "c.json", crops, {"train": {"epoch": 3}})
    with pytest.raises(SystemExit) as exit_info:
        unmixing_main(["train", "-c", config, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "c.json: unknown key 'train.epoch' (did you mean 'train.epochs'?)" in capsys.readouterr().err


def test_resume_from_a_diffusion_checkpoint(tmp_path, crops):
    save_checkpoint({"stage": "diffusion", "model": {}, "step": 10}, str(tmp_path / "ddpm.pth"))
    with pytest.raises(UserError, match="ddpm.pth: is a 'diffusion' checkpoint, expected a 'unmixing' checkpoint"):
        train_unmixing(tiny_config(crops), str(tmp_path / "run"), CPU, resume=str(tmp_path / "ddpm.pth"))


def test_nan_in_a_float_image_is_reported_and_the_rest_inferred(tmp_path, capsys):
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [4, 4], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=8, widths=(4, 4), n_blocks=1)
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": 8,
                     "in_channels": 3, "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0},
                    str(tmp_path / "u.pth"))
    images = tmp_path / "rgb"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8) + 9).save(images / "good.png")
    bad = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    bad[2, 3] = np.nan
    Image.fromarray(bad, mode="F").save(images / "nan.tif")
    code = unmixing_main(["infer", "--ckpt", str(tmp_path / "u.pth"), "--rgb", str(images), "--out",
                          str(tmp_path / "abu"), "--device", "cpu"])
    assert code == 1
    assert "nan.tif: image contains NaN/Inf values" in capsys.readouterr().err
    assert sorted(f for f in os.listdir(tmp_path / "abu") if f.endswith(".mat")) == ["good.mat"]


def prepare_inputs(tmp_path, case):
    """Arguments of `python -m ubf.data.prepare` for one bad input."""
    if case == "corrupt image":
        folder = tmp_path / "AID" / "a"
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(folder / "ok.jpg")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        return ["rgb", "--src", str(tmp_path / "AID")]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return ["rgb", "--src", str(tmp_path / "empty")]
    if case == "missing source":
        return ["chikusei", "--src", str(tmp_path / "nothere.mat")]
    sio.savemat(tmp_path / "c.mat", {"chikusei": np.random.default_rng(0).random((16, 16, 128))})
    raw = (tmp_path / "c.mat").read_bytes()
    (tmp_path / "c.mat").write_bytes(raw[:len(raw) // 2])
    return ["chikusei", "--src", str(tmp_path / "c.mat")]


@pytest.mark.parametrize("case, message", [
    ("corrupt image", "broken.jpg: unreadable image"),
    ("empty folder", "empty: no jpg/jpeg/png/tif/tiff/bmp images found"),
    ("missing source", "nothere.mat: no such file or folder"),
    ("truncated", "c.mat: not a readable .mat file"),
])
def test_prepare_bad_inputs_are_one_line(tmp_path, capsys, case, message):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(prepare_inputs(tmp_path, case) + ["--out", str(tmp_path / "out"), "--size", "8"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


# stage 2 (Diffusion.py) and stage 3 ----------------------------------------------------------------

DDPM = {
    "name": "tiny",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0, "flip": "both"}, "val": {"data_len": 2}},
    "model": {"unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                       "channel_multiplier": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.1},
              "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3,
                                          "linear_end": 0.2},
                                "val": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3,
                                        "linear_end": 0.2}},
              "diffusion": {"image_size": 8, "channels": 3}},
    "train": {"n_iter": 5, "val_freq": 100, "save_checkpoint_freq": 100, "print_freq": 1, "preview_samples": 0,
              "ema_scheduler": {"step_start_ema": 2, "update_ema_every": 1, "ema_decay": 0.9}},
    "sample": {"sampler": "ddim", "steps": 3, "batch_size": 2},
}


@pytest.fixture(scope="module")
def ddpm_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mat(str(folder / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(10, 12)).astype(np.float32)})
    cfg = json.loads(json.dumps(DDPM))
    cfg["datasets"]["train"]["dataroot"] = str(folder / "abu")
    (folder / "ddpm.json").write_text(json.dumps(cfg))
    return str(folder / "ddpm.json")


def ddpm_cfg(config, **train):
    return load_diffusion_config(config, {f"train.{k}": v for k, v in train.items()})


@pytest.fixture(scope="module")
def ddpm_straight(ddpm_config, tmp_path_factory):
    """Five uninterrupted steps, the reference for the resumed runs."""
    out = tmp_path_factory.mktemp("ddpm_straight")
    return load_checkpoint(diffusion_train.train_diffusion(ddpm_cfg(ddpm_config), str(out), CPU, seed=3,
                                                           run_dir=str(out / "run"), progress=False), "diffusion")


def patch_step_loss(monkeypatch, call, change):
    """Let `change(loss, model)` replace the loss of training step number `call` (1-based)."""
    calls = {"n": 0}
    real = diffusion_train.step_loss

    def step_loss(diffusion, model, *args):
        calls["n"] += 1
        loss = real(diffusion, model, *args)
        return change(loss, model) if calls["n"] == call else loss

    monkeypatch.setattr(diffusion_train, "step_loss", step_loss)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_diffusion_signal_finishes_the_step_and_the_logged_resume_is_exact(tmp_path, ddpm_config, ddpm_straight,
                                                                         monkeypatch, sig):
    run = tmp_path / "run"
    before = handlers_now()
    patch_step_loss(monkeypatch, 3, lambda loss, model: (signal.raise_signal(sig), loss)[1])
    with pytest.raises(KeyboardInterrupt):
        diffusion_train.train_diffusion(ddpm_cfg(ddpm_config), str(tmp_path), CPU, seed=3, run_dir=str(run),
                                        progress=False)
    monkeypatch.undo()
    assert handlers_now() == before  # handlers are given back
    (name,) = os.listdir(run / "checkpoint")
    assert name == "I3_E2.pth" and load_checkpoint(str(run / "checkpoint" / name), "diffusion")["step"] == 3
    log = (run / "logs" / "train.log").read_text()
    command = log.split("continue with `")[1].split("`")[0]
    assert command == f"python Diffusion.py -p train -c {run / 'config.json'} --resume {run / 'checkpoint' / name}"
    assert Diffusion.main(shlex.split(command)[2:] + ["--device", "cpu"]) == 0  # the logged command, as typed
    resumed = load_checkpoint(str(run / "checkpoint" / "I5_E3.pth"), "diffusion")
    for part in ("model", "ema"):
        for key, value in ddpm_straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    records = [json.loads(line) for line in open(run / "logs" / "train_loss.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]


def test_diffusion_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path, ddpm_config, monkeypatch):
    run = tmp_path / "run"
    patch_step_loss(monkeypatch, 4, lambda loss, model: loss * float("nan"))
    with pytest.raises(UserError, match=r"loss became nan at step 4; the weights were not updated and the last "
                                        r"good checkpoint is .*I2_E1\.pth"):
        diffusion_train.train_diffusion(ddpm_cfg(ddpm_config, save_checkpoint_freq=2), str(tmp_path), CPU, seed=3,
                                        run_dir=str(run), progress=False)
    assert os.listdir(run / "checkpoint") == ["I2_E1.pth"]
    state = load_checkpoint(str(run / "checkpoint" / "I2_E1.pth"), "diffusion")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_diffusion_nan_weights_are_never_saved(tmp_path, ddpm_config, monkeypatch):
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at 0) poisons the weights; the save refuses them."""
    run = tmp_path / "run"

    def nan_gradient(loss, model):
        weight = next(model.parameters())
        return loss + 0.0 * torch.sqrt((weight - weight.detach()).sum())

    patch_step_loss(monkeypatch, 2, nan_gradient)
    with pytest.raises(UserError, match="weights became NaN/Inf by step 2; not saving them. The last good "
                                        "checkpoint is none"):
        diffusion_train.train_diffusion(ddpm_cfg(ddpm_config, save_checkpoint_freq=2), str(tmp_path), CPU, seed=3,
                                        run_dir=str(run), progress=False)
    assert os.listdir(run / "checkpoint") == []


@pytest.mark.parametrize("phase", ["train", "val"])
def test_diffusion_with_an_unmixing_checkpoint_is_one_line(tmp_path, ddpm_config, capsys, phase):
    save_checkpoint({"stage": "unmixing", "model": {}, "epoch": 3}, str(tmp_path / "latest.pth"))
    with pytest.raises(SystemExit) as exit_info:
        Diffusion.main(["-p", phase, "-c", ddpm_config, "--resume", str(tmp_path / "latest.pth"), "--root",
                        str(tmp_path / "runs"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'latest.pth'}: is a 'unmixing' checkpoint, expected a 'diffusion' "
                      "checkpoint"] and "Traceback" not in err
    assert not os.path.exists(tmp_path / "runs")


def test_diffusion_speed_flags(tmp_path, ddpm_config, monkeypatch, capsys):
    """--compile goes through torch.compile (stubbed: compiling is slow on a CPU) and saves plain keys;
    --amp bf16 on a CPU without bf16 kernels trains in float32 with a note; a bad train.amp is a config error."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    # a CPU without bf16 kernels (this one may have them: then bf16 autocast is used, see test_speed_options)
    monkeypatch.setattr("ubf.pipeline.diffusion_train.cpu_supports_bf16", lambda: False)
    Diffusion.main(["-p", "train", "-c", ddpm_config, "--run-dir", str(tmp_path / "run"), "--n-iter", "1",
                    "--compile", "--amp", "bf16", "--device", "cpu"])
    assert len(compiled) == 1
    # step 1 is in epoch 1, as the reference names it (I<step>_E<epoch in progress>)
    state = load_checkpoint(str(tmp_path / "run" / "checkpoint" / "I1_E1.pth"), "diffusion")
    assert state["config"]["train"]["compile"] is True and state["config"]["train"]["amp"] == "bf16"
    assert "training in float32" in capsys.readouterr().err
    bad = json.loads(open(ddpm_config).read())
    bad["train"]["amp"] = "fp8"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="'train.amp' is 'fp8'"):
        load_diffusion_config(str(tmp_path / "bad.json"))


def test_nan_in_sampled_abundances_is_refused(tmp_path, capsys):
    sr = np.zeros((6, 6, 3), np.float32)
    sr[1, 2, 0] = np.nan
    write_mat(str(tmp_path / "abu" / "4_1_sample_abu.mat"), {"SR": sr})
    with pytest.raises(UserError, match="4_1_sample_abu.mat: 'SR' contains NaN/Inf values"):
        read_sampled_abundances(str(tmp_path / "abu" / "4_1_sample_abu.mat"))
    weight = torch.rand(8, 3, 1, 1)
    save_checkpoint({"stage": "unmixing", "model": {"decoder.weight": weight}, "config": {"data": {"train": None}},
                     "wavelengths": None, "out_bands": 8}, str(tmp_path / "best.pth"))
    with pytest.raises(SystemExit) as exit_info:
        Synthesis.main(["--abundances", str(tmp_path / "abu"), "--ckpt", str(tmp_path / "best.pth"), "--out",
                        str(tmp_path / "out"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "4_1_sample_abu.mat: 'SR' contains NaN/Inf values" in capsys.readouterr().err


def test_diffusion_run_folder_that_cannot_be_created(tmp_path, ddpm_config, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        Diffusion.main(["-p", "train", "-c", ddpm_config, "--root", str(tmp_path / "a_file" / "runs"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "a_file/runs: cannot create the output folder, a file is in the way" in capsys.readouterr().err


def test_nan_in_diffusion_training_data_is_one_line(tmp_path, ddpm_config, capsys):
    abu = np.full((10, 12, 3), 1 / 3, np.float32)
    abu[4, 5, 1] = np.inf
    write_mat(str(tmp_path / "abu" / "a0.mat"), {"Abu": abu})
    with pytest.raises(SystemExit) as exit_info:
        Diffusion.main(["-p", "train", "-c", ddpm_config, "--data", str(tmp_path / "abu"), "--run-dir",
                        str(tmp_path / "run"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "a0.mat: 'Abu' contains NaN/Inf values" in capsys.readouterr().err


def test_prepare_refuses_nan_in_the_source(tmp_path):
    from ubf.data.prepare import main as prepare_main
    cube = np.random.default_rng(0).random((32, 32, 59)).astype(np.float32)
    cube[3, 4, 5] = np.nan
    sio.savemat(tmp_path / "c.mat", {"chikusei": cube})
    with pytest.raises(UserError, match=r"c.mat: NaN/Inf values in rows 0-16, cols 0-16"):
        prepare_main.__wrapped__(["chikusei", "--src", str(tmp_path / "c.mat"), "--out", str(tmp_path / "out"),
                                  "--size", "16"])


def test_synthesis_refuses_a_diffusion_checkpoint(tmp_path, capsys):
    from ubf.cli.synthesis import main as synthesis_main
    from ubf.core.checkpoint import save_checkpoint
    save_checkpoint({"stage": "diffusion", "model": {}}, str(tmp_path / "d.pth"))
    (tmp_path / "abu").mkdir()
    sio.savemat(tmp_path / "abu" / "a.mat", {"Abu": np.full((4, 4, 5), 0.2, np.float32)})
    with pytest.raises(SystemExit):
        synthesis_main(["--abundances", str(tmp_path / "abu"), "--ckpt", str(tmp_path / "d.pth"),
                        "--out", str(tmp_path / "out")])
    assert "is a 'diffusion' checkpoint, expected a 'unmixing' checkpoint" in capsys.readouterr().err


def test_disk_full_while_writing_a_mat_keeps_the_old_file(tmp_path, monkeypatch):
    import ubf.data.matio as matio
    path = str(tmp_path / "a.mat")
    write_mat(path, {"Abu": np.ones((2, 2, 5), np.float32)})

    def full_disk(target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matio.sio, "savemat", full_disk)
    with pytest.raises(UserError, match=r"a.mat: could not write \(No space left on device\)"):
        write_mat(path, {"Abu": np.zeros((2, 2, 5), np.float32)})
    monkeypatch.undo()
    assert matio.read_mat(path)["Abu"].sum() == 20
    assert sorted(os.listdir(tmp_path)) == ["a.mat"]
