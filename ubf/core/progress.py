"""Progress bars that keep logs small: a live bar on a terminal, a line every few percent elsewhere.

tqdm redraws its bar on every update; written into a file or a pipe each redraw stays (a 2-minute
`Evaluate.py downstream` run wrote 620 KB of them). `tqdm(...)` here takes tqdm's arguments and
returns a normal bar when the output stream is a terminal, else a bar that prints one plain line each
time it crosses another `percent_step` percent (or, without a known total, every `interval` seconds).

`TQDM_DISABLE=1` in the environment turns every bar off, even one a caller asked for with
`disable=False` (tqdm itself lets an explicit argument win); `--no-progress` on every CLI sets it, so
the processes a CLI starts are quiet too.
"""
import io
import os
import sys
import time

from tqdm import tqdm as _tqdm

PERCENT_STEP = 5
INTERVAL_S = 30.0


class _Sink(io.TextIOBase):
    """Swallows tqdm's own carriage-return redraws; the stepwise bar writes its lines itself."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class StepwiseBar(_tqdm):
    """A tqdm whose display is one newline-terminated line per `percent_step` percent."""

    def __init__(self, *args, percent_step: float = PERCENT_STEP, interval: float = INTERVAL_S, stream=None,
                 **kwargs):
        self._out = stream if stream is not None else sys.stderr
        self._percent_step = percent_step
        self._interval = interval
        self._last_mark = None
        self._last_time = 0.0
        kwargs["file"] = _Sink()
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def _mark(self):
        if self.total:
            return int(100.0 * min(self.n, self.total) / self.total // self._percent_step)
        return None

    def display(self, msg=None, pos=None):
        if msg == "":  # tqdm clearing a bar that does not stay: nothing to clear in a log
            return True
        closing = self.disable
        mark, now = self._mark(), time.monotonic()
        if mark is None:
            due = self._last_mark is None or now - self._last_time >= self._interval or closing
        else:
            due = mark != self._last_mark
        if not due:
            return True
        self._last_mark, self._last_time = (mark if mark is not None else self.n), now
        line = self.__str__().strip()
        if line:
            self._out.write(line + "\n")
            self._out.flush()
        return True


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def disabled_by_environment() -> bool:
    """True when TQDM_DISABLE is set to anything but an empty string, 0 or false."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off")


def tqdm(*args, stream=None, percent_step: float = PERCENT_STEP, **kwargs):
    """tqdm's bar on a terminal, `StepwiseBar` when `stream` (default: stderr) is a file or a pipe."""
    if disabled_by_environment():
        kwargs["disable"] = True
    target = stream if stream is not None else (kwargs.get("file") or sys.stderr)
    if is_terminal(target):
        if stream is not None:
            kwargs["file"] = stream
        return _tqdm(*args, **kwargs)
    kwargs.pop("file", None)
    return StepwiseBar(*args, percent_step=percent_step, stream=target, **kwargs)
