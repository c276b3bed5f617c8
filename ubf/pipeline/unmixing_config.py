"""Defaults of the unmixing stage (the paper's settings) and the flag-to-key map of `Unmixing.py train`.

One config file serves `Unmixing.py train` (profile stage "unmixing") and `Unmixing.py infer` (stage
"infer", which reads the `infer` section). Precedence: defaults -> profile -> config file -> flags.
"""
import copy

from ubf.core.config import apply_overrides, merge_config, read_json_config, set_by_path
from ubf.core.errors import UserError
from ubf.core.fs import check_run_name
from ubf.core.logs import get_logger
from ubf.core.profiles import apply_profile, resolve_profile
from ubf.pipeline.unmixing_methods import METHODS, method_values
from ubf.core.validate import (FLOAT_NONNEGATIVE, FLOAT_POSITIVE, INT_ANY, INT_NONNEGATIVE, INT_POSITIVE, Number,
                           check_config, optional)

UNMIXING_DEFAULTS = {
    "name": "Chikusei_unmixing",
    "data": {
        "train": "dataset/trains",      # the reference's folders
        "val": "dataset/evals",
        "test": "dataset/tests",
        "key": None,                    # None: find Y / HSI / cube / ref / chikusei ...
        "bands": [53, 33, 14],          # R, G, B band indices, a preset name, or {"wavelengths": [...]}
        "wavelengths": None,            # for files without `wavelengths`: a list (nm) or "chikusei-59" / "chikusei-128"
        "input_norm": "bands",          # "bands": the 3 bands min-maxed together; "cube": as in the normalised cube
        "crop_size": None,              # None: whole files (the reference)
        "augment": False,
        "samples_per_epoch": None,      # None: one item per file per epoch
        "num_workers": 0,
    },
    "model": {
        "method": "network",            # a named recipe (ubf/pipeline/unmixing_methods.py); "network" is the paper's
        "num_endmembers": 5,
        "encoder": "sspn",              # "sspn" (paper) or "pixel_mlp" (departure, see README)
        "widths": [32, 64, 128, 96, 48],
        "n_blocks": 3,
        "res_scale": 0.1,
        "mlp_hidden": 64,
        "decoder_init": "random",       # "random" (paper), "distant_pixels", "vertices", "linear_simplex", "vca",
                                        # "nfindr" or "greedy_pixels" (departures, docs/stage1_quality.md)
        "head_init": "none",            # "fit": the affine head B [x; 1] fitted to the FCLS (or, with brightness
                                        # "cone", NNLS) abundances of the training pixels under the initial endmembers
        "brightness": False,            # True/"exp": a per-pixel brightness factor; "cone": s = sum relu(z) (departures)
        "simplex": "softmax",           # "softmax" (paper) or "relu": relu(z) / sum relu(z) (departure)
        "linear_skip": False,           # True: z = B [x; 1] + encoder(x), B from decoder_init linear_simplex
        "init_margin": 1.0,             # linear_simplex: how far the tetrahedron's faces sit beyond the data (x their distance)
    },
    # mse and near_data are departures: near_data weights a hinge on each endmember's angle to its nearest
    # training pixel beyond near_data_angle degrees (ubf/models/losses.py)
    "loss": {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015, "spectral_tv": 0.0, "mse": 0.0,
             "near_data": 0.0, "near_data_angle": 8.0},
    "train": {
        "epochs": 40,
        "batch_size": 16,
        "lr": 2e-4,
        "weight_decay": 0.0,
        "lr_step_epochs": 30,           # lr * gamma ** ((epoch + 1) // step), as the reference
        "lr_gamma": 0.1,
        "seed": 3000,
        "log_every": 50,
        "max_steps_per_epoch": None,
        "grad_clip": None,
        "test_checkpoint": "latest",    # test metrics of the final epoch (the reference); "best": best.pth
        "schedule": "step",             # "step" (the reference) or "onecycle": warm-up then cosine, per step
        "warmup": 0.3,                  # onecycle: share of the steps spent rising to train.lr
        "endmember_lr_scale": 1.0,      # the decoder's (endmembers') learning rate is train.lr times this
        "freeze_endmembers": False,     # True: the decoder keeps its initial endmembers (geometric methods)
    },
    # `checkpoint`: which file of a run folder infer uses: "latest" (the final epoch, as the reference) or "best"
    # `color_match`: "moments" matches RGB images' channel mean/std to the training inputs'
    # `tile`: 0 runs each image whole through the encoder, as the reference (images above 2048 x 2048 pixels
    # go in tiles of 1024 to bound memory, with a log line); N > 0: overlapping tiles of N x N, blended
    # `layout`: "project" (<image name>.mat with a `class` key, GT as R, G, B) or "reference" (0000.mat ... in
    # os.listdir order with Abu, GT as B, G, R and Y only, as the reference writes them)
    "infer": {"tile": 0, "overlap": 32, "checkpoint": "latest", "color_match": "none", "layout": "project"},
}

# Keys of the reference's argparse that a config may mention but this implementation does not need.
KNOWN_UNUSED = ("cuda", "gpus", "model_title", "dataset_name", "n_feats")


