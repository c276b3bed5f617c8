"""The project's version and provenance: what every CLI's `--version` prints and every run records.

The version comes from the installed package's metadata (`importlib.metadata`) when the `ubf` that is
imported is that installed copy, else from `ubf.__version__` (a checkout, or an installed copy shadowed
by one). `provenance()` adds the git commit of the checkout the code runs from, when it is one.
"""
import argparse
import functools
import os
import subprocess
from importlib import metadata

import ubf

DISTRIBUTION = "ubf"
PACKAGE_DIR = os.path.dirname(os.path.abspath(ubf.__file__))
CHECKOUT = os.path.dirname(PACKAGE_DIR)  # the repository root when the code runs from a checkout


def package_version() -> str:
    """The metadata version of the installed distribution if it is the code imported here, else `ubf.__version__`."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
        installed = os.path.abspath(str(dist.locate_file(os.path.join("ubf", "__init__.py"))))
    except (metadata.PackageNotFoundError, OSError, TypeError):
        return ubf.__version__
    if os.path.normcase(installed) == os.path.normcase(os.path.join(PACKAGE_DIR, "__init__.py")):
        return dist.version
    return ubf.__version__  # an editable install or an older install beside a newer checkout


__version__ = package_version()


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", CHECKOUT, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """{"git_commit": sha or None, "git_dirty": bool or None} of the checkout the package runs from."""
    if not os.path.exists(os.path.join(CHECKOUT, ".git")):  # an installed copy: no repository of its own
        return {"git_commit": None, "git_dirty": None}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def provenance() -> dict:
    """What a saved config records about the code that wrote it: name, version, git commit (None outside git)."""
    return {"name": DISTRIBUTION, "version": __version__, **git_state()}


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version`: print `<program> <version>` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the program's version and exit")
