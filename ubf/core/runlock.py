"""One writer per output folder: a lock file holding the writer's process id and machine name.

Two runs into one folder would replace each other's files and interleave their logs, so the second
is refused in one line. A run killed with SIGKILL cannot remove its lock; the lock is therefore
stale, and taken over, when its process is gone from this machine (or the file is empty or
unreadable). A lock from another machine cannot be checked: the message names the file to delete
once that run is known to be over.

The lock file is written complete under a temporary name and linked into place, so another process
never reads it half written. The processes of one torchrun job (same rendezvous id, master address
and port) share a folder: the first one's lock admits the others, and goes when that process ends
(its shares are even, so the others end about then). Within one process the lock is
re-entrant (a CLI and the function it calls may both take it); it goes when the outermost holder
releases it.
"""
import atexit
import json
import os
import socket
import time

from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder, process_alive

LOCK_NAME = ".run.lock"
_HELD: dict[str, int] = {}  # lock path -> how many holders in this process


def torchrun_job() -> str | None:
    """An id shared by every process of this torchrun job, None outside one (or with a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    return "{}@{}:{}".format(os.environ.get("TORCHELASTIC_RUN_ID", ""), os.environ.get("MASTER_ADDR", ""),
                             os.environ.get("MASTER_PORT", ""))


class RunLock:
    """`with RunLock(folder, "training"):` holds `folder/.run.lock` for the block (and until exit)."""

    def __init__(self, folder: str, what: str = "run"):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.what = what
        self.held = False
        self._key = os.path.abspath(self.path)

    def acquire(self) -> "RunLock":
        if _HELD.get(self._key):  # this process holds it already (an outer call)
            _HELD[self._key] += 1
            self.held = True
            return self
        ensure_folder(self.folder)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "job": torchrun_job()}
        for _ in range(3):
            try:
                self._create(record)
            except FileExistsError:
                if self._refuse_unless_stale():
                    self.held = True  # another process of this torchrun job holds it for all of them
                    _HELD[self._key] = 1
                    self._shared = True
                    return self
                continue
            except OSError as err:
                raise UserError(f"{self.folder}: cannot create the run lock ({err.strerror or err})") from None
            self.held, self._shared = True, False
            _HELD[self._key] = 1
            atexit.register(self.release)
            return self
        raise UserError(f"{self.path}: could not take the run lock (another run keeps taking it)")

    def _create(self, record: dict) -> None:
        """Create the lock file with its whole content at once (FileExistsError when it exists)."""
        tmp = f"{self.path}.{os.getpid()}.new"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        try:
            os.link(tmp, self.path)  # atomic, and fails when the lock exists
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create (a kill now leaves it empty)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
        finally:
            try:
                os.remove(tmp)
            except OSError:
                pass

    def _refuse_unless_stale(self) -> bool:
        """Remove a stale lock (False: try again); True when a process of our torchrun job holds it;
        refuse, in one line, when another writer is alive (or cannot be checked)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            pid, host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return False  # released meanwhile: try again
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            owner, pid, host = {}, -1, socket.gethostname()  # empty or torn: its writer died creating it
        job = torchrun_job()
        if job is not None and owner.get("job") == job:
            return True
        here = host == socket.gethostname()
        if here and (pid == os.getpid() or not process_alive(pid)):
            # our own process (an earlier call that ended with an error) or a killed run
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return False
        where = f"process {pid}" + ("" if here else f" on {host}")
        since = f" since {owner['started']}" if owner.get("started") else ""
        extra = "" if here else f"; delete {self.path} if that run is over"
        raise UserError(f"{self.folder}: in use by another {owner.get('what', 'run')} ({where}{since}); "
                        f"wait for it to finish or choose another output folder{extra}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        count = _HELD.get(self._key, 0) - 1
        if count > 0:
            _HELD[self._key] = count
            return
        _HELD.pop(self._key, None)
        if getattr(self, "_shared", False):
            return
        _remove_if_mine(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_if_mine(path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            mine = int(json.load(f).get("pid", -1)) == os.getpid()
        if mine:
            os.remove(path)
    except (OSError, ValueError, AttributeError, TypeError):
        pass


def release_lock_of(folder: str) -> None:
    """Remove `folder`'s lock if this process holds it (for code that took it through another call)."""
    path = os.path.join(folder, LOCK_NAME)
    _HELD.pop(os.path.abspath(path), None)
    _remove_if_mine(path)
