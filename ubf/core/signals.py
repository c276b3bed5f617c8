"""Ctrl-C and SIGTERM as a request to stop between training steps, shared by both training loops.

A scheduler's SIGTERM or the user's Ctrl-C during training should not throw away the steps since the
last checkpoint, nor leave a half-updated model: `StopRequest` records the signal, the loop finishes
its current step, writes a checkpoint that resumes exactly and ends with KeyboardInterrupt (the CLIs'
`cli_main` turns that into "interrupted", exit status 130).
"""
import contextlib
import signal
import threading
import time

from ubf.core.logs import get_logger


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request honoured after the current step.

    Stopping between steps, never inside `optimizer.step()`, keeps weights, optimizer state and step
    count consistent. A second signal aborts at once (the checkpoints already on disk stay intact),
    unless it comes within `REPEAT_GRACE_S` of the first: torchrun passes the terminal's Ctrl-C on to
    its workers, which therefore see it twice. Signal handlers can only be set from the main thread;
    elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_GRACE_S = 2.0

    def __init__(self):
        self.requested = False
        self._first = 0.0
        self.loader_died = False  # a DataLoader worker ended by the same Ctrl-C
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first < self.REPEAT_GRACE_S:
                return  # the same Ctrl-C, passed on by the launcher
            self._restore()
            raise KeyboardInterrupt
        self.requested, self._first = True, time.monotonic()
        get_logger().warning("%s received: finishing the current step, then writing a checkpoint "
                             "(press Ctrl-C again to abort at once)", signal.Signals(signum).name)


@contextlib.contextmanager
def signals_ignored():
    """Ignore Ctrl-C and SIGTERM inside the block (writing the checkpoint of an interrupted run)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in StopRequest.SIGNALS} if main_thread else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: workers ignore Ctrl-C and SIGTERM.

    A terminal's Ctrl-C reaches every process of the group, DataLoader workers included; a worker
    that dies of it takes the batch in flight with it. Ignoring it lets the main process finish its
    step with the workers alive; they still end with the main process (PyTorch watches the parent).
    """
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_PR_SET_PDEATHSIG = 1


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: the worker is killed as soon as the process that started it dies.

    PyTorch's workers notice a dead parent only between items (a check every few seconds); one that
    is decoding or blocked on a full queue when its parent is killed with SIGKILL stays behind as an
    orphan. Linux's PR_SET_PDEATHSIG makes the kernel send SIGKILL instead; elsewhere this does nothing.
    """
    import ctypes
    import os
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def worker_init(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn` of training: ignore Ctrl-C/SIGTERM and end with the parent process."""
    ignore_stop_signals(worker_id)
    die_with_parent(worker_id)
