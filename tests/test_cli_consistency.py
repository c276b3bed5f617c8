"""One vocabulary across the CLIs: every parser walked, shared flags with one destination, every flag with
help; TQDM_DISABLE, --threads, --no-progress, dict values in --set, SR3's upstream keys and flags;
Diffusion.py's --out (the run folder), --root (the folder of runs) and --ckpt / --resume."""
import argparse
import glob
import io
import json
import logging
import os

import numpy as np
import pytest
import torch

from ubf.cli import demo, diffusion, evaluate, synthesis, unmixing
from ubf.core import progress
from ubf.core.cliflags import runtime_flags
from ubf.core.errors import UserError
from ubf.core.overrides import parse_set_values
from ubf.data import prepare, sensors
from ubf.data.matio import write_mat
from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS, load_diffusion_config


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser, by the name a user types."""
    found = {}

    def walk(parser, name):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[name] = parser
        for action in subs:
            for sub, child in action.choices.items():
                walk(child, f"{name} {sub}")

    for name, module in (("Unmixing.py", unmixing), ("Diffusion.py", diffusion), ("Synthesis.py", synthesis),
                         ("Evaluate.py", evaluate), ("demo.py", demo), ("prepare", prepare), ("sensors", sensors)):
        walk(module.build_parser(), name)
    return found


def options(parser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


# the concept each shared flag names, the destination it has everywhere, and where it makes sense
SHARED = {
    "--device": "device", "--threads": "threads", "--no-progress": "no_progress", "--seed": "seed",
    "--profile": "profile", "--overwrite": "overwrite", "--out": "out", "--ckpt": "ckpt", "--resume": "resume",
    "--set": "set_values", "--version": "version",
}
WHERE = {
    "Unmixing.py train": {"--device", "--threads", "--no-progress", "--seed", "--profile", "--out", "--resume", "--set"},
    "Unmixing.py infer": {"--device", "--threads", "--no-progress", "--profile", "--overwrite", "--out", "--ckpt",
                          "--set"},
    "Diffusion.py": {"--device", "--threads", "--no-progress", "--seed", "--profile", "--out", "--ckpt", "--resume",
                     "--set", "--version"},
    "Synthesis.py": {"--device", "--threads", "--no-progress", "--seed", "--profile", "--overwrite", "--out", "--ckpt",
                     "--set", "--version"},
    "Evaluate.py reconstruction": {"--device", "--threads", "--no-progress", "--profile", "--overwrite", "--out",
                                   "--ckpt"},
    "Evaluate.py generation": {"--device", "--threads", "--no-progress", "--seed", "--profile", "--overwrite", "--out"},
    "Evaluate.py downstream": {"--device", "--threads", "--no-progress", "--profile", "--overwrite", "--out"},
    "demo.py": {"--device", "--threads", "--no-progress", "--seed", "--profile", "--overwrite", "--out", "--version"},
}


def test_shared_flags_exist_with_one_destination():
    parsers = commands()
    assert set(WHERE) <= set(parsers)
    for name, flags in WHERE.items():
        have = options(parsers[name])
        for flag in flags:
            assert flag in have, f"{name}: no {flag}"
            assert have[flag].dest == SHARED[flag], f"{name}: {flag} -> {have[flag].dest}"
    # wherever a shared spelling appears it means the same (same destination), and --device takes --gpus too
    for name, parser in parsers.items():
        have = options(parser)
        for flag, dest in SHARED.items():
            if flag in have:
                assert have[flag].dest == dest, f"{name}: {flag} -> {have[flag].dest}"
        if "--device" in have:
            assert have["--gpus"] is have["--device"]
        assert "--run-dir" not in have or have["--run-dir"] is have["--out"]


def test_every_flag_has_help_and_hsi_folders_name_every_format():
    for name, parser in commands().items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{name}: {action.option_strings or action.dest} has no help"
    # the readers take .mat, ENVI .hdr + .img and multi-band TIFF (ubf/data/cubes.py CUBE_EXTENSIONS)
    parsers = commands()
    for name, flag in (("Unmixing.py train", "--train"), ("Unmixing.py infer", "--hsi"), ("Synthesis.py", "--real"),
                       ("Evaluate.py reconstruction", "--hsi"), ("Evaluate.py generation", "--real"),
                       ("Evaluate.py downstream", "--real"), ("sensors render", "--src")):
        text = options(parsers[name])[flag].help
        assert ".mat" in text and "ENVI" in text and ("TIFF" in text or ".tif" in text), (name, flag, text)


def test_sr3_flags_parse():
    args = diffusion.build_parser().parse_args(["-p", "val", "-c", "x.json", "-gpu", "0", "-debug", "-enable_wandb",
                                                "-log_wandb_ckpt", "-log_eval", "-log_infer"])
    assert args.debug and args.enable_wandb and args.log_eval and args.log_infer and args.gpu_ids == "0"


def test_tqdm_disable_wins_over_an_explicit_disable_false(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    for _ in progress.tqdm(range(50), stream=out, disable=False, mininterval=0):
        pass
    assert out.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "0")
    for _ in progress.tqdm(range(50), stream=out, disable=False, mininterval=0):
        pass
    assert "50/50" in out.getvalue()


def test_threads_and_no_progress_last_for_the_command_only(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    before = torch.get_num_threads()
    args = argparse.Namespace(threads=before + 1, no_progress=True)
    with runtime_flags(args):
        assert torch.get_num_threads() == before + 1 and os.environ["TQDM_DISABLE"] == "1"
    assert torch.get_num_threads() == before and "TQDM_DISABLE" not in os.environ


def test_set_merges_a_json_object_into_a_section():
    values = parse_set_values(['model.unet={"dropout": 0.1, "attn_res": [8]}', 'train={"optimizer": {"lr": 1e-3}}'],
                              DIFFUSION_DEFAULTS)
    assert values == {"model.unet.dropout": 0.1, "model.unet.attn_res": [8], "train.optimizer.lr": 0.001}
    plain = load_diffusion_config(None)
    merged = load_diffusion_config(None, values)
    assert merged["model"]["unet"]["dropout"] == 0.1 and merged["train"]["optimizer"]["lr"] == 0.001
    for key in plain["model"]["unet"]:  # merged, not replaced: the other keys keep their values
        if key not in ("dropout", "attn_res"):
            assert merged["model"]["unet"][key] == plain["model"]["unet"][key], key
    for bad, needle in (('model.unet={"dropot": 0.1}', "did you mean 'model.unet.dropout'"),
                        ('model.unet={"dropout": "high"}', "expected a number"),
                        ("model.unet=0.1", "is a section; expected a JSON object"),
                        ('model.unet={"dropout": 0.1', "is a section; expected a JSON object")):
        with pytest.raises(UserError, match=needle):
            parse_set_values([bad], DIFFUSION_DEFAULTS)


def test_sr3_upstream_config_keys_are_tolerated_with_a_note(tmp_path, caplog):
    # the dataset section of SR3's sample_ddpm_128.json (Image-Super-Resolution-via-Iterative-Refinement)
    upstream = {"name": "generation_ffhq", "phase": "train", "gpu_ids": [0],
                "datasets": {"train": {"name": "FFHQ", "mode": "HR", "dataroot": "dataset/ffhq_16_128",
                                       "datatype": "img", "l_resolution": 16, "r_resolution": 128, "batch_size": 12,
                                       "num_workers": 8, "use_shuffle": True, "data_len": -1},
                             "val": {"name": "CelebaHQ", "mode": "HR", "dataroot": "dataset/celebahq_16_128",
                                     "datatype": "img", "l_resolution": 16, "r_resolution": 128, "data_len": 10}},
                "model": {"which_model_G": "ddpm", "finetune_norm": False}, "log_eval": False}
    path = tmp_path / "sr3.json"
    path.write_text(json.dumps(upstream))
    with caplog.at_level(logging.INFO, logger="hsisyn"):
        logger = logging.getLogger("hsisyn")
        logger.propagate, was = True, logger.propagate
        try:
            cfg = load_diffusion_config(str(path))
        finally:
            logger.propagate = was
    assert cfg["datasets"]["train"]["batch_size"] == 12 and cfg["datasets"]["train"]["dataroot"] == "dataset/ffhq_16_128"
    note = " ".join(r.getMessage() for r in caplog.records if "not used" in r.getMessage())
    for key in ("datasets.train.l_resolution", "datasets.train.r_resolution", "datasets.train.datatype",
                "datasets.val.dataroot", "log_eval"):
        assert key in note
    upstream["datasets"]["train"]["l_resolutoin"] = 16  # a typo is still an error
    path.write_text(json.dumps(upstream))
    with pytest.raises(UserError, match="unknown key 'datasets.train.l_resolutoin'"):
        load_diffusion_config(str(path))


TINY = {
    "name": "tiny", "datasets": {"train": {"batch_size": 2, "num_workers": 0}},
    "model": {"unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                       "channel_multiplier": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.0},
              "beta_schedule": {p: {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3, "linear_end": 0.2}
                                for p in ("train", "val")},
              "diffusion": {"image_size": 8, "channels": 3}},
    "train": {"n_iter": 2, "val_freq": 100, "save_checkpoint_freq": 100, "print_freq": 1, "preview_samples": 0},
    "sample": {"sampler": "ddim", "steps": 2, "batch_size": 2},
}


def test_diffusion_out_is_the_run_folder_and_root_the_folder_of_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_mat(str(tmp_path / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)})
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    common = ["-c", str(config), "--device", "cpu", "--no-progress"]
    run = tmp_path / "run"
    assert diffusion.main(["-p", "train", *common, "--data", str(tmp_path / "abu"), "--out", str(run)]) == 0
    assert os.listdir(run / "checkpoint") == ["I2_E2.pth"]  # in --out itself (2 files, batch 2: a step per epoch)
    # -p val with --out and no --ckpt: that run's newest checkpoint, samples into the same run
    assert diffusion.main(["-p", "val", *common, "--out", str(run), "--num-samples", "1"]) == 0
    assert [os.path.basename(p) for p in glob.glob(str(run / "mat_results" / "*.mat"))] == ["2_1_sample_abu.mat"]
    # --root: a new <name>_<timestamp> below it, as --out made before
    assert diffusion.main(["-p", "train", *common, "--data", str(tmp_path / "abu"), "--root", str(tmp_path / "runs")]) == 0
    (made,) = glob.glob(str(tmp_path / "runs" / "tiny_*"))
    assert os.listdir(os.path.join(made, "checkpoint")) == ["I2_E2.pth"]
    capsys.readouterr()
    # the old meaning of --out (a folder of runs) is refused with the fix, and nothing is written there
    with pytest.raises(SystemExit):
        diffusion.main(["-p", "val", *common, "--out", str(tmp_path / "runs"), "--num-samples", "1"])
    assert f"pass --root {tmp_path / 'runs'}" in capsys.readouterr().err
    assert os.listdir(tmp_path / "runs") == [os.path.basename(made)]
    # --ckpt is what -p val reads; --resume keeps its old meaning there; -p train reads --resume only
    checkpoint = os.path.join(made, "checkpoint", "I2_E2.pth")
    assert diffusion.main(["-p", "val", *common, "--resume", checkpoint, "--num-samples", "1"]) == 0
    assert os.path.isfile(os.path.join(made, "mat_results", "2_1_sample_abu.mat"))
    for flags, needle in ((["-p", "train", "--ckpt", checkpoint], "continue training with --resume"),
                          (["-p", "val", "--ckpt", checkpoint, "--resume", checkpoint], "give --ckpt only")):
        with pytest.raises(SystemExit):
            diffusion.main([*flags, *common])
        assert needle in capsys.readouterr().err
