import json

import pytest

from ubf.core.config import load_config, merge_config, read_json_config, save_config, strip_json_comments
from ubf.core.errors import UserError

DEFAULTS = {"name": "x", "train": {"lr": 1e-4, "epochs": 3}, "data": {"bands": [1, 2, 3]}}


def test_comments_are_stripped_but_not_inside_strings(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('// header\n{"name": "a//b", /* block\n comment */ "train": {"lr": 0.5} // tail\n}\n')
    assert read_json_config(str(path)) == {"name": "a//b", "train": {"lr": 0.5}}
    assert strip_json_comments('"http://x" // y') == '"http://x" '


def test_unknown_key_names_key_and_suggests_nearest():
    with pytest.raises(UserError, match=r"unknown key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        merge_config(DEFAULTS, {"train": {"lrr": 1}}, "cfg.json")


def test_known_unused_keys_are_kept_and_free_form_not_checked():
    cfg = merge_config(DEFAULTS, {"gpu_ids": [0], "data": {"bands": {"wavelengths": [640, 550, 460]}}},
                       known_unused=("gpu_ids",), free_form=("data.bands",))
    assert cfg["gpu_ids"] == [0] and cfg["data"]["bands"] == {"wavelengths": [640, 550, 460]}


def test_flags_override_file_and_none_means_unset(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"lr": 0.5}}')
    cfg = load_config(str(path), DEFAULTS, {"train.epochs": 7, "train.lr": None})
    assert cfg["train"] == {"lr": 0.5, "epochs": 7}
    assert DEFAULTS["train"]["lr"] == 1e-4  # defaults are not mutated


def test_invalid_json_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "a": 1,\n "b": }\n')
    with pytest.raises(UserError, match=r"bad.json: invalid JSON at line 3"):
        read_json_config(str(path))


def test_save_config_roundtrip(tmp_path):
    save_config(DEFAULTS, str(tmp_path / "run" / "config.json"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved.pop("software")["name"] == "ubf" and saved == DEFAULTS
    # the saved file loads again as a config: its `software` record is not a setting
    assert load_config(str(tmp_path / "run" / "config.json"), DEFAULTS) == DEFAULTS
