"""Stage-1 methods: named recipes behind one interface (`model.method`, or `Unmixing.py train --method`).

Every method trains the same `UnmixingAutoencoder` and writes the same checkpoint, so `infer`,
`Synthesis.py`, `Evaluate.py` and the study take any of them. A method is a named set of config values
laid over the defaults after the profile and before the user's config file and flags (so a single key
can still be changed); the values are the whole recipe, recorded in the run's config.json.

- `network`: the paper's network (SSPN encoder, softmax, random decoder), the reference; the default.
- `improved`: the reconstruction-first recipe (docs/stage1_quality.md): a per-pixel encoder with the
  linear-simplex head, started at the least-squares map. Best PSNR, but its endmembers sit outside the data
  (not spectra of the scene) and its maps are nearly uniform.
- `vca_fcls`, `nfindr_fcls`: classic geometric unmixing. VCA or N-FINDR pick K pure training pixels as the
  endmembers, which stay fixed; the map from 3 bands to abundances is learned (the improved recipe's head,
  started at the least-squares fit of the training pixels' FCLS abundances), since RGB inference needs one.
- `near_data`: endmembers that are spectra of the scene and maps worth generating from: K training pixels
  chosen greedily for how well their non-negative combinations reconstruct the scene, a per-pixel brightness
  (the cone head: `s * E a`, stored beside the maps and generated as a channel by stage 2), the head started
  at the NNLS fit, MSE + 0.1 SAD, and the endmembers free to move within 8 degrees of a real pixel.
"""
from dataclasses import dataclass, field

from ubf.core.errors import UserError

# the per-pixel encoder, one-cycle schedule on whole files, shared by the learned-head recipes
_PIXEL_HEAD = {"model.encoder": "pixel_mlp", "model.simplex": "relu", "model.linear_skip": True,
               "loss.endmember_tv": 0.0, "train.schedule": "onecycle", "train.warmup": 0.3, "train.lr": 3e-3,
               "train.batch_size": 1, "data.samples_per_epoch": 50, "data.crop_size": None, "data.augment": False}


@dataclass(frozen=True)
class UnmixingMethod:
    name: str
    summary: str
    values: dict = field(default_factory=dict)  # dotted config keys of the unmixing stage


METHODS: dict[str, UnmixingMethod] = {m.name: m for m in (
    UnmixingMethod("network", "the paper's network (SSPN encoder, softmax, random decoder): the reference"),
    UnmixingMethod("improved", "per-pixel encoder, linear-simplex head started at the least-squares map", {
        **_PIXEL_HEAD, "model.decoder_init": "linear_simplex", "model.init_margin": 1.0, "loss.sad": 0.1,
        "train.epochs": 16}),
    UnmixingMethod("vca_fcls", "VCA endmembers (fixed), learned 3-band head started at the FCLS fit", {
        **_PIXEL_HEAD, "model.decoder_init": "vca", "model.head_init": "fit", "train.freeze_endmembers": True,
        "loss.charbonnier": 0.0, "loss.mse": 10.0, "loss.sad": 0.1, "train.epochs": 16}),
    UnmixingMethod("nfindr_fcls", "N-FINDR endmembers (fixed), learned 3-band head started at the FCLS fit", {
        **_PIXEL_HEAD, "model.decoder_init": "nfindr", "model.head_init": "fit", "train.freeze_endmembers": True,
        "loss.charbonnier": 0.0, "loss.mse": 10.0, "loss.sad": 0.1, "train.epochs": 16}),
    UnmixingMethod("near_data", "scene pixels as endmembers (within 8 deg), brightness cone head, NNLS start", {
        **_PIXEL_HEAD, "model.decoder_init": "greedy_pixels", "model.head_init": "fit", "model.brightness": "cone",
        "model.mlp_hidden": 128, "loss.charbonnier": 0.0, "loss.mse": 10.0, "loss.sad": 0.1, "loss.near_data": 0.1,
        "loss.near_data_angle": 8.0, "train.endmember_lr_scale": 0.1, "train.epochs": 16}),
)}
DEFAULT_METHOD = "network"


def method_values(name: str | None, source: str = "model.method") -> dict:
    """The config values of a method (empty for `network`); an unknown name is a one-line error."""
    name = DEFAULT_METHOD if name is None else name
    if name not in METHODS:
        raise UserError(f"{source}: unknown stage-1 method {name!r} (choose one of: {', '.join(METHODS)})")
    return dict(METHODS[name].values)
