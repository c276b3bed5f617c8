"""Defaults of the diffusion stage in the reference's JSON layout, and the keys it may carry unused.

The reference's configs (SR3 format: name, phase, gpu_ids, path, datasets, model, train, wandb)
load unchanged. Keys the reference hard-coded in its scripts are added here with the reference's
values: `datasets.train.dataroot`, `batch_size`, `num_workers`; the sampler settings live in a
`sample` section (the reference only had the ancestral sampler).
"""
import copy

from ubf.core.abundance_scaling import SCALINGS
from ubf.core.errors import UserError
from ubf.core.fs import check_run_name
from ubf.core.logs import get_logger
from ubf.core.profiles import load_profiled_config
from ubf.core.validate import (FLOAT_NONNEGATIVE, FLOAT_POSITIVE, INT_ANY, INT_NONNEGATIVE, INT_POSITIVE, PROBABILITY,
                           Number, check_config, check_value)
from ubf.models.diffusion import CLIPPING, LOSS_TYPES, LOSS_WEIGHTINGS, PREDICTIONS, SAMPLERS, SCHEDULES, make_beta_schedule
from ubf.pipeline.class_labels import check_class_names

_SCHEDULE = {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 1e-2}

DIFFUSION_DEFAULTS = {
    "name": "Chikusei-256",
    "phase": "train",
    "seed": 0,
    "path": {                           # sub-folders of <out>/<name>_<timestamp>/
        "log": "logs",
        "results": "results",           # PNG previews
        "mat_results": "mat_results",   # sampled abundances (.mat)
        "checkpoint": "checkpoint",
        "resume_state": None,           # a checkpoint to resume (train) or sample from (val); --resume wins
    },
    "datasets": {
        "train": {
            "dataroot": "dataset/inferred_abu/",  # the reference's hard-coded folder; --data overrides
            "data_len": -1,             # -1: every file; N: the first N files
            "batch_size": 8,
            "num_workers": 4,
            "flip": "none",             # "none" (reference), "horizontal" or "both"
            # "epoch": each epoch's files in batches of batch_size and a short last one, as the reference's
            # DataLoader(shuffle=True); "stream": always batch_size, running across epochs (earlier versions)
            "batching": "epoch",
        },
        "val": {
            "data_len": 50,             # kept from the reference configs and, as there, not used by `-p val`
        },
    },
    "model": {
        "init": "orthogonal",           # the reference's init of conv/linear weights; "default": PyTorch's
        "unet": {
            "in_channel": 5,
            "out_channel": 5,
            "inner_channel": 64,
            "norm_groups": 32,
            "channel_multiplier": [1, 2, 4, 8, 8],
            "attn_res": [16],
            "res_blocks": 2,
            "dropout": 0.2,
            "with_noise_level_emb": True,
            "fused_attention": True,    # F.scaled_dot_product_attention; false: two matmuls (same numbers)
        },
        "beta_schedule": {"train": dict(_SCHEDULE), "val": dict(_SCHEDULE)},
        "diffusion": {
            "image_size": 256,
            "channels": 5,
            "conditional": False,       # only unconditional generation is implemented
            "loss_type": "l1",          # l1 / l2: sum / (b*c*h*w), the mean (reference); l1_sum / l2_sum: the raw sum
            "t_per_sample": False,      # False: one t per batch as the reference
            "clip_denoised": True,
            "class_conditional": False,  # True: condition on the scene class of each file (docs/class_conditional.md)
            "class_dropout": 0.1,       # share of labels hidden per step, teaching the unconditional prediction
            "class_names": [],          # filled from the training files' classes; saved with the checkpoint
            "prediction": "eps",        # network output: "eps" (reference), "v" or "x0"
            "loss_weighting": "none",   # "none" (reference) or "min_snr" (capped at SNR snr_gamma)
            "snr_gamma": 5.0,
            "clipping": "static",       # x_0 estimates: "static" clamp (reference), "dynamic" or "none"
            # "none": 2a - 1 (reference); "channel_range": each channel's training range stretched to [-1, 1]
            # (ubf/core/abundance_scaling.py); the range is filled in by training and saved with the checkpoint
            "abundance_scaling": "none",
            # true: the per-pixel brightness `Bright` of the training files is generated as channel K + 1
            # (channels = K + 1); samples store it as `Bright` and Synthesis.py multiplies it back
            "brightness": False,
        },
    },
    "train": {
        "n_iter": 1000000,
        "val_freq": 10000,              # preview samples every val_freq steps
        "save_checkpoint_freq": 10000,
        "print_freq": 200,
        "keep_checkpoints": 0,          # 0: keep all; N: keep the newest N of a run
        "optimizer": {"type": "adam", "lr": 1e-4, "weight_decay": 0.0},
        "ema_scheduler": {
            "step_start_ema": 5000,     # before this step the EMA copies the weights
            "update_ema_every": 1,
            "ema_decay": 0.9999,
        },
        "use_ema": True,                # the reference's EMA block was "not used now"; here it is
        "grad_clip": 0.0,               # max gradient norm; 0 disables
        "amp": False,                   # mixed precision, CUDA only: false, "fp16" (or true) or "bf16"
        "compile": False,               # torch.compile the UNet for training (CUDA speed option)
        "channels_last": False,         # channels-last memory format for the UNet and its batches (speed option)
        "preview_samples": 4,
    },
    "sample": {
        "sampler": "ancestral",         # "ancestral" (reference, all T steps) or "ddim"
        "steps": 50,                    # DDIM steps
        "eta": 0.0,                     # DDIM stochasticity; 0 is deterministic
        "batch_size": 4,                # 0: as many as fill the device (pipeline.diffusion_sample.AUTO_BATCH)
        "num_samples": 40,              # how many samples `-p val` draws (the reference's loop; --num-samples)
        "use_ema": False,               # False: the trained weights (the reference); True: the EMA weights
        "project_simplex": False,       # False: Abu = (SR + 1) / 2 as sampled (the reference); True: projected
        "class_name": None,             # class-conditional models: a class, "a,b" or "all" (--class); None: unconditional
        "guidance": 1.0,                # classifier-free guidance scale (--guidance): 0 unconditional, 1 conditional
        "layout": "project",            # "project": <step>_<n>_sample_abu.mat with SR, Abu (class); "reference": 0_<n>, SR only
    },
}

