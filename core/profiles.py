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

from core.config import set_by_path
from core.errors import UserError

PROFILES = ("faithful", "improved")
DEFAULT_PROFILE = "faithful"

# Measured departures, per stage. Each key is a dotted config path of that stage's defaults.
IMPROVED: dict[str, dict[str, object]] = {
    "unmixing": {},
    "infer": {},
    "diffusion": {
        # docs/generation.md: L1 learns the posterior median (hard per-pixel decisions on the bimodal
        # abundances); v keeps x_0 errors bounded where eps errors are multiplied by 1 / sqrt(alpha_bar)
        "model.diffusion.loss_type": "l2_mean",
        "model.diffusion.prediction": "v",
        # the sampler stays the reference's ancestral one: on a network trained 1000 steps every
        # deterministic sampler (DDIM, DPM-Solver++) left speckle in most samples, ancestral in none
        # (docs/benchmarks.md, "Stage 2 samplers")
    },
    "synthesis": {},
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
