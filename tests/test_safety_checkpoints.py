"""Safe checkpoints of the wrong structure (issue 24): every loader checks them once and ends in one line.

Each case is a file the safe loader reads (tensors, numbers, strings, lists, dicts) with one entry wrong;
before these checks 55 of the (case, command) pairs below ended in a traceback.
"""
import copy
import json
import os

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli import evaluate as Evaluate
from ubf.cli import synthesis as Synthesis
from ubf.cli.unmixing import main as unmixing_main
from ubf.core.checkpoint import capture_rng_state, save_checkpoint
from ubf.models.sr3_unet import unet_from_config
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.export_reference import main as export_main
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS


def put(state, dotted, value):
    *parents, key = dotted.split(".")
    node = state
    for part in parents:
        node = node[part]
    node[key] = value


def drop(state, dotted):
    *parents, key = dotted.split(".")
    node = state
    for part in parents:
        node = node[part]
    node.pop(key)


STAGE1 = {  # case -> (change, the message's needle)
    "a list": (lambda s: [1, 2, 3], "holds a list, not a dict"),
    "model is a list": (lambda s: put(s, "model", [1]), "'model' must be a dict of tensors, got list"),
    "a weight is a string": (lambda s: put(s, "model.decoder\x00weight", "x"), "is a str, not a tensor"),
    "decoder of another K": (lambda s: put(s, "model.decoder\x00weight", torch.zeros(6, 4, 1, 1)),
                             "'decoder.weight' is (6, 4, 1, 1), expected (6, 5, 1, 1)"),
    "decoder of 2 dimensions": (lambda s: put(s, "model.decoder\x00weight", torch.zeros(6, 5)), "'decoder.weight' is (6, 5)"),
    "a missing weight": (lambda s: drop(s, "model.encoder\x00stem\x00weight"), "no 'encoder.stem.weight'"),
    "config is a list": (lambda s: put(s, "config", [1]), "'config' must be a dict, got list"),
    "config.model is a string": (lambda s: put(s, "config.model", "x"), "key 'model' must be an object"),
    "K = 0": (lambda s: put(s, "config.model.num_endmembers", 0), "'model.num_endmembers' must be an integer >= 1"),
    "a negative width": (lambda s: put(s, "config.model.widths", [-8, 8]), "'model.widths'[0] must be an integer >= 1"),
    "an unknown encoder": (lambda s: put(s, "config.model.encoder", "zzz"), "'model.encoder' is 'zzz'"),
    "negative out_bands": (lambda s: put(s, "out_bands", -3), "'out_bands' must be at least 1, got -3"),
    "out_bands a string": (lambda s: put(s, "out_bands", "6"), "'out_bands' must be an integer"),
    "a band out of range": (lambda s: put(s, "band_indices", [50, 3, 1]), "band indices [50] out of range"),
    "two bands": (lambda s: put(s, "band_indices", [5, 3]), "names 2 bands for 3 input channels"),
    "bands a string": (lambda s: put(s, "band_indices", "5,3,1"), "'band_indices' must be a list"),
    "in_channels a string": (lambda s: put(s, "in_channels", "3"), "'in_channels' must be an integer"),
    "epoch a string": (lambda s: put(s, "epoch", "x"), "'epoch' must be an integer"),
    "wavelengths a string": (lambda s: put(s, "wavelengths", "abc"), "'wavelengths' must be 6 numbers"),
    "config.data a list": (lambda s: put(s, "config.data", [1]), "'data' must be"),
    "colour moments a string": (lambda s: put(s, "input_moments", "x"), "'input_moments' must be"),
}
STAGE2 = {
    "a list": (lambda s: [1], "holds a list, not a dict"),
    "negative image size": (lambda s: put(s, "config.model.diffusion.image_size", -8),
                            "'model.diffusion.image_size' must be an integer >= 1, got -8"),
    "no channels": (lambda s: put(s, "config.model.diffusion.channels", 0), "'model.diffusion.channels' must be"),
    "no config": (lambda s: drop(s, "config"), "an incomplete diffusion checkpoint"),
    "config without model": (lambda s: drop(s, "config.model"), "an incomplete diffusion checkpoint"),
    "a weight of another shape": (lambda s: put(s, "model.downs\x000\x00weight", torch.zeros(3, 3, 3, 3)),
                                  "the weights do not fit the config's model.unet"),
    "EMA of another shape": (lambda s: put(s, "ema.downs\x000\x00weight", torch.zeros(3, 3, 3, 3)),
                             "EMA weights do not fit"),
    "step a string": (lambda s: put(s, "step", "x"), "'step' must be an integer"),
    "negative step": (lambda s: put(s, "step", -5), "'step' must be at least 0"),
    "optimizer a list": (lambda s: put(s, "optimizer", [1]), "'optimizer' must be a dict"),
    "samples_seen a string": (lambda s: put(s, "samples_seen", "x"), "'samples_seen' must be an integer"),
    "a bad schedule": (lambda s: put(s, "config.model.beta_schedule.train.n_timestep", -1),
                       "'model.beta_schedule.train.n_timestep' must be an integer >= 1"),
    "model.unet a string": (lambda s: put(s, "config.model.unet", "x"), "key 'model.unet' must be an object"),
}
TRAINING_ONLY = {  # what only resuming training reads
    "a generator that is no generator": (lambda s: put(s, "generator", torch.zeros(3)), "'generator' is not a random"),
    "an RNG record of another kind": (lambda s: put(s, "rng", {"python": 1}), "'rng' is not a random-generator record"),
    "optimizer of other parameters": (lambda s: put(s, "optimizer.param_groups", [{"params": [0]}]),
                                      "its optimizer state does not match its weights"),
}