# Keys of the reference configs that are accepted and ignored (with a note in the log).
# The reference loads its JSON into a dict that answers None for any key (core/logger.py
# dict_to_nonedict) and never checks a key; here only keys of its lineage are let through.
KNOWN_UNUSED = (
    "gpu_ids", "distributed", "wandb", "enable_wandb", "log_wandb_ckpt", "log_eval", "log_infer",
    "path.tb_logger", "path.experiments_root",
    "model.which_model_G", "model.finetune_norm",
    "datasets.train.name", "datasets.train.mode", "datasets.train.use_shuffle",
    "datasets.val.name", "datasets.val.mode", "datasets.val.batch_size",
)
# The super-resolution keys of the upstream SR3 configs (Image-Super-Resolution-via-Iterative-Refinement,
# which the reference's diffusion code comes from): image folders of low/high resolution pairs. This stage
# trains an unconditional DDPM on abundance .mat files, so they are accepted and ignored, with a note.
SR3_UPSTREAM_UNUSED = tuple(f"datasets.{split}.{key}" for split in ("train", "val")
                            for key in ("datatype", "l_resolution", "r_resolution")) + (
    "datasets.val.dataroot", "datasets.val.use_shuffle", "datasets.val.num_workers",
)


def _positive_int(cfg: dict, dotted: str, source: str, minimum: int = 1) -> None:
    section, _, key = dotted.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = node[part]
    value = node[key]
    # the reference writes frequencies as 1e4
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{source}: '{dotted}' must be an integer >= {minimum}, got {node[key]!r}")
    node[key] = value