# Type and range of every number and choice, checked on load before any data is read.
UNMIXING_RULES = {
    "data.input_norm": ("bands", "cube"),
    "data.crop_size": optional(INT_POSITIVE),
    "data.augment": bool,
    "data.samples_per_epoch": optional(INT_POSITIVE),
    "data.num_workers": INT_NONNEGATIVE,
    "model.method": tuple(METHODS),
    "model.num_endmembers": INT_POSITIVE,
    "model.encoder": ("sspn", "pixel_mlp"),
    "model.widths": ("list", INT_POSITIVE),
    "model.n_blocks": INT_NONNEGATIVE,
    "model.res_scale": Number(),
    "model.mlp_hidden": INT_POSITIVE,
    "model.decoder_init": ("random", "distant_pixels", "vertices", "linear_simplex", "vca", "nfindr", "greedy_pixels"),
    "model.head_init": ("none", "fit"),
    "model.brightness": (False, True, "exp", "cone"),
    "model.simplex": ("softmax", "relu"),
    "model.linear_skip": bool,
    "model.init_margin": FLOAT_NONNEGATIVE,
    "loss.charbonnier": FLOAT_NONNEGATIVE,
    "loss.sad": FLOAT_NONNEGATIVE,
    "loss.endmember_tv": FLOAT_NONNEGATIVE,
    "loss.spectral_tv": FLOAT_NONNEGATIVE,
    "loss.mse": FLOAT_NONNEGATIVE,
    "loss.near_data": FLOAT_NONNEGATIVE,
    "loss.near_data_angle": Number(low=0, high=90),
    "train.epochs": INT_POSITIVE,
    "train.batch_size": INT_POSITIVE,
    "train.lr": FLOAT_POSITIVE,
    "train.weight_decay": FLOAT_NONNEGATIVE,
    "train.lr_step_epochs": INT_POSITIVE,
    "train.lr_gamma": FLOAT_POSITIVE,
    "train.seed": INT_ANY,
    "train.log_every": INT_POSITIVE,
    "train.max_steps_per_epoch": optional(INT_POSITIVE),
    "train.grad_clip": optional(FLOAT_POSITIVE),
    "train.test_checkpoint": ("latest", "best"),
    "train.schedule": ("step", "onecycle"),
    "train.warmup": Number(low=0, high=1),
    "train.endmember_lr_scale": FLOAT_NONNEGATIVE,
    "train.freeze_endmembers": bool,
    "infer.tile": INT_NONNEGATIVE,
    "infer.overlap": INT_NONNEGATIVE,
    "infer.checkpoint": ("latest", "best"),
    "infer.color_match": ("none", "moments"),
    "infer.layout": ("project", "reference"),
}


def validate_unmixing_config(cfg: dict, source: str) -> dict:
    """Refuse wrong types and out-of-range values in one line naming the file and the key."""
    check_config(cfg, UNMIXING_RULES, source)
    check_run_name(cfg["name"], source)
    for role in ("train", "val", "test"):
        folder = cfg["data"][role]
        if not (folder is None and role != "train") and not isinstance(folder, str):
            raise UserError(f"{source}: 'data.{role}' must be a folder name, got {folder!r}")
    bands = cfg["data"]["bands"]
    if isinstance(bands, (list, tuple)):
        if len(bands) != 3:
            raise UserError(f"{source}: 'data.bands' needs 3 band indices (R G B), got {bands!r}")
        check_config(cfg, {"data.bands": ("list", INT_NONNEGATIVE)}, source)
    elif not isinstance(bands, (str, dict)):
        raise UserError(f"{source}: 'data.bands' must be 3 indices, a preset name or {{\"wavelengths\": [...]}}, "
                        f"got {bands!r}")
    if cfg["data"]["key"] is not None and not isinstance(cfg["data"]["key"], str):
        raise UserError(f"{source}: 'data.key' must be a variable name, got {cfg['data']['key']!r}")
    if (cfg["model"]["linear_skip"] and cfg["model"]["decoder_init"] != "linear_simplex"
            and cfg["model"]["head_init"] == "none"):
        get_logger().warning("%s: model.linear_skip without model.decoder_init 'linear_simplex' starts the skip at "
                             "zero; the improved recipe needs both (did a config value beat part of the profile? "
                             "config/improved_unmixing.json has the whole recipe)", source)
    if cfg["infer"]["tile"] and cfg["infer"]["overlap"] >= cfg["infer"]["tile"]:
        raise UserError(f"{source}: 'infer.overlap' ({cfg['infer']['overlap']}) must be smaller than "
                        f"'infer.tile' ({cfg['infer']['tile']})")
    return cfg


def load_unmixing_config(path: str | None, overrides: dict | None = None, profile: str | None = None,
                         stage: str = "unmixing", base: dict | None = None) -> dict:
    """The resolved config of `Unmixing.py train` (stage "unmixing") or `infer` (stage "infer"), validated.

    Defaults -> profile -> method (`model.method` of the flags, else of the file, else of the profile) ->
    `base` (a checkpoint's config, for --resume without -c) -> the file -> flags.
    """
    free_form = ("data.bands", "data.wavelengths")
    if base is None:
        user = read_json_config(path) if path else {}
        name = resolve_profile(profile, user, path or "config")
        layered = apply_profile(UNMIXING_DEFAULTS, stage, name)
        method = (overrides or {}).get("model.method") or user.get("model", {}).get("method") \
            or layered["model"]["method"]
        for dotted, value in method_values(method, f"{path or 'config'}: 'model.method'").items():
            set_by_path(layered, dotted, value)
        layered["model"]["method"] = method
        cfg = merge_config(layered, user, source=path or "defaults", known_unused=KNOWN_UNUSED, free_form=free_form)
        cfg["profile"] = name
        cfg = apply_overrides(cfg, overrides or {})
    else:
        name = resolve_profile(profile, base, "the checkpoint's config")
        cfg = merge_config(apply_profile(UNMIXING_DEFAULTS, stage, name), base, source="the checkpoint's config",
                           known_unused=KNOWN_UNUSED, free_form=free_form)
        cfg["profile"] = name
        cfg = apply_overrides(cfg, overrides or {})
    return validate_unmixing_config(cfg, path or ("the checkpoint's config" if base is not None else "config"))
