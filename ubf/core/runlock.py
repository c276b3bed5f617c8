"""One writer per run folder: a lock file holding the writer's process id and machine name.

Two trainings into one folder would replace each other's checkpoints and interleave their logs, so
the second is refused in one line. A run killed with SIGKILL cannot remove its lock; the lock is
therefore stale, and taken over, when its process is gone from this machine (or the file is empty
or unreadable, as a kill during its creation leaves it). A lock from another machine cannot be
checked: the message names the file to delete once that run is known to be over.
"""
import atexit
import json
import os
import socket
import time

from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder, process_alive

LOCK_NAME = ".run.lock"


class RunLock:
    """`with RunLock(folder, "training"):` holds `folder/.run.lock` for the block (and until exit)."""

    def __init__(self, folder: str, what: str = "run"):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.what = what
        self.held = False

    def acquire(self) -> "RunLock":
        ensure_folder(self.folder)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._refuse_unless_stale()
                continue
            except OSError as err:
                raise UserError(f"{self.folder}: cannot create the run lock ({err.strerror or err})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise UserError(f"{self.path}: could not take the run lock (another run keeps taking it)")

    def _refuse_unless_stale(self) -> None:
        """Remove a stale lock; refuse, in one line, when its writer is alive (or cannot be checked)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            pid, host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = {}, -1, socket.gethostname()  # empty or torn: its writer died creating it
        here = host == socket.gethostname()
        if here and (pid == os.getpid() or not process_alive(pid)):
            # our own process (an earlier call that ended with an error) or a killed run
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return
        where = f"process {pid}" + ("" if here else f" on {host}")
        since = f" since {owner['started']}" if owner.get("started") else ""
        extra = "" if here else f"; delete {self.path} if that run is over"
        raise UserError(f"{self.folder}: in use by another {owner.get('what', 'run')} ({where}{since}); "
                        f"wait for it to finish or choose another output folder{extra}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            with open(self.path, encoding="utf-8") as f:
                mine = int(json.load(f).get("pid", -1)) == os.getpid()
            if mine:
                os.remove(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def release_lock_of(folder: str) -> None:
    """Remove `folder`'s lock if this process holds it (for code that took it through another call)."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            mine = int(json.load(f).get("pid", -1)) == os.getpid()
        if mine:
            os.remove(path)
    except (OSError, ValueError, AttributeError):
        pass