def changed(good: dict, change):
    state = copy.deepcopy(good)
    result = change(_dotted_keys(state))
    return _plain_keys(result if isinstance(result, list) else state)


def _dotted_keys(state):  # weight names hold dots: inside `put`/`drop` they travel as \x00
    state["model"] = {k.replace(".", "\x00"): v for k, v in state["model"].items()}
    if state.get("ema"):
        state["ema"] = {k.replace(".", "\x00"): v for k, v in state["ema"].items()}
    return state


def _plain_keys(state):
    if isinstance(state, dict):
        for entry in ("model", "ema"):
            if isinstance(state.get(entry), dict):
                state[entry] = {k.replace("\x00", "."): v for k, v in state[entry].items()}
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoint_battery")
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [8, 8], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=6, widths=(8, 8), n_blocks=1)
    stage1 = {"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": 6, "in_channels": 3,
              "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0,
              "optimizer": torch.optim.Adam(model.parameters()).state_dict(), "best": {"PSNR": 1.0, "epoch": 0},
              "rng": capture_rng_state()}
    dcfg = load_diffusion_config(None, {"model.unet.inner_channel": 8, "model.unet.norm_groups": 4,
                                        "model.unet.channel_multiplier": [1, 2], "model.unet.attn_res": [],
                                        "model.unet.res_blocks": 1, "model.diffusion.image_size": 8,
                                        "sample.steps": 5, "sample.sampler": "ddim", "datasets.train.num_workers": 0,
                                        "train.n_iter": 3, "datasets.train.dataroot": str(root / "abu")})
    unet = unet_from_config(dcfg["model"])
    stage2 = {"stage": "diffusion", "model": unet.state_dict(), "ema": unet.state_dict(),
              "optimizer": torch.optim.Adam(unet.parameters()).state_dict(), "scaler": None, "step": 2, "epoch": 1,
              "samples_seen": 4, "seed": 0, "rng": capture_rng_state(), "generator": torch.Generator().get_state(),
              "config": dcfg}
    (root / "d.json").write_text(json.dumps(dcfg))
    for i in range(3):
        sio.savemat(_mkdir(root / "abu") / f"{i}.mat",
                    {"Abu": np.random.default_rng(i).dirichlet(np.ones(5), size=(8, 8)).astype(np.float32)})
    _mkdir(root / "rgb")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "rgb" / "x.png")
    _mkdir(root / "hsi")
    sio.savemat(root / "hsi" / "c.mat", {"Y": np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)})
    return root, stage1, stage2


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def commands(root, out):
    return {
        "infer": lambda c: unmixing_main(["infer", "--ckpt", c, "--rgb", str(root / "rgb"), "--out", str(out),
                                          "--device", "cpu", "--workers", "0"]),
        "Evaluate.py reconstruction": lambda c: Evaluate.main(["reconstruction", "--ckpt", c, "--hsi",
                                                               str(root / "hsi"), "--out", str(out), "--device",
                                                               "cpu", "--no-progress"]),
        "Synthesis.py": lambda c: Synthesis.main(["--abundances", str(root / "abu"), "--ckpt", c, "--out", str(out),
                                                  "--device", "cpu"]),
        "Unmixing.py train --resume": lambda c: unmixing_main(["train", "--bands", "5", "3", "1", "--resume", c,
                                                               "--train", str(root / "hsi"), "--val", str(root / "hsi"),
                                                               "--test", str(root / "hsi"), "--out", str(out),
                                                               "--device", "cpu", "--epochs", "1"]),
        "Diffusion.py -p train --resume": lambda c: Diffusion.main(["-p", "train", "-c", str(root / "d.json"),
                                                                    "--resume", c, "--out", str(out), "--device", "cpu"]),
        "Diffusion.py -p val": lambda c: Diffusion.main(["-p", "val", "-c", str(root / "d.json"), "--resume", c,
                                                         "--out", str(out), "--device", "cpu", "--num-samples", "1"]),
        "export diffusion": lambda c: export_main(["diffusion", c, str(out / "ref")]),
    }