# Numbers and switches beyond the integer counts below (ubf/core/validate.py rules), checked before any work.
DIFFUSION_RULES = {
    "seed": INT_ANY,
    "datasets.train.data_len": Number(integer=True, low=-1),
    "model.unet.in_channel": INT_POSITIVE,
    "model.unet.out_channel": INT_POSITIVE,
    "model.unet.inner_channel": INT_POSITIVE,
    "model.unet.norm_groups": INT_POSITIVE,
    "model.unet.channel_multiplier": ("list", INT_POSITIVE),
    "model.unet.res_blocks": INT_POSITIVE,
    "model.unet.dropout": Number(low=0, high=1, open_high=True),
    "model.unet.with_noise_level_emb": bool,
    "model.diffusion.t_per_sample": bool,
    "model.diffusion.clip_denoised": bool,
    "train.optimizer.lr": FLOAT_POSITIVE,
    "train.optimizer.weight_decay": FLOAT_NONNEGATIVE,
    "train.ema_scheduler.step_start_ema": INT_NONNEGATIVE,
    "train.ema_scheduler.update_ema_every": INT_POSITIVE,
    "train.ema_scheduler.ema_decay": PROBABILITY,
    "train.use_ema": bool,
    "train.grad_clip": FLOAT_NONNEGATIVE,
    "sample.eta": PROBABILITY,
    "sample.use_ema": bool,
    "sample.project_simplex": bool,
}
BETA_BOUND = Number(low=0, high=1, open_low=True, open_high=True)


def check_attn_res(cfg: dict, source: str) -> None:
    value = cfg["model"]["unet"]["attn_res"]
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise UserError(f"{source}: 'model.unet.attn_res' must be a list of positive integers (resolutions), "
                        f"got {value!r}")


def check_betas(cfg: dict, source: str) -> None:
    """Schedule parameters in (0, 1) and every resulting beta in (0, 1] (jsd ends at exactly 1)."""
    for phase in ("train", "val"):
        opt = cfg["model"]["beta_schedule"][phase]
        for key in ("linear_start", "linear_end"):
            if key in opt:
                opt[key] = check_value(opt[key], BETA_BOUND, f"{source}: 'model.beta_schedule.{phase}.{key}'")
        if "cosine_s" in opt:
            opt["cosine_s"] = check_value(opt["cosine_s"], FLOAT_POSITIVE,
                                          f"{source}: 'model.beta_schedule.{phase}.cosine_s'")
        betas = make_beta_schedule(opt["schedule"], int(opt["n_timestep"]), opt.get("linear_start", 1e-4),
                                   opt.get("linear_end", 2e-2), opt.get("cosine_s", 8e-3))
        if not (betas > 0).all() or not (betas <= 1).all():
            raise UserError(f"{source}: 'model.beta_schedule.{phase}' gives betas from {betas.min():.3g} to "
                            f"{betas.max():.3g}; every beta must be in (0, 1]")
