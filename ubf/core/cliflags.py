"""The flags every CLI spells the same way, defined once (docs/ecosystem.md, "One vocabulary across the CLIs").

Each `add_*` puts one flag on a parser with the same spelling, destination and help everywhere;
`runtime_flags(args)` acts on the ones that change the process (torch threads, progress bars) for the
duration of a command and puts both back afterwards (a CLI called in-process, as the tests do, leaves
nothing behind).
"""
import argparse
import contextlib
import os

from ubf.core.validate import INT_ANY, INT_POSITIVE, flag


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--device` (the reference's `--gpus` too): auto, cpu or cuda[:N]."""
    parser.add_argument("--device", "--gpus", dest="device", default=default,
                        help="auto (CUDA when available, else CPU; the default), cpu or cuda[:N]")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=flag(INT_POSITIVE), default=None,
                        help="CPU threads for torch (default: torch's choice, one per core)")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (the same as TQDM_DISABLE=1, which the steps it starts inherit)")


def add_seed_argument(parser: argparse.ArgumentParser, default: int | None = None, what: str = "") -> None:
    shown = f"default {default}" if default is not None else "default: the config's"
    parser.add_argument("--seed", type=flag(INT_ANY), default=default,
                        help=f"random seed{' of ' + what if what else ''} ({shown})")


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str = "outputs that exist already") -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} (default: refuse)")


@contextlib.contextmanager
def runtime_flags(args: argparse.Namespace):
    """`--threads N`: torch's thread count; `--no-progress`: TQDM_DISABLE=1 for this process and the
    processes it starts. Both are restored on exit."""
    import torch
    threads, quiet = getattr(args, "threads", None), getattr(args, "no_progress", False)
    old_threads, old_quiet = torch.get_num_threads(), os.environ.get("TQDM_DISABLE")
    if threads:
        torch.set_num_threads(threads)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(old_threads)
        if quiet:
            if old_quiet is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old_quiet
