"""Experiment tracking: TensorBoard event files when installed, W&B when asked for, silence otherwise."""
import glob
import json
import logging
import os
import sys
import types

import numpy as np
import pytest
import torch

from ubf.core.logs import setup_logging
from ubf.core.tracking import start_tracking
from ubf.data.matio import write_mat


def read_events(log_dir):
    """{tag: [(step, value)]} and image tags of the event files in `log_dir`, read by tensorboard itself."""
    accumulator_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = accumulator_module.EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    return scalars, tags["images"]


def test_tensorboard_scalars_and_images_read_back(tmp_path, caplog):
    pytest.importorskip("torch.utils.tensorboard")
    setup_logging()
    caplog.set_level(logging.INFO, logger="hsisyn")
    logging.getLogger("hsisyn").propagate = True
    with start_tracking(str(tmp_path / "tb")) as tracker:
        tracker.log_scalars({"loss": 0.5, "lr": 2e-4, "name": "run", "bad": float("nan"), "none": None}, 1)
        tracker.log_scalars({"loss": 0.25}, 2)
        tracker.log_image("preview", np.full((4, 6, 3), 200, dtype=np.uint8), 2)
    logging.getLogger("hsisyn").propagate = False
    assert "TensorBoard in" in caplog.text and "W&B off (not asked for)" in caplog.text
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    scalars, images = read_events(str(tmp_path / "tb"))
    assert set(scalars) == {"loss", "lr"}  # the string, NaN and None were left out
    assert scalars["loss"] == [(1, 0.5), (2, 0.25)]
    assert scalars["lr"][0][1] == pytest.approx(2e-4)
    assert images == ["preview"]


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    setup_logging()
    caplog.set_level(logging.INFO, logger="hsisyn")
    monkeypatch.setattr(logging.getLogger("hsisyn"), "propagate", True)
    tracker = start_tracking(str(tmp_path / "tb"), wandb=False)
    tracker.log_scalars({"loss": 1.0}, 1)
    tracker.log_image("preview", np.zeros((2, 2, 3), np.uint8), 1)
    tracker.close()
    assert tracker.active == []
    assert os.listdir(tmp_path / "tb") == []
    assert "TensorBoard off (pip install tensorboard" in caplog.text


def test_wandb_when_installed_and_asked_for(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", dict(values), step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun(), Image=lambda a: ("img", a.shape))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    tracker = start_tracking(str(tmp_path / "tb"), {"lr": 1}, "demo", wandb=True, project="p")
    tracker.log_scalars({"loss": 0.5, "note": "x"}, 3, prefix="train/")
    tracker.log_image("preview", np.zeros((2, 5, 3), np.uint8), 3)
    tracker.close()
    assert calls[0] == ("init", {"project": "p", "name": "demo", "dir": str(tmp_path / "tb"), "config": {"lr": 1}})
    assert calls[1] == ("log", {"train/loss": 0.5}, 3)
    assert calls[2] == ("log", {"preview": ("img", (2, 5, 3))}, 3)
    assert calls[3] == ("finish",)
    # not asked for: wandb is never started
    calls.clear()
    start_tracking(str(tmp_path / "tb2"), wandb=False).close()
    assert calls == []


def test_diffusion_training_logs_the_losses_it_writes(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from ubf.pipeline.diffusion_config import load_diffusion_config
    from ubf.pipeline.diffusion_train import train_diffusion
    from test_diffusion_cli import TINY, write_json
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mat(str(tmp_path / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(10, 12)).astype(np.float32)})
    cfg = load_diffusion_config(write_json(tmp_path / "tiny.json", TINY), {"datasets.train.dataroot": str(tmp_path / "abu")})
    checkpoint = train_diffusion(cfg, str(tmp_path / "runs"), torch.device("cpu"), seed=0, progress=False)
    run_dir = os.path.dirname(os.path.dirname(checkpoint))
    records = [json.loads(line) for line in open(os.path.join(run_dir, "logs", "train_loss.jsonl"))]
    scalars, images = read_events(os.path.join(run_dir, "tb_logger"))
    assert [step for step, _ in scalars["train/loss"]] == [r["step"] for r in records] == [2, 4, 5]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([r["lr"] for r in records])
    assert images == ["preview"]


def test_unmixing_training_logs_its_epoch_records(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from ubf.pipeline.unmixing_train import train_unmixing
    from test_unmixing_train import crop_folders, tiny_config
    cfg = tiny_config(crop_folders(tmp_path), epochs=2)
    train_unmixing(cfg, str(tmp_path / "run"), torch.device("cpu"))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    scalars, _ = read_events(str(tmp_path / "run" / "tb_logger"))
    for key in ("train_loss", "lr", "val_PSNR", "val_SAM"):
        assert scalars[f"epoch/{key}"] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in records], key
