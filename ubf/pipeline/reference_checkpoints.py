"""Checkpoints of the reference code in, checkpoints in the reference's format out.

    python -m ubf.pipeline.export_reference unmixing CKPT OUT.pth
    python -m ubf.pipeline.export_reference diffusion CKPT OUT_PREFIX [--ema]   (writes OUT_PREFIX_gen.pth, _opt.pth)

In: `load_unmixing_checkpoint` turns the reference's stage-1 `{"epoch", "model"}` into a checkpoint
dict of ours (the reference stores no config: the paper's model settings are read from the tensor
shapes; the input bands are those MSF-Diff trains on, 7, 17, 27 in its channel order, which after the
first layer's channels are turned round to our R, G, B order (`swap_input_order`) reads [27, 17, 7],
or evenly spread ones when the cube has 27 bands or fewer; a file written by our export names its
own bands in `input_bands`); `load_diffusion_resume` turns a reference `I*_E*_gen.pth` + `I*_E*_opt.pth`
pair into a training state that `Diffusion.py -p train --resume` continues (the reference has no
EMA, AMP scaler or RNG states: the EMA starts from the weights and the random streams are seeded
from the run's seed and the step). The key names themselves live in `core.reference_format`.
"""
import copy
import os

import numpy as np

import torch

from ubf.core.checkpoint import check_rng_state, load_checkpoint, load_file, save_checkpoint
from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.core.reference_format import (ReferenceFormatError, diffusion_from_reference, diffusion_to_reference,
                                   optimizer_from_reference, optimizer_to_reference, unmixing_checkpoint_to_reference,
                                   unmixing_from_reference)
from ubf.core.validate import check_band_indices
from ubf.data.bands import evenly_spread_bands
from ubf.models.diffusion import NoiseSchedule
from ubf.models.sr3_unet import unet_from_config
from ubf.models.unmixing import build_unmixing_model
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS

GEN_SUFFIX, OPT_SUFFIX = "_gen.pth", "_opt.pth"


# stage 1 ----------------------------------------------------------------------------------------

def load_unmixing_checkpoint(path: str, for_model: bool = True) -> dict:
    """A stage-1 checkpoint dict of ours from `path`, which may also be a reference checkpoint.

    Every stage-1 loader (infer, Synthesis.py, Evaluate.py, export, resume) comes here, so this is
    where a checkpoint's structure, config values, band entries and weight shapes are checked, each in
    one line naming the file. `for_model`: the network will be built from it, so its config and band
    entries must be there (synthesis needs only the decoder weight).
    """
    state = load_checkpoint(path, "unmixing", reference_ok=True)
    if state.get("format") != "reference":
        if not for_model:
            return check_decoder_state(state, path)
        missing = [key for key in ("config", "out_bands", "band_indices") if key not in state]
        if missing or not isinstance(state["config"], dict) or "model" not in state["config"]:
            raise UserError(f"{path}: an incomplete unmixing checkpoint (no {(missing or ['config.model'])[0]!r})")
        return check_unmixing_state(state, path)
    try:
        weights, model_cfg = unmixing_from_reference(state["model"])
    except ReferenceFormatError as err:
        raise UserError(f"{path}: a reference stage-1 checkpoint that cannot be read: {err}") from None
    cfg = copy.deepcopy(UNMIXING_DEFAULTS)
    cfg["model"].update(model_cfg)
    out_bands = int(weights["decoder.weight"].shape[0])
    bands = reference_input_bands(state, out_bands, path)
    cfg["data"]["bands"] = bands
    get_logger().info("%s: a checkpoint of the reference code (epoch %s, %d bands); input bands %s (the "
                      "reference's channel order %s)", path, state.get("epoch"), out_bands, "/".join(map(str, bands)),
                      "/".join(map(str, bands[::-1])))
    with torch.device("meta"):
        network = build_unmixing_model(cfg["model"], int(weights["encoder.stem.weight"].shape[1]), out_bands)
    check_state_fits(weights, network, path, "the reference's UnmixingAE")
    return {"stage": "unmixing", "format": "reference", "model": weights, "config": cfg,
            "epoch": int(state.get("epoch", 1)) - 1, "band_indices": list(bands),
            "in_channels": int(weights["encoder.stem.weight"].shape[1]), "out_bands": out_bands, "wavelengths": None}


