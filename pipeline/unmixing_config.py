"""Defaults of the unmixing stage (the paper's settings) and the flag-to-key map of `Unmixing.py train`."""
import copy

from core.config import load_config

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
        "num_endmembers": 5,
        "encoder": "sspn",              # "sspn" (paper) or "pixel_mlp" (departure, see README)
        "widths": [32, 64, 128, 96, 48],
        "n_blocks": 3,
        "res_scale": 0.1,
        "mlp_hidden": 64,
        "decoder_init": "random",       # "random" (paper), "distant_pixels", "vertices" or "linear_simplex" (departures)
        "brightness": False,            # True: a per-pixel brightness factor on the reconstruction (departure)
        "simplex": "softmax",           # "softmax" (paper) or "relu": relu(z) / sum relu(z) (departure)
        "linear_skip": False,           # True: z = B [x; 1] + encoder(x), B from decoder_init linear_simplex
        "init_margin": 1.0,             # linear_simplex: how far the tetrahedron's faces sit beyond the data (x their distance)
    },
    "loss": {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015, "spectral_tv": 0.0},
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
        "schedule": "step",             # "step" (the reference) or "onecycle": warm-up then cosine, per step
        "warmup": 0.3,                  # onecycle: share of the steps spent rising to train.lr
    },
    "infer": {"tile": 256, "overlap": 32,
              "color_match": "none"},         # "moments": match RGB images' channel mean/std to the training inputs
}

# Keys of the reference's argparse that a config may mention but this implementation does not need.
KNOWN_UNUSED = ("cuda", "gpus", "model_title", "dataset_name", "n_feats")


def load_unmixing_config(path: str | None, overrides: dict | None = None) -> dict:
    return load_config(path, copy.deepcopy(UNMIXING_DEFAULTS), overrides, known_unused=KNOWN_UNUSED,
                       free_form=("data.bands", "data.wavelengths"))
