import os

import pytest
import torch

from ubf.core import checkpoint
from ubf.core.checkpoint import load_checkpoint, save_checkpoint
from ubf.core.errors import UserError


def test_roundtrip_and_stage_check(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint({"stage": "unmixing", "model": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert load_checkpoint(path, "unmixing")["epoch"] == 3
    with pytest.raises(UserError, match="is a 'unmixing' checkpoint, expected a 'diffusion'"):
        load_checkpoint(path, "diffusion")


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    save_checkpoint({"stage": "unmixing", "model": {}, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint({"stage": "unmixing", "model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temp file left behind


def test_truncated_and_missing_files_are_user_errors(tmp_path):
    path = tmp_path / "t.pth"
    save_checkpoint({"stage": "unmixing", "model": {"w": torch.ones(1000)}}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(path))
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "none.pth"))


def test_rng_state_restores_streams():
    checkpoint.seed_everything(5)
    state = checkpoint.capture_rng_state()
    first = torch.rand(3)
    checkpoint.restore_rng_state(state)
    assert torch.equal(first, torch.rand(3))
