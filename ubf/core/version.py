"""The one version string of the project (CITATION.cff and every CLI's `--version` read it here)."""
import argparse

__version__ = "0.1.0"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version`: print `<program> <version>` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
