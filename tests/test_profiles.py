"""Profiles through the real config loaders: defaults -> profile -> config file -> flags.

The faithful values asserted here are read off the reference code (HSI-Synthesis/Unmixing-before-fusion):
Diffusion.py draws `for idx in range(40)` samples with the trained network (its config's EMA block is
"not used now"); Synthesis.py maps `(abu + 1) / 2` without projection and min-maxes the whole decoder
weight; Unmixing.py tests and infers with the weights of the last epoch (`*_latest.pth`).
"""
import json
import os

import pytest

from ubf.core.errors import UserError
from ubf.core.profiles import IMPROVED, resolve_profile
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.synthesis import load_synthesis_settings
from ubf.pipeline.unmixing_config import load_unmixing_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHIKUSEI_DDPM = os.path.join(ROOT, "config", "Chikusei_256_DDPM.json")


def write_config(path, data, comment=True) -> str:
    with open(path, "w") as f:
        f.write(("// test config\n" if comment else "") + json.dumps(data))
    return str(path)


def test_no_profile_is_the_reference_behaviour():
    for cfg in (load_diffusion_config(None), load_diffusion_config(CHIKUSEI_DDPM)):
        assert cfg["profile"] == "faithful"
        assert cfg["sample"]["use_ema"] is False and cfg["sample"]["project_simplex"] is False
        assert cfg["sample"]["num_samples"] == 40 and cfg["sample"]["sampler"] == "ancestral"
        assert cfg["model"]["diffusion"]["loss_type"] == "l1"
    # the shipped config keeps the reference's `datasets.val.data_len: 50`, which -p val does not use
    assert load_diffusion_config(CHIKUSEI_DDPM)["datasets"]["val"]["data_len"] == 50
    settings = load_synthesis_settings()
    assert (settings["endmembers"], settings["simplex"], settings["checkpoint"], settings["end_layout"]) == \
        ("minmax", False, "latest", "conv")
    assert load_unmixing_config(None, stage="infer")["infer"]["checkpoint"] == "latest"
    assert load_unmixing_config(None)["train"]["test_checkpoint"] == "latest"


def test_improved_flag_turns_on_every_entry_of_its_stage():
    cfg = load_diffusion_config(CHIKUSEI_DDPM, profile="improved")
    assert cfg["profile"] == "improved"
    assert cfg["sample"]["use_ema"] is True and cfg["sample"]["project_simplex"] is True
    for dotted, value in IMPROVED["diffusion"].items():
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted
    settings = load_synthesis_settings(profile="improved")
    assert (settings["endmembers"], settings["simplex"], settings["checkpoint"]) == ("raw", True, "best")
    assert load_unmixing_config(None, profile="improved", stage="infer")["infer"]["checkpoint"] == "best"


def test_precedence_defaults_profile_file_flags(tmp_path):
    # the file names the profile and overrides one of its entries; the other entry still comes from it
    path = write_config(tmp_path / "ddpm.json", {"profile": "improved", "sample": {"use_ema": False}})
    cfg = load_diffusion_config(path)
    assert cfg["profile"] == "improved"
    assert cfg["sample"]["use_ema"] is False           # file beats profile
    assert cfg["sample"]["project_simplex"] is True    # profile beats defaults
    # a flag beats the file
    assert load_diffusion_config(path, {"sample.use_ema": True})["sample"]["use_ema"] is True
    # --profile beats the file's `profile` key: faithful adds nothing, the file's own value stays
    cfg = load_diffusion_config(path, profile="faithful")
    assert cfg["profile"] == "faithful" and cfg["sample"]["project_simplex"] is False
    assert cfg["sample"]["use_ema"] is False


def test_unmixing_file_profile_reaches_train_and_infer(tmp_path):
    path = write_config(tmp_path / "unmixing.json", {"profile": "improved", "infer": {"tile": 128}})
    train = load_unmixing_config(path)
    infer = load_unmixing_config(path, stage="infer")
    assert train["profile"] == infer["profile"] == "improved"
    assert infer["infer"] == {"tile": 128, "overlap": 32, "checkpoint": "best", "color_match": "moments",
                              "layout": "project"}
    assert load_unmixing_config(path, {"infer.checkpoint": "latest"}, stage="infer")["infer"]["checkpoint"] == "latest"


def test_bad_profile_names_the_file_and_the_choices(tmp_path):
    path = write_config(tmp_path / "ddpm.json", {"profile": "fast"})
    with pytest.raises(UserError, match=r"ddpm\.json: 'profile': unknown profile 'fast' \(choose one of: "
                                         r"faithful, improved\)"):
        load_diffusion_config(path)
    with pytest.raises(UserError, match="unknown profile"):
        resolve_profile("best", {})
    with pytest.raises(UserError, match="'endmembers' is 'scaled'"):
        load_synthesis_settings(overrides={"endmembers": "scaled"})
    with pytest.raises(UserError, match="'infer.checkpoint' is 'first'"):
        load_unmixing_config(None, {"infer.checkpoint": "first"}, stage="infer")


def test_resolved_profile_is_saved_with_the_run_config(tmp_path):
    from ubf.core.config import save_config
    cfg = load_diffusion_config(write_config(tmp_path / "c.json", {"profile": "improved"}))
    save_config(cfg, str(tmp_path / "run" / "config.json"))
    assert json.load(open(tmp_path / "run" / "config.json"))["profile"] == "improved"


def test_every_cli_has_the_profile_flag():
    from ubf.cli import diffusion as Diffusion
    from ubf.cli import evaluate as Evaluate
    from ubf.cli import synthesis as Synthesis
    from ubf.cli import unmixing as Unmixing
    from ubf.cli import demo as demo
    assert Diffusion.build_parser().parse_args(["--profile", "improved"]).profile == "improved"
    assert Synthesis.build_parser().parse_args(["--profile", "improved"]).profile == "improved"
    for command in ("train", "infer"):
        assert Unmixing.build_parser().parse_args([command, "--profile", "improved"]).profile == "improved"
        assert Unmixing.build_parser().parse_args([command]).profile is None  # the config file decides
    for command in ("reconstruction --ckpt x --hsi y", "generation --real x --synthetic y",
                    "downstream --real x --synthetic y"):
        args = Evaluate.build_parser().parse_args(command.split() + ["--out", "o", "--profile", "improved"])
        assert args.profile == "improved"
    assert demo.build_parser().parse_args([]).profile == "improved"  # the demo shows the improved pipeline
    with pytest.raises(SystemExit):
        Diffusion.build_parser().parse_args(["--profile", "fast"])


@pytest.mark.parametrize("name, stage", [("Chikusei_256_DDPM.json", "diffusion"), ("ARAD_256_DDPM.json", "diffusion"),
                                         ("HSRS-SC_256_DDPM.json", "diffusion"), ("Harvard_256_DDPM.json", "diffusion"),
                                         ("Chikusei_unmixing.json", "unmixing"), ("Chikusei_unmixing.json", "infer")])
def test_shipped_configs_leave_profile_keys_to_the_profile(name, stage):
    """A key spelled out in a config file beats the profile, so a shipped config that wrote the faithful
    value of a profile key would silently defeat `--profile improved`."""
    from ubf.core.config import read_json_config
    data = read_json_config(os.path.join(ROOT, "config", name))
    for dotted in IMPROVED[stage]:
        node = data
        for part in dotted.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        assert node == {}, f"{name} sets {dotted}"