def check_decoder_state(state: dict, path: str) -> dict:
    """What synthesis reads of a stage-1 checkpoint: a (C, K, 1, 1) decoder weight, a config whose
    `data` section is a dict, and wavelengths of C numbers (or none)."""
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state["model"].items()}
    weight = weights.get("decoder.weight")
    if weight is not None and (weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1) or min(weight.shape) < 1):
        raise UserError(f"{path}: 'decoder.weight' is {tuple(weight.shape)}, expected (C, K, 1, 1)")
    config = state.get("config", {})
    if not isinstance(config.get("data", {}), dict):
        raise UserError(f"{path}: the checkpoint's config: 'data' must be a dict, got {type(config['data']).__name__}")
    if weight is not None:
        state["wavelengths"] = checked_wavelengths(state.get("wavelengths"), int(weight.shape[0]), path)
    return state


def checked_wavelengths(value, bands: int, path: str):
    """None, or `bands` finite wavelengths as floats (nm); anything else is one line."""
    if value is None:
        return None
    try:
        array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise UserError(f"{path}: 'wavelengths' must be {bands} numbers (nm), got {value!r:.60}") from None
    if array.size != bands or not np.all(np.isfinite(array)):
        raise UserError(f"{path}: 'wavelengths' must be {bands} finite numbers (nm), got {array.size}")
    return array


def check_unmixing_state(state: dict, path: str) -> dict:
    """A checkpoint of ours that a network is built from: its config checked as `Unmixing.py train` checks
    a config (keys added since it was written take their defaults), its band entries in range, its weights
    of the names and shapes the config's network has."""
    from ubf.pipeline.unmixing_config import load_unmixing_config
    try:  # checked, not replaced: the network is built from the config as it was saved
        load_unmixing_config(None, base=copy.deepcopy(state["config"]), profile="faithful")
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    out_bands, in_channels = state["out_bands"], state.get("in_channels", 3)
    bands = state["band_indices"]
    if len(bands) != in_channels:
        raise UserError(f"{path}: 'band_indices' names {len(bands)} bands for {in_channels} input channels")
    try:
        state["band_indices"] = check_band_indices(bands, out_bands, f"{path}: 'band_indices'")
    except UserError as err:
        raise UserError(str(err)) from None
    state["wavelengths"] = checked_wavelengths(state.get("wavelengths"), out_bands, path)
    moments = state.get("input_moments")
    if moments is not None:
        try:
            array = np.asarray([np.asarray(m.numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
                                for m in moments])
        except (TypeError, ValueError):
            array = np.zeros(0)
        if array.shape != (2, in_channels) or not np.all(np.isfinite(array)):
            raise UserError(f"{path}: 'input_moments' must be the training inputs' mean and std, 2 x {in_channels} "
                            "finite numbers")
    with torch.device("meta"):
        network = build_unmixing_model(state["config"]["model"], in_channels, out_bands)
    check_state_fits(state["model"], network, path, "the network of its config (model.*, out_bands)")
    return state


def check_state_fits(weights: dict, network: torch.nn.Module, path: str, what: str) -> None:
    """Refuse weights whose names or shapes are not those of `network` (built on the meta device: no memory)."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k[len("module."):] if k.startswith("module.") else k: tuple(v.shape) for k, v in weights.items()}
    if found == expected:
        return
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        detail = f"no '{missing[0]}'" if missing else f"an unknown '{extra[0]}'"
    else:
        key = sorted(k for k in found if found[k] != expected[k])[0]
        detail = f"'{key}' is {found[key]}, expected {expected[key]}"
    raise UserError(f"{path}: the weights do not fit {what}: {detail}")


# The bands MSF-Diff's HSIDataset feeds the network, channel 0 first (msf:core/loaddata.py:16-22).
REFERENCE_TRAINING_BANDS = (7, 17, 27)
EXPORT_BANDS_KEY = "input_bands"  # our export's record of the bands, in the file's own channel order


def reference_input_bands(state: dict, out_bands: int, path: str) -> list[int]:
    """Our (R, G, B order) band list of a reference-format stage-1 checkpoint: its `input_bands` when our
    export wrote them, else MSF-Diff's 7, 17, 27 (reversed, as the first layer is), else evenly spread."""
    recorded = state.get(EXPORT_BANDS_KEY)
    if recorded is not None:
        if not isinstance(recorded, (list, tuple)) or len(recorded) != 3 or \
                not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < out_bands for b in recorded):
            raise UserError(f"{path}: '{EXPORT_BANDS_KEY}' must be 3 band indices below {out_bands}, got {recorded!r}")
        return [int(b) for b in recorded][::-1]
    if max(REFERENCE_TRAINING_BANDS) < out_bands:
        return list(REFERENCE_TRAINING_BANDS)[::-1]
    return evenly_spread_bands(out_bands)


