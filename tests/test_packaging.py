"""The installable package: pyproject.toml's packages, data, entry points and requirements, checked against
the files of the checkout (nothing is built here; docs/ecosystem.md records the fresh-venv install)."""
import glob
import importlib
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT
import ubf
from ubf.core import resources, version
from ubf.core.config import save_config

tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_lines(name: str) -> list[str]:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def test_every_package_folder_is_listed_and_config_ships_from_the_top_level(project):
    setuptools = project["tool"]["setuptools"]
    found = {os.path.relpath(folder, ROOT).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(ROOT, "ubf")) if "__init__.py" in files}
    assert set(setuptools["packages"]) == found | {"ubf.config"}
    # one copy of the configs in git: the wheel's ubf/config is the checkout's config/
    assert setuptools["package-dir"] == {"ubf.config": "config"}
    assert not os.path.exists(os.path.join(ROOT, "ubf", "config"))


def test_package_data_globs_match_real_files_and_leave_none_out(project):
    package_data = project["tool"]["setuptools"]["package-data"]
    folders = {"ubf.config": os.path.join(ROOT, "config")}
    shipped = set()
    for package, globs in package_data.items():
        folder = folders.get(package, os.path.join(ROOT, *package.split(".")))
        for pattern in globs:
            matched = [f for f in glob.glob(os.path.join(folder, pattern), recursive=True) if os.path.isfile(f)]
            assert matched, f"{package}: {pattern} matches no file"
            shipped |= set(matched)
    assert {f for f in os.listdir(os.path.join(ROOT, "config")) if f.endswith(".json")} == \
        set(resources.builtin_configs()) and len(resources.builtin_configs()) >= 2
    # every file the package reads at run time (all that is not Python under ubf/) is in the wheel
    data_files = {os.path.join(d, f) for d, _, names in os.walk(os.path.join(ROOT, "ubf")) for f in names
                  if "__pycache__" not in d and not f.endswith((".py", ".pyc"))}
    assert data_files and data_files <= shipped, sorted(data_files - shipped)


def test_entry_points_import_and_have_a_main(project):
    scripts = project["project"]["scripts"]
    assert {"ubf-unmixing", "ubf-diffusion", "ubf-synthesis", "ubf-evaluate", "ubf-demo", "ubf-prepare",
            "ubf-sensors"} <= set(scripts)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        main = getattr(importlib.import_module(module), function)
        assert callable(main), name
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0, name


def test_requirements_torch_range_and_extras(project):
    dependencies = project["project"]["dependencies"]
    assert not any(d.lower().startswith("pytest") for d in dependencies)  # not a runtime requirement
    assert dependencies == requirement_lines("requirements.txt")  # one list, two files
    torch = next(d for d in dependencies if d.startswith("torch"))
    from packaging.specifiers import SpecifierSet
    specifier = SpecifierSet(torch[len("torch"):])
    assert "2.13.0" in specifier and "2.1.0" in specifier and "3.0.0" not in specifier
    extras = project["project"]["optional-dependencies"]
    assert set(extras["io"]) == {"tifffile", "imagecodecs", "spectral", "rasterio"}
    assert set(extras["track"]) == {"tensorboard", "wandb"}
    assert {re.split(r"[<>=]", e)[0] for e in extras["test"]} == {"pytest", "scikit-image"}
    assert requirement_lines("requirements-test.txt")[0] == "-r requirements.txt"
    assert any(line.startswith("pytest") for line in requirement_lines("requirements-test.txt"))


def test_ci_runs_exactly_the_readme_test_command():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    test_command = ci[-1]
    assert test_command.endswith("python -m pytest") and "requirements-test.txt" in test_command
    assert f"```bash\n{test_command}\n```" in readme
    assert "```bash\npip install torch==2.13.0 && pip install -r requirements.txt && python demo.py\n```" in readme


def test_version_comes_from_one_place(project):
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ubf.__version__"}
    assert version.__version__ == ubf.__version__  # a checkout (an installed copy reads its metadata)


def test_saved_config_records_version_and_the_git_commit(tmp_path):
    save_config({"name": "x"}, str(tmp_path / "config.json"))
    with open(tmp_path / "config.json") as f:
        software = json.load(f)["software"]
    assert software["name"] == "ubf" and software["version"] == ubf.__version__
    try:  # the commit, as git itself reports it for this checkout
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except OSError:
        pytest.skip("git not installed")
    if head.returncode != 0:
        assert software["git_commit"] is None
    else:
        assert software["git_commit"] == head.stdout.strip() and isinstance(software["git_dirty"], bool)


def test_builtin_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout_copy = os.path.join(ROOT, "config", "demo_DDPM.json")
    assert os.path.samefile(resources.resolve_config("config/demo_DDPM.json"), checkout_copy)
    assert os.path.samefile(resources.resolve_config("demo_DDPM.json"), checkout_copy)
    assert resources.resolve_config("config/no_such.json") == "config/no_such.json"  # the caller says it is missing
    assert resources.resolve_config("other/demo_DDPM.json") == "other/demo_DDPM.json"  # only config/ or a bare name
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo_DDPM.json").write_text("{}")
    assert resources.resolve_config("config/demo_DDPM.json") == "config/demo_DDPM.json"  # a user's own file wins
    # an installed package: its ubf/config comes first
    installed = tmp_path / "site" / "ubf"
    (installed / "config").mkdir(parents=True)
    (installed / "config" / "demo_DDPM.json").write_text("{}")
    monkeypatch.setattr(resources, "PACKAGE_DIR", str(installed))
    monkeypatch.chdir(tmp_path / "site")
    assert resources.resolve_config("config/demo_DDPM.json") == str(installed / "config" / "demo_DDPM.json")


def test_demo_steps_run_as_modules_of_the_package():
    from ubf.cli import demo
    command = demo.stage_command("diffusion", "-p", "val")
    assert command[1:4] == ["-m", "ubf.cli.diffusion", "-p"]
    for module in ("unmixing", "diffusion", "synthesis", "evaluate"):
        assert callable(importlib.import_module(f"ubf.cli.{module}").main)
    path = demo.step_environment()["PYTHONPATH"].split(os.pathsep)
    assert os.path.samefile(path[0], os.path.dirname(os.path.dirname(ubf.__file__)))
