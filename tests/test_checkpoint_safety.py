"""No code runs from a checkpoint: every CLI that reads one refuses a crafted pickle in one line.

The payload is a real one: unpickled by the unsafe loader it creates a file (checked below with
`--trust-checkpoint-code`, the only way to load it). Checkpoints of this project written before the
safe loader (numpy RNG state as an array) still load and resume the same random streams.
"""
import builtins
import json
import os
import pickle
import random

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli import evaluate as Evaluate
from ubf.cli import synthesis as Synthesis
from ubf.cli.unmixing import main as unmixing_main
from ubf.core import checkpoint
from ubf.core.checkpoint import load_checkpoint, save_checkpoint, trust_checkpoint_code
from ubf.core.errors import UserError
from ubf.pipeline.export_reference import main as export_main


class Payload:
    """Unpickling this calls open(marker, "w"): a file appears where nothing should be written."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def crafted(tmp_path, name="evil.pth", raw=False):
    """A checkpoint-looking file that runs code when loaded; returns (path, marker)."""
    marker = str(tmp_path / "PWNED")
    path = tmp_path / name
    state = {"stage": "unmixing", "model": {"decoder.weight": torch.ones(4, 3, 1, 1)}, "x": Payload(marker)}
    if raw:
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)
    return str(path), marker


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny valid inputs for every CLI, so that the checkpoint is the only thing wrong."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    (root / "hsi").mkdir()
    for i in range(2):
        sio.savemat(root / "hsi" / f"c{i}.mat", {"Y": rng.random((16, 16, 8)).astype(np.float32)})
    (root / "rgb").mkdir()
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / "rgb" / "a.png")
    (root / "abu").mkdir()
    sio.savemat(root / "abu" / "1_1_sample_abu.mat", {"Abu": np.full((8, 8, 3), 1 / 3, np.float32)})
    unmixing = {"data": {"train": str(root / "hsi"), "val": None, "test": None, "bands": [5, 3, 1]},
                "model": {"widths": [4, 4], "n_blocks": 1}, "train": {"epochs": 1, "batch_size": 2}}
    (root / "unmixing.json").write_text(json.dumps(unmixing))
    ddpm = {"name": "tiny", "datasets": {"train": {"dataroot": str(root / "abu"), "batch_size": 1,
                                                   "num_workers": 0}},
            "model": {"unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                               "channel_multiplier": [1, 2], "attn_res": [], "res_blocks": 1},
                      "diffusion": {"image_size": 8, "channels": 3}}}
    (root / "ddpm.json").write_text(json.dumps(ddpm))
    return root


def cli_calls(inputs, evil, out):
    """(name, callable) for every CLI that takes a checkpoint, each pointed at `evil`."""
    return [
        ("Unmixing.py infer", lambda: unmixing_main(["infer", "--ckpt", evil, "--rgb", str(inputs / "rgb"),
                                                     "--out", f"{out}/abu", "--device", "cpu"])),
        ("Unmixing.py train --resume", lambda: unmixing_main(["train", "-c", str(inputs / "unmixing.json"), "--resume",
                                                              evil, "--out", f"{out}/run", "--device", "cpu"])),
        ("Diffusion.py -p train --resume", lambda: Diffusion.main(["-p", "train", "-c", str(inputs / "ddpm.json"),
                                                                   "--resume", evil, "--root", f"{out}/ddpm",
                                                                   "--device", "cpu"])),
        ("Diffusion.py -p val --resume", lambda: Diffusion.main(["-p", "val", "-c", str(inputs / "ddpm.json"),
                                                                 "--resume", evil, "--root", f"{out}/ddpm",
                                                                 "--device", "cpu"])),
        ("Synthesis.py", lambda: Synthesis.main(["--abundances", str(inputs / "abu"), "--ckpt", evil,
                                                 "--out", f"{out}/syn", "--device", "cpu"])),
        ("Evaluate.py reconstruction", lambda: Evaluate.main(["reconstruction", "--ckpt", evil, "--hsi",
                                                               str(inputs / "hsi"), "--out", f"{out}/rec",
                                                               "--device", "cpu"])),
        ("export unmixing", lambda: export_main(["unmixing", evil, f"{out}/ref.pth"])),
        ("export diffusion", lambda: export_main(["diffusion", evil, f"{out}/ref_I1_E1"])),
    ]


@pytest.mark.parametrize("raw", [False, True], ids=["torch.save", "plain pickle"])
def test_every_cli_refuses_a_checkpoint_that_runs_code(tmp_path, inputs, capsys, raw):
    evil, marker = crafted(tmp_path, raw=raw)
    for name, call in cli_calls(inputs, evil, str(tmp_path / "out")):
        with pytest.raises(SystemExit) as exit_info:
            call()
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2, name
        assert len(errors) == 1 and "refused: loading it would run code" in errors[0] and "--trust-checkpoint-code" \
            in errors[0], (name, err)
        assert "Traceback" not in err, name
        assert not os.path.exists(marker), f"{name} ran the payload"
    assert not os.path.exists(tmp_path / "out" / "ref.pth") and not os.path.exists(tmp_path / "out" / "abu")


def test_a_reference_named_weights_file_is_refused_too(tmp_path, inputs, capsys):
    """`--resume X_gen.pth` takes the reference's path (its own loader) and must refuse as well."""
    evil, marker = crafted(tmp_path, name="I5_E1_gen.pth")
    (tmp_path / "I5_E1_opt.pth").write_bytes((tmp_path / "I5_E1_gen.pth").read_bytes())
    for phase in ("train", "val"):
        with pytest.raises(SystemExit):
            Diffusion.main(["-p", phase, "-c", str(inputs / "ddpm.json"), "--resume", evil, "--root",
                            str(tmp_path / "ddpm"), "--device", "cpu"])
        assert "refused: loading it would run code" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_the_payload_is_real_and_runs_only_with_the_flag(tmp_path, inputs, capsys):
    evil, marker = crafted(tmp_path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(evil)
    assert not os.path.exists(marker)
    with trust_checkpoint_code(True):  # the user takes the risk: the file is loaded and its code runs
        assert load_checkpoint(evil)["stage"] == "unmixing"
    assert os.path.exists(marker)
    os.remove(marker)
    with pytest.raises(UserError, match="refused"):  # the trust ends with its block
        load_checkpoint(evil)
    assert not os.path.exists(marker)
    # the CLI flag reaches the loader: with it, the refusal is gone and the code runs
    with pytest.raises(SystemExit):
        Evaluate.main(["reconstruction", "--ckpt", evil, "--hsi", str(inputs / "hsi"), "--out",
                       str(tmp_path / "rec"), "--device", "cpu", "--trust-checkpoint-code"])
    assert "refused" not in capsys.readouterr().err and os.path.exists(marker)


def test_checkpoints_hold_only_what_the_safe_loader_reads(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint({"stage": "unmixing", "model": {}, "wavelengths": np.linspace(400, 1000, 4),
                     "best": {"PSNR": np.float32(31.5)}, "rng": checkpoint.capture_rng_state()}, path)
    state = torch.load(path, weights_only=True)  # the strict loader itself, no allowlist
    assert torch.equal(state["wavelengths"], torch.tensor([400.0, 600.0, 800.0, 1000.0], dtype=torch.float64))
    assert state["best"]["PSNR"] == 31.5 and isinstance(state["best"]["PSNR"], float)
    with pytest.raises(TypeError, match="safe loader cannot read: x"):
        save_checkpoint({"stage": "unmixing", "model": {}, "x": object()}, path)


def draws():
    return random.random(), float(np.random.random()), float(np.random.standard_normal()), float(torch.rand(1))


def test_rng_states_round_trip_exactly_through_a_file(tmp_path):
    checkpoint.seed_everything(7)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    path = str(tmp_path / "rng.pth")
    save_checkpoint({"stage": "unmixing", "model": {}, "rng": checkpoint.capture_rng_state()}, path)
    expected = draws()
    checkpoint.seed_everything(99)
    checkpoint.restore_rng_state(load_checkpoint(path)["rng"])
    assert draws() == expected


def test_a_checkpoint_written_before_the_safe_loader_still_loads_and_resumes(tmp_path):
    """Older files hold random.getstate() (tuples) and np.random.get_state() (an array) as they are."""
    checkpoint.seed_everything(3)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path / "old.pth"
    torch.save({"stage": "unmixing", "model": {"w": torch.ones(2)}, "rng": old,
                "wavelengths": np.arange(3.0)}, path)
    expected = draws()
    state = load_checkpoint(str(path), "unmixing")
    checkpoint.restore_rng_state(state["rng"])
    assert draws() == expected
    assert np.array_equal(state["wavelengths"], np.arange(3.0))
