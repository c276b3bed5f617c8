"""Creating output folders with one-line errors instead of tracebacks."""
import os

from core.errors import UserError


def ensure_folder(folder: str) -> str:
    """Create `folder` (and parents) if needed; a path blocked by a file or without permission is a user error."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder}: cannot create the output folder, a file is in the way") from None
    except OSError as err:
        raise UserError(f"{folder}: cannot create the output folder ({err.strerror or err})") from None
    return folder


def flat_name(path: str, root: str) -> str:
    """A flat, unique output stem: the path below `root` without extension, separators turned into '__'."""
    relative = os.path.splitext(os.path.relpath(path, root))[0]
    return relative.replace(os.sep, "__").replace("/", "__")
