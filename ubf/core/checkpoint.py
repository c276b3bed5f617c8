"""Checkpoints: one plain dict per file, written atomically, loaded without running code.

A checkpoint holds at least `stage` ("unmixing" or "diffusion"), `model`, `config`; training
checkpoints add `optimizer`, `scheduler`, `epoch`/`step` and `rng`. The file is written to a
temporary name in the same folder, flushed to disk and renamed, so a crash mid-write leaves the
previous checkpoint intact.

Loading uses PyTorch's safe loader (`weights_only=True`): a file can only hold tensors, numbers,
strings, lists, tuples, dicts and None, so a shared checkpoint cannot run code. Everything we write
is of those types (RNG states included, see `capture_rng_state`). Checkpoints of this project written
before that rule hold the numpy RNG state as an array; they load through an allowlist of exactly the
numpy names a plain array needs. A file that needs anything else is refused in one line unless the
user runs inside `trust_checkpoint_code(True)` (the CLIs' `--trust-checkpoint-code`).

What a safe file holds is checked once here, before any stage touches it (`check_entries`): a dict
with a dict of tensors under `model`, and the common entries (`config`, `optimizer`, `step`, ...) of
the right types. The stage's own checks (its config's values, the weights against the network they
must fit) follow in `pipeline.reference_checkpoints`, which every loader goes through. A file that is
no checkpoint at all (a MATLAB `.mat`, an image) is named for what it is.
"""
import contextlib
import contextvars
import os
import pickle
import random
import re
import shutil
import warnings
import zipfile

import numpy as np
import torch

from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder
from ubf.core.logs import get_logger

TRUST_FLAG = "--trust-checkpoint-code"
TRUST_HELP = ("load checkpoints that need Python's unsafe unpickler (they can run any code on this machine); "
              "only for files from a source you trust")
_TRUST_CODE = contextvars.ContextVar("trust_checkpoint_code", default=False)
_SAFE_LEAVES = (torch.Tensor, str, bytes, int, float, bool, complex, type(None), torch.Size, torch.dtype,
                torch.device)


@contextlib.contextmanager
def trust_checkpoint_code(enabled: bool = True):
    """Within this block, checkpoints the safe loader refuses are loaded with the unsafe one (a CLI flag)."""
    token = _TRUST_CODE.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


def add_trust_flag(parser) -> None:
    """Add `--trust-checkpoint-code` to an argparse parser of a CLI that reads checkpoints."""
    parser.add_argument(TRUST_FLAG, dest="trust_checkpoint_code", action="store_true", help=TRUST_HELP)


def to_safe(value):
    """`value` with numpy arrays as tensors and numpy scalars as Python numbers (what the safe loader reads)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, to_safe(v)) for k, v in value.items()) if type(value) is not dict \
            else {k: to_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_safe(v) for v in value)
    return value


def unsafe_entries(value, where: str = "") -> list[str]:
    """Paths inside `value` of objects the safe loader would refuse (empty: the dict is safe to save)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in unsafe_entries(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in unsafe_entries(v, f"{where}[{i}]")]
    return [] if isinstance(value, _SAFE_LEAVES) else [f"{where} ({type(value).__name__})"]


def save_checkpoint(state: dict, path: str) -> None:
    """Write `state` to `path` atomically (temp file + fsync + rename); numpy values become tensors."""
    state = to_safe(state)
    bad = unsafe_entries(state)
    if bad:  # a programming error: the file could not be read back with the safe loader
        raise TypeError(f"checkpoint entries the safe loader cannot read: {', '.join(bad[:5])}")
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


def _legacy_numpy_globals() -> list:
    """The numpy names that a pickled plain numpy array (our pre-safe-loader RNG state) needs, nothing more."""
    names = [np.ndarray, np.dtype]
    reconstruct = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    names.append(reconstruct._reconstruct)
    names += [type(np.dtype(t)) for t in (np.uint32, np.uint8, np.int64, np.float64, np.float32)]
    return names