# stage 2 ----------------------------------------------------------------------------------------

def reference_gen_path(path: str) -> str | None:
    """The `*_gen.pth` that `path` names (the file itself or the reference's `resume_state` prefix), else None."""
    if path.endswith(GEN_SUFFIX) and os.path.isfile(path):
        return path
    if not path.endswith(GEN_SUFFIX) and os.path.isfile(path + GEN_SUFFIX):
        return path + GEN_SUFFIX
    return None


def read_reference_weights(gen_path: str) -> dict:
    """Our UNet state dict from a reference `*_gen.pth`."""
    state = load_file(gen_path)
    if not isinstance(state, dict):
        raise UserError(f"{gen_path}: not a weights file (a dict of tensors)")
    try:
        return diffusion_from_reference(state)
    except ReferenceFormatError as err:
        raise UserError(f"{gen_path}: {err}") from None


def check_weights_fit(weights: dict, model_cfg: dict, path: str, what: str = "the weights") -> int:
    """Refuse weights whose names or shapes differ from the UNet of `model_cfg` (built without memory);
    returns the number of parameter tensors (what the optimizer state must cover)."""
    from ubf.pipeline.diffusion_sample import plain_state_dict
    with torch.device("meta"):
        unet = unet_from_config(model_cfg)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in plain_state_dict(weights).items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise UserError(f"{path}: {what} do not fit the config's model.unet / diffusion.image_size "
                        f"({len(wrong)} tensors differ, e.g. '{wrong[0]}')")
    return sum(1 for _ in unet.parameters())


TRAINING_ENTRIES = ("optimizer", "step")


def load_diffusion_checkpoint(path: str, training: bool = False) -> dict:
    """One of our stage-2 checkpoints, checked once for every loader (`-p train --resume`, `-p val`, export):
    its config as `Diffusion.py` checks a config (keys added since take their defaults), its weights (and
    EMA) against the UNet of that config, and for `training` the optimizer and counters it resumes from."""
    from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS, KNOWN_UNUSED, validate
    from ubf.core.config import merge_config
    state = load_checkpoint(path, "diffusion")
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{path}: an incomplete diffusion checkpoint (no 'config' with a 'model' section)")
    config = copy.deepcopy(config)
    config.pop("profile", None)  # what training adds to the config it saves
    if isinstance(config["model"].get("diffusion"), dict):
        config["model"]["diffusion"].pop("abundance_range", None)
    try:
        checked = validate(merge_config(copy.deepcopy(DIFFUSION_DEFAULTS), config, source="the checkpoint's config",
                                        known_unused=KNOWN_UNUSED),
                           "the checkpoint's config")
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    parameters = check_weights_fit(state["model"], checked["model"], path)
    if state.get("ema") is not None:
        check_weights_fit(state["ema"], checked["model"], path, "EMA weights")
    if training:
        missing = [key for key in TRAINING_ENTRIES if state.get(key) is None]
        if missing:
            raise UserError(f"{path}: not a training checkpoint (no '{missing[0]}'); it can be sampled from "
                            "(-p val) but training cannot continue from it")
        groups = state["optimizer"].get("param_groups")
        if not isinstance(groups, list) or not isinstance(state["optimizer"].get("state"), dict) or \
                sum(len(g.get("params", [])) if isinstance(g, dict) else 0 for g in groups) != parameters:
            raise UserError(f"{path}: its optimizer state does not match its weights ({parameters} parameter "
                            "tensors); training cannot continue from it")
        generator = state.get("generator")
        if generator is not None:
            try:
                torch.Generator().set_state(generator)
            except (TypeError, RuntimeError, ValueError):
                raise UserError(f"{path}: 'generator' is not a random-generator state (a uint8 tensor)") from None
        check_rng_state(state.get("rng"), path)
        for rank, record in enumerate(state.get("rng_ranks") or []):
            check_rng_state(record, path, f"rng_ranks[{rank}]")
    return state


