"""Profiles: `faithful` (the authors' code, the default of the three reference CLIs) and `improved`.

A profile is a set of config values laid over a stage's defaults *before* the user's config file and
flags, so anything the user spells out still wins. `faithful` changes nothing: the defaults are the
reference's behaviour. `improved` groups the departures that were measured to help; each entry names
one option that also works on its own (docs/faithfulness.md and the README's profile table say what
each does and what it measured).

Stages: "unmixing" (Unmixing.py train), "infer" (Unmixing.py infer), "diffusion" (Diffusion.py
train and val), "synthesis" (Synthesis.py). Values are keyed by dotted config paths of that stage.
"""
import argparse
import copy

from ubf.core.config import apply_overrides, merge_config, read_json_config, set_by_path
from ubf.core.errors import UserError

PROFILES = ("faithful", "improved")
DEFAULT_PROFILE = "faithful"

# Measured departures, per stage. Each key is a dotted config path of that stage's defaults.
IMPROVED: dict[str, dict[str, object]] = {
    # stage 1 (docs/stage1_quality.md): the near-data method (ubf/pipeline/unmixing_methods.py): endmembers that
    # are scene pixels (within 8 deg), a brightness cone head started at the NNLS fit, MSE + 0.1 SAD: at least the
    # linear map's test PSNR with contrasty maps. The reconstruction-first recipe is model.method "improved"
    # (config/improved_unmixing.json), whose flat maps starved the DDPM.
    "unmixing": {"model.method": "near_data"},
    "infer": {
        "infer.checkpoint": "best",             # best validation PSNR instead of the final epoch
        "infer.color_match": "moments",         # RGB domain gap: channel mean/std matched to the training composites'
    },
    "diffusion": {
        "sample.use_ema": True,                 # sample with the EMA weights (the reference's EMA is unused)
        "sample.project_simplex": True,         # Abu projected onto the simplex instead of (SR + 1) / 2
        "sample.batch_size": 0,                 # fill the device (docs/benchmarks.md: 1.15x samples/s on the CPU)
        # docs/generation.md: L1 learns the posterior median (hard per-pixel decisions on the bimodal
        # abundances); v keeps x_0 errors bounded where eps errors are multiplied by 1 / sqrt(alpha_bar)
        "model.diffusion.loss_type": "l2_mean",
        "model.diffusion.prediction": "v",
        # the sampler stays the reference's ancestral one: on a network trained 1000 steps every
        # deterministic sampler (DDIM, DPM-Solver++) left speckle in most samples, ancestral in none
        # (docs/benchmarks.md, "Stage 2 samplers")
    },
    "synthesis": {
        "checkpoint": "best",                   # best.pth of the newest unmixing run
        "endmembers": "raw",                    # the decoder weight as trained, no global min-max
        "simplex": True,                        # sampled abundances projected onto the simplex
    },
}


def check_profile(name: str | None, source: str = "--profile") -> str:
    """The profile name, or a one-line error that lists the valid ones."""
    if name is None:
        return DEFAULT_PROFILE
    if not isinstance(name, str) or name not in PROFILES:
        raise UserError(f"{source}: unknown profile {name!r} (choose one of: {', '.join(PROFILES)})")
    return name


def profile_values(stage: str, profile: str | None) -> dict[str, object]:
    """Dotted config values that `profile` sets for `stage` (empty for `faithful`)."""
    if stage not in IMPROVED:
        raise ValueError(f"unknown stage {stage!r}")
    if check_profile(profile) == "faithful":
        return {}
    return copy.deepcopy(IMPROVED[stage])


def apply_profile(defaults: dict, stage: str, profile: str | None) -> dict:
    """A copy of `defaults` with the profile's values laid over it (user config and flags come later)."""
    result = copy.deepcopy(defaults)
    for dotted, value in profile_values(stage, profile).items():
        set_by_path(result, dotted, value)
    result["profile"] = check_profile(profile)
    return result


def add_profile_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """`--profile faithful|improved`; `default=None` lets the config's `profile` key decide."""
    parser.add_argument("--profile", choices=PROFILES, default=default,
                        help="faithful: the authors' code (default of the reference CLIs); "
                             "improved: the measured departures (README, 'Profiles')")


def resolve_profile(flag: str | None, user_config: dict, source: str = "config") -> str:
    """`--profile` if given, else the config file's top-level `profile` key, else `faithful`."""
    if flag is not None:
        return check_profile(flag)
    if user_config.get("profile") is not None:
        return check_profile(user_config["profile"], f"{source}: 'profile'")
    return DEFAULT_PROFILE


def load_profiled_config(path: str | None, defaults: dict, stage: str, profile: str | None = None,
                         overrides: dict | None = None, known_unused=(), free_form=()) -> dict:
    """Defaults -> profile -> the user's config file -> flags; the resolved `profile` is recorded in it."""
    user = read_json_config(path) if path else {}
    name = resolve_profile(profile, user, path or "config")
    cfg = merge_config(apply_profile(defaults, stage, name), user, source=path or "defaults",
                       known_unused=known_unused, free_form=free_form)
    cfg["profile"] = name
    return apply_overrides(cfg, overrides or {})