def _refusal(err: Exception) -> str | None:
    """Why the safe loader refused a file (None when the file is simply unreadable)."""
    text = str(err)
    if "Weights only load failed" not in text and "weights_only" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text)
    return f"'{found.group(1)}'" if found else "pickle operations beyond tensors, numbers, strings, lists and dicts"


def _safe_load(path: str, map_location, allowed: list | None = None):
    with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: our refusal says it all
        warnings.simplefilter("ignore", UserWarning)
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, map_location=map_location, weights_only=True)


ZIP_MAGIC, PICKLE_PROTOCOL_MARK = b"PK\x03\x04", 0x80
KNOWN_FORMATS = ((b"MATLAB", "a MATLAB .mat file (data such as HSI cubes or abundances)"),
                 (b"\x89HDF\r\n\x1a\n", "an HDF5 file (data; MATLAB v7.3 .mat files are HDF5)"),
                 (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF file"),
                 (b"MM\x00*", "a TIFF file"), (b"{", "a JSON file (a config?)"))


def what_file_is(path: str) -> str | None:
    """A description of a file that is not a checkpoint by its first bytes, else None (it may be one).

    torch.save writes a zip archive; older checkpoints are a pickle (first byte 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(ZIP_MAGIC) or (head[:1] and head[0] == PICKLE_PROTOCOL_MARK):
        return None
    for magic, description in KNOWN_FORMATS:
        if head.lstrip()[:len(magic)] == magic:
            return description
    return "not a checkpoint: a .pth file of torch.save is a zip archive or a pickle" + (
        "; this one is empty" if not head else f"; this one starts with {head[:8]!r}")


def load_file(path: str, map_location="cpu"):
    """What `path` holds, read with the safe loader; a file that needs code is refused (see module doc)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    kind = what_file_is(path)
    if kind is not None:
        raise UserError(f"{path}: {kind}" if kind.startswith("not a checkpoint")
                        else f"{path}: is {kind}, not a checkpoint (.pth)")
    unreadable = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError,
                  TypeError, ImportError, IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError)
    try:
        try:
            return _safe_load(path, map_location)
        except pickle.UnpicklingError as err:
            needs = _refusal(err)
            if needs is None:
                raise
            try:  # a checkpoint of ours from before the safe loader: its numpy RNG state is a plain array
                return _safe_load(path, map_location, _legacy_numpy_globals())
            except pickle.UnpicklingError:
                pass
            if not _TRUST_CODE.get():
                raise UserError(f"{path}: refused: loading it would run code stored in the file (it needs "
                                f"{needs}); pass {TRUST_FLAG} only if you trust where it came from") from None
            get_logger().warning("%s: loaded with the unsafe loader (%s): it could run code", path, TRUST_FLAG)
            return torch.load(path, map_location=map_location, weights_only=False)
    except UserError:
        raise
    except unreadable as err:
        message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise UserError(f"{path}: not a readable checkpoint ({message})") from None


def is_reference_unmixing(state) -> bool:
    """A stage-1 checkpoint of the reference code: {"epoch", "model"} with its key names."""
    if not isinstance(state, dict) or "stage" in state or not isinstance(state.get("model"), dict):
        return False
    return any(k.split("module.")[-1] == "decoderlayer.weight" for k in state["model"])


