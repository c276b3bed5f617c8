"""Bad inputs and interruptions of stage 1 end in one clear line and lose nothing.

Cases already covered elsewhere are listed in docs/hardening.md with their tests; this file holds
the rest: Ctrl-C / SIGTERM during training and an exact resume, NaN loss, a kill during a checkpoint
write, unwritable run folders, and bad training data reached through the CLI.
"""
import json
import os
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

import pipeline.unmixing_train as unmixing_train
from Unmixing import main as unmixing_main
from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import UserError
from data.prepare import main as prepare_main
from models.unmixing import UnmixingAutoencoder
from pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config
from pipeline.unmixing_train import train_unmixing

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
    signal_at_call(monkeypatch, 5, [sig])  # epoch 2, step 2: one step of epoch 2 is done
    with pytest.raises(KeyboardInterrupt):
        train_unmixing(tiny_config(crops), split, CPU)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are given back
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
    monkeypatch.setattr(unmixing_train.StopRequest, "REPEAT_GRACE_S", 0.0)
    signal_at_call(monkeypatch, 4, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        train_unmixing(tiny_config(crops), run, CPU)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(run, "checkpoint", "interrupted.pth"))
    assert load_checkpoint(os.path.join(run, "checkpoint", "latest.pth"))["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
    from core import checkpoint
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
    """Arguments of `python -m data.prepare` for one bad input."""
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
