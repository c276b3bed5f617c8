"""One exception type for mistakes a user can fix (bad path, bad key, bad config).

Library code raises `UserError("path/file.mat: no key 'Y' (found: cube, bands)")`; the CLI entry
points turn it into a one-line message and exit status 2 instead of a traceback.
"""
import argparse
import functools
import logging
import sys

# Import names whose pip distribution is named differently (the rest install under their import name).
PIP_NAMES = {"PIL": "pillow", "skimage": "scikit-image", "yaml": "pyyaml"}


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def cli_main(func):
    """Decorate a CLI `main()` so that UserError and Ctrl-C end with one line, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            logging.getLogger("hsisyn").debug("user error", exc_info=True)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except MemoryError as err:  # numpy's "Unable to allocate 2.15 TiB ...": a size this machine cannot hold
            print(f"error: not enough memory ({str(err).splitlines()[0][:160] if str(err) else 'MemoryError'})",
                  file=sys.stderr)
            sys.exit(2)
        except ModuleNotFoundError as err:  # a fresh environment without requirements.txt installed
            missing = (err.name or "").split(".")[0]
            if not missing or missing in ("ubf", "experiments", "bench", "tools"):
                raise  # a broken import inside this project is a bug, not a setup step
            print(f"error: Python package '{missing}' is not installed "
                  f"(pip install {PIP_NAMES.get(missing, missing)}, or pip install -r requirements.txt)",
                  file=sys.stderr)
            sys.exit(2)

    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line like every other user error: the usage stays behind --help."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