def load_diffusion_resume(path: str, cfg: dict) -> dict | None:
    """A training state from a reference `*_gen.pth` + `*_opt.pth` pair, or None when `path` is not one."""
    gen_path = reference_gen_path(path)
    if gen_path is None:
        return None
    opt_path = gen_path[:-len(GEN_SUFFIX)] + OPT_SUFFIX
    if not os.path.isfile(opt_path):
        raise UserError(f"{gen_path}: the reference's optimizer file {os.path.basename(opt_path)} is not beside it; "
                        "training cannot continue without it (sampling with -p val can)")
    weights = read_reference_weights(gen_path)
    parameters = check_weights_fit(weights, cfg["model"], gen_path)
    try:
        optimizer, epoch, step = optimizer_from_reference(load_file(opt_path))
    except ReferenceFormatError as err:
        raise UserError(f"{opt_path}: {err}") from None
    if sum(len(group.get("params", [])) for group in optimizer.get("param_groups", [])) != parameters:
        raise UserError(f"{opt_path}: its optimizer state does not match the weights of {os.path.basename(gen_path)}")
    get_logger().info("%s: reference checkpoint at iteration %d, epoch %d; EMA starts from these weights, random "
                      "streams from the seed and the step", gen_path, step, epoch)
    return {"stage": "diffusion", "format": "reference", "model": weights, "ema": None, "optimizer": optimizer,
            "step": step, "epoch": epoch, "samples_seen": None,  # set by training from the epoch or the step
            "config": cfg}


# export -----------------------------------------------------------------------------------------

def _refuse_existing(paths: list[str], overwrite: bool) -> None:
    taken = [p for p in paths if os.path.exists(p)]
    if taken and not overwrite:
        raise UserError(f"{taken[0]}: exists already; pass --overwrite to replace it")


def export_unmixing(ckpt: str, out: str, overwrite: bool = False) -> str:
    """Write our stage-1 checkpoint `ckpt` as the reference's `{"epoch", "model"}` file `out`.

    The file also names its input bands (`input_bands`, in its own channel order: ours reversed, as
    the first layer is), which the reference's loaders ignore and ours read back."""
    state = load_unmixing_checkpoint(ckpt)
    try:
        reference = unmixing_checkpoint_to_reference(state)
    except ReferenceFormatError as err:
        raise UserError(f"{ckpt}: {err}") from None
    reference[EXPORT_BANDS_KEY] = [int(b) for b in state["band_indices"]][::-1]
    _refuse_existing([out], overwrite)
    save_checkpoint(reference, out)
    return out


def export_diffusion(ckpt: str, prefix: str, ema: bool = False, overwrite: bool = False) -> tuple[str, str]:
    """Write our stage-2 checkpoint `ckpt` as the reference's `<prefix>_gen.pth` and `<prefix>_opt.pth`.

    The generator holds the trained weights (`ema=True`: the EMA weights, for sampling only) and the
    training schedule's buffers; the optimizer file holds the Adam state, epoch and iteration.
    """
    state = load_diffusion_checkpoint(ckpt, training=True)
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    if ema and state.get("ema") is None:
        get_logger().warning("%s: no EMA weights; exporting the trained weights", ckpt)
    schedule = NoiseSchedule.from_config(state["config"]["model"]["beta_schedule"]["train"])
    gen_path, opt_path = prefix + GEN_SUFFIX, prefix + OPT_SUFFIX
    _refuse_existing([gen_path, opt_path], overwrite)
    save_checkpoint(diffusion_to_reference(weights, schedule), gen_path)
    save_checkpoint(optimizer_to_reference(state["optimizer"], state.get("epoch", 0), state["step"]), opt_path)
    return gen_path, opt_path
