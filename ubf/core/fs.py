"""Creating output folders and writing files with one-line errors instead of tracebacks."""
import contextlib
import os
import re

from ubf.core.errors import UserError


def ensure_folder(folder: str) -> str:
    """Create `folder` (and parents) if needed; a path blocked by a file or without permission is a user error."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder}: cannot create the output folder, a file is in the way") from None
    except OSError as err:
        raise UserError(f"{folder}: cannot create the output folder ({err.strerror or err})") from None
    return folder


def require_folder(path: str, what: str = "folder", hint: str = "") -> str:
    """`path` if it is a folder; otherwise one line that says whether it is a file or missing."""
    if os.path.isdir(path):
        return path
    tail = f" ({hint})" if hint else ""
    if os.path.exists(path):
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise UserError(f"{path}: is a file, but {article} {what} is expected here{tail}")
    raise UserError(f"{path}: {what} not found{tail}")


def check_output_path(folder: str) -> str:
    """Refuse, before any work and without creating anything, an output folder that cannot be made or written:
    a regular file at the path or above it, or a nearest existing folder without write permission."""
    path = os.path.abspath(folder)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{folder}: is a file, not a folder; choose another output folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{folder}: cannot create the output folder, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: the output folder is not writable (Permission denied on {existing})")
    return folder


def writable_folder(folder: str) -> str:
    """Create `folder` if needed and check that files can be written there, before any work starts.

    A regular file at the path (or above it), a read-only folder or a full disk is a one-line error.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder}: is a file, not a folder; choose another output folder")
    ensure_folder(folder)
    probe = os.path.join(folder, f".write_test{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("ok")
    except OSError as err:
        raise UserError(f"{folder}: the output folder is not writable ({err.strerror or err})") from None
    finally:
        _remove_quietly(probe)
    return folder


def flat_name(path: str, root: str) -> str:
    """A flat, unique output stem: the path below `root` without extension, separators turned into '__'."""
    relative = os.path.splitext(os.path.relpath(path, root))[0]
    return relative.replace(os.sep, "__").replace("/", "__")


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a hidden temporary path beside `path`; rename it onto `path` when the block succeeds.

    Whatever goes wrong while writing (disk full, no permission, Ctrl-C) removes the temporary file,
    so `path` keeps its previous content; OS errors become one-line user errors.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_folder(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}{TEMP_MARK}{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise UserError(f"{path}: could not write ({err.strerror or err})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


TEMP_MARK = ".tmp"
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(\.\w+)?$")


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete hidden `.NAME.tmpPID` files of writers that are gone (a killed run); return their paths.

    A file whose process still runs on this machine is left alone: it may be another writer's.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = TEMP_FILE.match(name)
        if not match or process_alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            _remove_quietly(path)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (the current one counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def check_run_name(name, source: str = "config") -> str:
    """A run name that stays one folder below the output root: no path separator, not '.', '..' or empty.

    `--set name=../../x` (or a config's "name") would otherwise put the run folder outside --out."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{source}: 'name' must be a non-empty run name, got {name!r}")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(sep in name for sep in separators) or "\x00" in name:
        raise UserError(f"{source}: 'name' is {name!r}; a run name is one folder name (no '/', not '.' or '..'), "
                        "so that the run folder stays inside the output folder")
    return name


def refuse_links_below(root: str, folders) -> None:
    """Refuse output sub-folders of `root` that are symbolic links: writing or replacing files there would
    touch another folder (outputs stay inside the output folder; a link at `root` itself is the user's choice)."""
    for folder in folders:
        path = folder
        while os.path.abspath(path) != os.path.abspath(root) and path:
            if os.path.islink(path):
                raise UserError(f"{path}: is a symbolic link; outputs are written only inside {root}, never "
                                "through a link (remove the link or choose another output folder)")
            path = os.path.dirname(path)
