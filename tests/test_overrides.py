"""`--set key=value`: typed by the default's type, unknown keys refused with the nearest key."""
import pytest

from ubf.core.errors import UserError
from ubf.core.overrides import parse_set_values
from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS

DEFAULTS = {"train": {"lr": 2e-4, "epochs": 40, "augment": False, "clip": None, "name": "x"},
            "model": {"widths": [32, 64], "unet": {"dropout": 0.2}}}


def test_values_take_the_type_of_their_default():
    values = parse_set_values(["train.lr=1e-4", "train.epochs=3", "train.augment=true", "train.clip=1.5",
                               "train.name=007", "model.widths=[8,8]", "model.unet.dropout=0"], DEFAULTS)
    assert values == {"train.lr": 1e-4, "train.epochs": 3, "train.augment": True, "train.clip": 1.5,
                      "train.name": "007", "model.widths": [8, 8], "model.unet.dropout": 0.0}
    assert type(values["train.epochs"]) is int and type(values["model.unet.dropout"]) is float
    assert type(values["train.name"]) is str


@pytest.mark.parametrize("pair, message", [
    ("train.epochs=2.5", "expected an integer"),
    ("train.augment=maybe", "expected true or false"),
    ("train.lr=fast", "expected a number"),
    ("model.widths=8", "expected a JSON list"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_values_that_do_not_fit_are_refused(pair, message):
    with pytest.raises(UserError, match=message):
        parse_set_values([pair], DEFAULTS)


def test_unknown_key_names_the_nearest():
    with pytest.raises(UserError, match=r"unknown config key \(did you mean 'train.lr'\?\)"):
        parse_set_values(["train.lrr=1"], DEFAULTS)
    with pytest.raises(UserError, match="did you mean 'model.unet.dropout'"):
        parse_set_values(["model.unet.droput=0.1"], DEFAULTS)


def test_the_issue_example_on_the_real_stage_defaults():
    assert parse_set_values(["train.lr=1e-4"], UNMIXING_DEFAULTS) == {"train.lr": 1e-4}
    assert parse_set_values(["model.unet.dropout=0.1"], DIFFUSION_DEFAULTS) == {"model.unet.dropout": 0.1}


# through the CLIs ----------------------------------------------------------------------------------

def test_diffusion_cli_set_and_resume_latest(tmp_path, capsys):
    import glob
    import json

    import numpy as np

    from ubf.cli import diffusion as Diffusion
    from ubf.core.checkpoint import load_checkpoint
    from ubf.data.matio import write_mat
    from test_diffusion_cli import TINY, write_json
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mat(str(tmp_path / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(10, 12)).astype(np.float32)})
    config, out = write_json(tmp_path / "tiny.json", TINY), str(tmp_path / "runs")
    common = ["-c", config, "--data", str(tmp_path / "abu"), "--root", out, "--device", "cpu"]
    Diffusion.main(["-p", "train", *common, "--set", "train.n_iter=2", "train.optimizer.lr=0.003",
                    "train.save_checkpoint_freq=1"])
    run = glob.glob(str(tmp_path / "runs" / "tiny_*"))[0]
    saved = json.load(open(glob.glob(run + "/**/config*.json", recursive=True)[0]))
    assert saved["train"]["n_iter"] == 2 and saved["train"]["optimizer"]["lr"] == 0.003
    Diffusion.main(["-p", "train", *common, "--resume", "latest", "--set", "train.n_iter=3"])
    checkpoints = sorted(glob.glob(run + "/checkpoint/I*_E*.pth"))
    assert [load_checkpoint(p, "diffusion")["step"] for p in checkpoints] == [1, 2, 3]  # continued the same run
    with pytest.raises(SystemExit) as exit_info:
        Diffusion.main(["-p", "train", *common, "--set", "train.optimizer.lrr=1"])
    assert exit_info.value.code == 2
    assert "did you mean 'train.optimizer.lr'" in capsys.readouterr().err


def test_unmixing_resume_latest_without_a_run_is_one_line(tmp_path, capsys):
    from ubf.cli.unmixing import main
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), "--resume", "latest", "--train", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--resume latest: no checkpoint in" in capsys.readouterr().err