def refused(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# Synthesis reads only the decoder weight, the config's data section and the wavelengths of a stage-1 file
SYNTHESIS_READS = ("a list", "model is a list", "a weight is a string", "decoder of 2 dimensions", "config is a list",
                   "negative out_bands", "bands a string", "epoch a string", "wavelengths a string", "config.data a list")


@pytest.mark.parametrize("case", sorted(STAGE1))
def test_stage1_loaders_refuse_a_wrong_checkpoint_in_one_line(files, tmp_path, capsys, case):
    root, good, _ = files
    change, needle = STAGE1[case]
    path = str(tmp_path / "bad.pth")
    torch.save(changed(good, change), path)
    run = commands(root, tmp_path / "out")
    names = ["infer", "Evaluate.py reconstruction"] + (["Synthesis.py"] if case in SYNTHESIS_READS else [])
    for name in names:
        line = refused(capsys, lambda: run[name](path))
        assert line.startswith(f"error: {path}: ") and needle in line, (name, line)
    # resuming reads what training restores (config, weights, optimizer, RNG): refused in one line, or it trains
    try:
        run["Unmixing.py train --resume"](path)
    except SystemExit as err:
        assert err.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("error:")]) <= 1


@pytest.mark.parametrize("case", sorted(STAGE2) + sorted(TRAINING_ONLY))
def test_stage2_loaders_refuse_a_wrong_checkpoint_in_one_line(files, tmp_path, capsys, case):
    root, _, good = files
    change, needle = {**STAGE2, **TRAINING_ONLY}[case]
    path = str(tmp_path / "bad.pth")
    torch.save(changed(good, change), path)
    run = commands(root, tmp_path / "out")
    names = ["Diffusion.py -p train --resume", "export diffusion"] + ([] if case in TRAINING_ONLY else
                                                                      ["Diffusion.py -p val"])
    for name in names:
        line = refused(capsys, lambda: run[name](path))
        assert line.startswith(f"error: {path}: ") and needle in line, (name, line)


def test_the_good_checkpoints_of_the_battery_load(files, tmp_path):
    root, stage1, stage2 = files
    torch.save(stage1, tmp_path / "u.pth")
    torch.save(stage2, tmp_path / "d.pth")
    run = commands(root, tmp_path / "out")
    assert run["infer"](str(tmp_path / "u.pth")) == 0
    assert run["Diffusion.py -p val"](str(tmp_path / "d.pth")) == 0


def test_a_mat_file_given_as_checkpoint_is_named_for_what_it_is(files, tmp_path, capsys):
    """It was refused as code-carrying with a hint to --trust-checkpoint-code."""
    root, _, _ = files
    run = commands(root, tmp_path / "out")
    mat = str(root / "hsi" / "c.mat")
    h5 = tmp_path / "v73.mat"
    h5.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b" " * 90 + b"\x00\x02IM" + b"\x00" * 384
                   + b"\x89HDF\r\n\x1a\n")
    for path in (mat, str(h5)):
        for name in ("infer", "Synthesis.py", "Diffusion.py -p val"):
            line = refused(capsys, lambda: run[name](path))
            assert line == f"error: {path}: is a MATLAB .mat file (data such as HSI cubes or abundances), not a " \
                           "checkpoint (.pth)", line
    (tmp_path / "notes.pth").write_text("hello")
    line = refused(capsys, lambda: run["infer"](str(tmp_path / "notes.pth")))
    assert "not a checkpoint: a .pth file of torch.save is a zip archive or a pickle; this one starts with b'hello'" \
        in line