def check_class_settings(model: dict, source: str) -> None:
    """Class conditioning needs the noise-level embedding it is added to, and a dropout rate in [0, 1)."""
    diffusion = model["diffusion"]
    dropout = diffusion.get("class_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"{source}: 'model.diffusion.class_dropout' must be a number in [0, 1), got {dropout!r}")
    if diffusion.get("class_conditional") and not model["unet"]["with_noise_level_emb"]:
        raise UserError(f"{source}: 'model.diffusion.class_conditional' needs model.unet.with_noise_level_emb "
                        "(the class embedding is added to the noise-level embedding)")
    check_class_names(diffusion.get("class_names"), source)


def validate(cfg: dict, source: str) -> dict:
    """Check values a typo would break, and turn 1e4-style numbers into integers."""
    check_config(cfg, DIFFUSION_RULES, source)
    check_run_name(cfg["name"], source)
    check_attn_res(cfg, source)
    for dotted in ("train.n_iter", "train.val_freq", "train.save_checkpoint_freq", "train.print_freq",
                   "datasets.train.batch_size", "model.diffusion.image_size", "model.diffusion.channels",
                   "sample.batch_size", "sample.steps", "sample.num_samples", "train.preview_samples",
                   "model.beta_schedule.train.n_timestep", "model.beta_schedule.val.n_timestep"):
        _positive_int(cfg, dotted, source, minimum=0 if dotted in ("train.preview_samples", "sample.batch_size") else 1)
    for dotted in ("datasets.train.num_workers", "train.keep_checkpoints", "datasets.val.data_len"):
        _positive_int(cfg, dotted, source, minimum=0)
    model = cfg["model"]
    if model["diffusion"]["conditional"]:
        raise UserError(f"{source}: 'model.diffusion.conditional' is true, but only unconditional "
                        "generation is implemented")
    check_class_settings(model, source)
    guidance = cfg["sample"].get("guidance", 1.0)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0.0 <= guidance < float("inf"):
        raise UserError(f"{source}: 'sample.guidance' must be a number >= 0, got {guidance!r}")
    channels = model["diffusion"]["channels"]
    unet = model["unet"]
    if unet["in_channel"] != channels or unet["out_channel"] != channels:
        raise UserError(f"{source}: model.unet in_channel/out_channel ({unet['in_channel']}/{unet['out_channel']}) "
                        f"must equal model.diffusion.channels ({channels}) for unconditional generation")
    for phase in ("train", "val"):
        if model["beta_schedule"][phase]["schedule"] not in SCHEDULES:
            raise UserError(f"{source}: 'model.beta_schedule.{phase}.schedule' must be one of {', '.join(SCHEDULES)}")
    checks = (
        ("model.diffusion.loss_type", model["diffusion"]["loss_type"], LOSS_TYPES),
        ("model.diffusion.prediction", model["diffusion"]["prediction"], PREDICTIONS),
        ("model.diffusion.loss_weighting", model["diffusion"]["loss_weighting"], LOSS_WEIGHTINGS),
        ("model.diffusion.clipping", model["diffusion"]["clipping"], CLIPPING),
        ("model.diffusion.abundance_scaling", model["diffusion"]["abundance_scaling"], SCALINGS),
        ("model.diffusion.brightness", model["diffusion"]["brightness"], (False, True)),
        ("sample.sampler", cfg["sample"]["sampler"], SAMPLERS),
        ("train.optimizer.type", str(cfg["train"]["optimizer"]["type"]).lower(), ("adam", "adamw")),
        ("datasets.train.flip", cfg["datasets"]["train"]["flip"], ("none", "horizontal", "both")),
        ("datasets.train.batching", cfg["datasets"]["train"]["batching"], ("epoch", "stream")),
        ("sample.layout", cfg["sample"]["layout"], ("project", "reference")),
        ("model.init", model["init"], ("orthogonal", "default")),
    )
    amp = cfg["train"]["amp"]
    if amp not in (False, True, "off", "fp16", "bf16"):
        raise UserError(f"{source}: 'train.amp' is {amp!r}, expected false, true, \"fp16\" or \"bf16\"")
    for dotted, value in (("train.channels_last", cfg["train"]["channels_last"]),
                          ("model.unet.fused_attention", cfg["model"]["unet"]["fused_attention"])):
        if not isinstance(value, bool):
            raise UserError(f"{source}: '{dotted}' must be true or false, got {value!r}")
    if not isinstance(cfg["train"]["compile"], bool):
        raise UserError(f"{source}: 'train.compile' must be true or false, got {cfg['train']['compile']!r}")
    for dotted, value, allowed in checks:
        if value not in allowed:
            raise UserError(f"{source}: '{dotted}' is {value!r}, expected one of {', '.join(allowed)}")
    check_betas(cfg, source)
    if cfg["sample"]["steps"] > model["beta_schedule"]["val"]["n_timestep"]:
        raise UserError(f"{source}: sample.steps ({cfg['sample']['steps']}) exceeds "
                        f"model.beta_schedule.val.n_timestep ({model['beta_schedule']['val']['n_timestep']})")
    factor = 2 ** (len(unet["channel_multiplier"]) - 1)
    if model["diffusion"]["image_size"] % factor:
        raise UserError(f"{source}: model.diffusion.image_size must be divisible by {factor} "
                        f"(2 ** (number of channel multipliers - 1))")
    widths = [unet["inner_channel"] * m for m in unet["channel_multiplier"]] + [unet["inner_channel"]]
    if any(w % unet["norm_groups"] for w in widths):
        raise UserError(f"{source}: model.unet.norm_groups ({unet['norm_groups']}) must divide every "
                        f"channel width {sorted(set(widths))}")
    return cfg


def load_diffusion_config(path: str | None, overrides: dict | None = None, profile: str | None = None) -> dict:
    """Defaults <- profile <- JSON file <- flags, validated."""
    cfg = load_profiled_config(path, copy.deepcopy(DIFFUSION_DEFAULTS), "diffusion", profile, overrides,
                               known_unused=KNOWN_UNUSED + SR3_UPSTREAM_UNUSED)
    if cfg.get("gpu_ids"):
        get_logger().info("%s: gpu_ids %s is not used; pick the device with --device", path, cfg["gpu_ids"])
    return validate(cfg, path or "config")
