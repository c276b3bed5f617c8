"""Checkpoints: one plain dict per file, written atomically, checked on load.

A checkpoint holds at least `stage` ("unmixing" or "diffusion"), `model`, `config`; training
checkpoints add `optimizer`, `scheduler`, `epoch`/`step` and `rng`. The file is written to a
temporary name in the same folder, flushed to disk and renamed, so a crash mid-write leaves the
previous checkpoint intact.
"""
import os
import pickle
import random
import shutil
import zipfile

import numpy as np
import torch

from core.errors import UserError
from core.fs import ensure_folder


def save_checkpoint(state: dict, path: str) -> None:
    """Write `state` to `path` atomically (temp file + fsync + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    ensure_folder(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120] or type(err).__name__
        if isinstance(err, RuntimeError) and shutil.disk_usage(folder).free < (1 << 20):
            reason = f"No space left on device; torch.save: {reason}"
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"{path}: could not write checkpoint ({reason})") from None
    except BaseException:  # Ctrl-C or a programming error mid-write: no half-written file stays behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, stage: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint dict; a missing, truncated or other-stage file is a one-line user error."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    if stage is not None and state.get("stage") != stage:
        found = state.get("stage", "unknown")
        raise UserError(f"{path}: is a '{found}' checkpoint, expected a '{stage}' checkpoint")
    return state


def capture_rng_state() -> dict:
    """All random number generator states that training touches."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
