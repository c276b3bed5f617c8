"""Where the built-in configs are: one lookup for a checkout and for an installed package.

The JSON configs live in the checkout's top-level `config/` (the paper's commands say `-c config/...`);
the wheel ships the same files as `ubf/config/` (pyproject.toml maps the package to that folder, so git
holds one copy). `resolve_config("config/demo_DDPM.json")` gives the file itself when it exists from the
current folder, else the built-in one of that name, so the paper's commands work from any folder.
"""
import os

from ubf.core.logs import get_logger

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../ubf
CHECKOUT = os.path.dirname(PACKAGE_DIR)


def builtin_config_dir() -> str | None:
    """The folder of built-in configs: the installed package's `ubf/config`, else the checkout's `config/`."""
    packaged = os.path.join(PACKAGE_DIR, "config")
    if os.path.isdir(packaged):
        return packaged
    checkout = os.path.join(CHECKOUT, "config")  # only beside this package's own pyproject.toml
    if os.path.isdir(checkout) and os.path.isfile(os.path.join(CHECKOUT, "pyproject.toml")):
        return checkout
    return None


def builtin_configs() -> list[str]:
    """File names of the built-in configs (empty when none is found)."""
    folder = builtin_config_dir()
    return sorted(f for f in os.listdir(folder) if f.endswith(".json")) if folder else []


def resolve_config(path: str | None) -> str | None:
    """`path` if it is a file; else, for a bare name or `config/<name>`, the built-in config of that name;
    else `path` unchanged (the caller says it is missing). None stays None."""
    if path is None or os.path.isfile(path):
        return path
    folder, name = os.path.split(os.path.normpath(path))
    builtin = builtin_config_dir()
    if folder not in ("", "config") or builtin is None or not os.path.isfile(os.path.join(builtin, name)):
        return path
    found = os.path.join(builtin, name)
    get_logger().info("%s: not in %s; using the built-in %s", path, os.getcwd(), found)
    return found
