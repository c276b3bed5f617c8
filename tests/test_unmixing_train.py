"""Stage-1 training on the real Chikusei crops (skipped without ../shared/data)."""
import json
import os

import pytest
import torch

from ubf.cli.unmixing import main as unmixing_main  # noqa: F401  (the CLI must import cleanly)
from conftest import shared_path
from ubf.core.checkpoint import load_checkpoint
from ubf.core.errors import UserError
from ubf.pipeline.unmixing_config import load_unmixing_config
from ubf.pipeline.unmixing_train import evaluate, make_dataset, step_lr, train_unmixing
from ubf.models.unmixing import build_unmixing_model

TINY_MODEL = {"widths": [8, 8], "n_blocks": 1}


def crop_folders(tmp_path):
    """train/ holds crop 282, test/ holds crop 118 (symlinks to the shared real data)."""
    folders = {}
    for role, block in (("train", "block_282.mat"), ("test", "block_118.mat")):
        folder = tmp_path / role
        folder.mkdir()
        os.symlink(shared_path("paper", "chikusei", block), folder / block)
        folders[role] = str(folder)
    return folders


def tiny_config(folders, **train):
    cfg = load_unmixing_config(None, {"data.train": folders["train"], "data.val": folders["test"],
                                      "data.test": folders["test"], "data.crop_size": 32,
                                      "data.samples_per_epoch": 8, "data.augment": True,
                                      "train.batch_size": 4, "train.lr": 2e-3, "train.seed": 1})
    cfg["model"].update(TINY_MODEL)
    cfg["model"]["decoder_init"] = "distant_pixels"
    cfg["train"].update(train)
    return cfg


def test_reference_lr_schedule():
    assert [step_lr(1.0, e, 30, 0.1) for e in (0, 28, 29, 39)] == pytest.approx([1, 1, 0.1, 0.1])


def test_short_training_lowers_loss_and_beats_untrained(tmp_path):
    folders = crop_folders(tmp_path)
    cfg = tiny_config(folders, epochs=6)
    device = torch.device("cpu")
    torch.manual_seed(1)
    untrained = build_unmixing_model(cfg["model"], 3, 59)
    before = evaluate(untrained, make_dataset(cfg, "test", training=False), device)
    metrics = train_unmixing(cfg, str(tmp_path / "run"), device)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert metrics["PSNR"] > before["PSNR"] + 3 and metrics["SAM"] < before["SAM"]
    saved = json.load(open(tmp_path / "run" / "checkpoint" / "test_metrics.json"))
    assert saved["PSNR"] == pytest.approx(metrics["PSNR"])
    state = load_checkpoint(str(tmp_path / "run" / "checkpoint" / "best.pth"), "unmixing")
    assert state["band_indices"] == [53, 33, 14] and state["out_bands"] == 59
    assert json.load(open(tmp_path / "run" / "config.json"))["model"]["widths"] == [8, 8]


def test_resume_continues_exactly(tmp_path):
    folders = crop_folders(tmp_path)
    device = torch.device("cpu")
    train_unmixing(tiny_config(folders, epochs=2), str(tmp_path / "straight"), device)
    train_unmixing(tiny_config(folders, epochs=1), str(tmp_path / "split"), device)
    train_unmixing(tiny_config(folders, epochs=2), str(tmp_path / "split"), device,
                   resume=str(tmp_path / "split" / "checkpoint" / "latest.pth"))
    straight = load_checkpoint(str(tmp_path / "straight" / "checkpoint" / "latest.pth"))
    split = load_checkpoint(str(tmp_path / "split" / "checkpoint" / "latest.pth"))
    assert straight["epoch"] == split["epoch"] == 1
    for name, value in straight["model"].items():
        assert torch.equal(value, split["model"][name]), name


def test_missing_data_explains_how_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        unmixing_main(["train", "--train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "nowhere: no HSI crops" in message and "ubf.data.prepare" in message and "demo.py" in message


def test_band_count_mismatch_on_resume(tmp_path):
    folders = crop_folders(tmp_path)
    cfg = tiny_config(folders, epochs=1)
    train_unmixing(cfg, str(tmp_path / "run"), torch.device("cpu"))
    state = load_checkpoint(str(tmp_path / "run" / "checkpoint" / "latest.pth"))
    state["out_bands"] = 31
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(UserError, match="checkpoint has 31 bands, the training data .* has 59"):
        train_unmixing(tiny_config(folders, epochs=2), str(tmp_path / "run2"), torch.device("cpu"),
                       resume=str(tmp_path / "other.pth"))


def test_no_val_keeps_the_final_epoch_as_best(tmp_path, capsys):
    """--no-val (the study: the scene's only held-out crop is the test crop) picks no epoch: best.pth is the
    last finished epoch, no validation is scored, and the saved config says there was no val split."""
    folders = crop_folders(tmp_path)
    run = tmp_path / "run"
    unmixing_main(["train", "--train", folders["train"], "--no-val", "--test", folders["test"], "--out", str(run),
                   "--epochs", "3", "--no-progress", "--set", "data.crop_size=32", "data.samples_per_epoch=8",
                   "train.batch_size=4", "model.widths=[8,8]", "model.n_blocks=1"])
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3] and not any("val_PSNR" in r for r in records)
    best = load_checkpoint(str(run / "checkpoint" / "best.pth"), "unmixing")
    latest = load_checkpoint(str(run / "checkpoint" / "latest.pth"), "unmixing")
    assert best["epoch"] == latest["epoch"] == 2  # zero-based: the third epoch
    assert all(torch.equal(best["model"][k], latest["model"][k]) for k in latest["model"])
    assert json.load(open(run / "config.json"))["data"]["val"] is None
    with pytest.raises(SystemExit) as exit_info:
        unmixing_main(["train", "--train", folders["train"], "--no-val", "--val", folders["test"],
                       "--out", str(tmp_path / "other")])
    assert exit_info.value.code == 2 and "--no-val and --val" in capsys.readouterr().err