def load_checkpoint(path: str, stage: str | None = None, map_location="cpu", reference_ok: bool = False) -> dict:
    """Load a checkpoint dict; a missing, truncated, unsafe or other-stage file is a one-line user error.

    `reference_ok`: a stage-1 checkpoint of the reference code comes back as it is, marked
    `format: "reference"` (see ubf/core/reference_format.py); otherwise it is refused with a hint.
    """
    state = load_file(path, map_location)
    if is_reference_unmixing(state):
        if reference_ok and stage in (None, "unmixing"):
            check_tensors(state["model"], path)
            return dict(state, stage="unmixing", format="reference")
        raise UserError(f"{path}: a stage-1 checkpoint of the reference code ({{epoch, model}}); it can be used "
                        "by `Unmixing.py infer`, `Evaluate.py reconstruction` and `Synthesis.py`, not here")
    if isinstance(state, dict) and "model" not in state and any(str(k).startswith(("denoise_fn.", "module.denoise_fn."))
                                                                for k in state):
        raise UserError(f"{path}: a DDPM weights file of the reference code (*_gen.pth); pass it to `Diffusion.py "
                        "--resume` (with its *_opt.pth beside it to continue training)")
    if not isinstance(state, dict) or "model" not in state:
        what = "" if isinstance(state, dict) else f"; it holds a {type(state).__name__}, not a dict"
        raise UserError(f"{path}: not a checkpoint of this project (no 'model' entry{what})")
    if stage is not None and state.get("stage") != stage:
        found = state.get("stage", "unknown")
        raise UserError(f"{path}: is a '{found}' checkpoint, expected a '{stage}' checkpoint")
    return check_entries(state, path)


def check_tensors(weights, path: str, entry: str = "model") -> dict:
    """`weights` must be a dict of tensors under string keys (which ones: the stage's loader checks)."""
    if not isinstance(weights, dict):
        raise UserError(f"{path}: '{entry}' must be a dict of tensors, got {type(weights).__name__}")
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: '{entry}' entry {key!r} is a {type(value).__name__}, not a tensor")
    return weights


# entry -> (types allowed besides None, smallest integer value or None)
_ENTRY_TYPES = {"config": (dict, None), "optimizer": (dict, None), "rng": (dict, None), "best": (dict, None),
                "partial": (dict, None), "scaler": (dict, None), "step": (int, 0), "samples_seen": (int, 0),
                "epoch": (int, -1), "seed": (int, None), "out_bands": (int, 1), "in_channels": (int, 1),
                "band_indices": ((list, tuple), None), "generator": (torch.Tensor, None)}


def check_entries(state: dict, path: str) -> dict:
    """The common entries of one of our checkpoints, each of its type (one line naming the first that is not)."""
    check_tensors(state["model"], path)
    if state.get("ema") is not None:
        check_tensors(state["ema"], path, "ema")
    for entry, (kind, low) in _ENTRY_TYPES.items():
        value = state.get(entry)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = {int: "an integer", dict: "a dict", torch.Tensor: "a tensor"}.get(kind, "a list")
            raise UserError(f"{path}: '{entry}' must be {names}, got {type(value).__name__} {value!r:.40}")
        if low is not None and value < low:
            raise UserError(f"{path}: '{entry}' must be at least {low}, got {value}")
    return state


def capture_rng_state() -> dict:
    """All random number generator states that training touches, as tensors, numbers and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only, the one its dropout draws from: asking for every GPU's state would open a
        # CUDA context on each of them from every DDP process, and could not be restored with fewer GPUs
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`; also reads the tuple/array form of older checkpoints."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        numpy_state = (numpy_state["kind"], keys.astype(np.uint32), int(numpy_state["pos"]),
                       int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"]))
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:  # applied to the current GPU (lazily, when CUDA starts later)
        torch.cuda.set_rng_state(state["cuda_device"])
    elif state.get("cuda"):  # older checkpoints: one state per GPU of the machine that wrote them
        index = torch.cuda.current_device()
        if index < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][index])


def check_rng_state(state, path: str, entry: str = "rng") -> None:
    """Refuse an RNG record that `restore_rng_state` cannot take, by trying it and putting back the current one."""
    if state is None:
        return
    current = capture_rng_state()
    try:
        restore_rng_state(state)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
        raise UserError(f"{path}: '{entry}' is not a random-generator record this project writes "
                        f"({type(err).__name__})") from None
    finally:
        restore_rng_state(current)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
