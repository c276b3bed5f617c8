"""Logging set-up shared by the CLIs: messages to the console and to a run's log file."""
import logging
import os
import sys

from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder

LOGGER_NAME = "hsisyn"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (pytest and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Console handler once; a file handler per call with a new `log_file` (appending, for resumes)."""
    logger = get_logger()
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_hsisyn_console", False) for h in logger.handlers):
        console = _CurrentStderrHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console._hsisyn_console = True
        logger.addHandler(console)
    if log_file:
        log_file = os.path.abspath(log_file)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
        ensure_folder(os.path.dirname(log_file))
        try:
            file_handler = logging.FileHandler(log_file, mode="a")
        except OSError as err:
            raise UserError(f"{log_file}: cannot write the log ({err.strerror or err})") from None
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def close_file_logs() -> None:
    """Close the log file handlers (before a failed start removes its run folder)."""
    logger = get_logger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
