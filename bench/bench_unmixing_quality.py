"""Stage-1 quality against the linear bar: train on one real Chikusei crop, test on the other.

Prints one JSON line per model: the per-pixel linear regression from the same 3 input bands (+1)
to all bands (least squares), and the unmixing network under several options, each trained for the
same wall-clock budget. Usage:
    python bench/bench_unmixing_quality.py --train ../shared/data/paper/chikusei/block_282.mat \
        --test ../shared/data/paper/chikusei/block_118.mat --seconds 120
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.metrics import psnr, sam  # noqa: E402
from data.hsi_dataset import prepare_pair  # noqa: E402
from data.matio import read_hsi  # noqa: E402
from models.losses import unmixing_loss  # noqa: E402
from models.unmixing import build_unmixing_model  # noqa: E402
from pipeline.unmixing_config import UNMIXING_DEFAULTS  # noqa: E402
from pipeline.unmixing_train import farthest_pixels  # noqa: E402

OPTIONS = {
    "paper (sspn, random init)": {},
    "sspn + decoder_init distant_pixels": {"decoder_init": "distant_pixels"},
    "pixel_mlp + distant_pixels": {"encoder": "pixel_mlp", "decoder_init": "distant_pixels"},
    "pixel_mlp + distant_pixels + brightness": {"encoder": "pixel_mlp", "decoder_init": "distant_pixels",
                                                "brightness": True},
    "sspn + distant_pixels + brightness": {"decoder_init": "distant_pixels", "brightness": True},
}


class _OneFile:
    """The minimal dataset interface `farthest_pixels` needs."""

    def __init__(self, target):
        self.files, self._target = ["train"], target

    def load(self, _):
        return None, self._target


def brightness_diagnostic(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """PSNR once every predicted pixel is rescaled by its best factor (least squares against the truth).

    SAM ignores brightness; if this PSNR is far above the plain one, the error is mostly a per-pixel
    brightness (scale) error rather than a wrong spectral shape.
    """
    flat_true = y_true.reshape(-1, y_true.shape[2]).astype(np.float64)
    flat_pred = y_pred.reshape(-1, y_pred.shape[2]).astype(np.float64)
    scale = (flat_true * flat_pred).sum(1) / np.maximum((flat_pred ** 2).sum(1), 1e-12)
    return {"PSNR_brightness_fitted": psnr(y_true, (flat_pred * scale[:, None]).reshape(y_true.shape))}


def linear_baseline(x_train, y_train, x_test, y_test) -> dict:
    design = lambda x: np.concatenate([x.reshape(-1, 3), np.ones((x.shape[0] * x.shape[1], 1))], 1)
    coef, *_ = np.linalg.lstsq(design(x_train), y_train.reshape(-1, y_train.shape[2]), rcond=None)
    pred = (design(x_test) @ coef).reshape(y_test.shape)
    return {"PSNR": psnr(y_test, pred), "SAM": sam(y_test, pred), **brightness_diagnostic(y_test, pred)}


def train_option(overrides, x_train, y_train, x_test, y_test, seconds, crop, batch, seed) -> dict:
    torch.manual_seed(seed)
    cfg = dict(UNMIXING_DEFAULTS["model"], **overrides)
    model = build_unmixing_model(cfg, 3, y_train.shape[2])
    if cfg["decoder_init"] == "distant_pixels":
        with torch.no_grad():
            ends = farthest_pixels(_OneFile(y_train), model.num_endmembers, seed=seed)
            model.decoder.weight.copy_(torch.from_numpy(ends).float()[:, :, None, None])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4 if cfg["encoder"] == "sspn" else 2e-3)
    xt = torch.from_numpy(x_train.transpose(2, 0, 1).copy())
    yt = torch.from_numpy(y_train.transpose(2, 0, 1).copy())
    rng = np.random.default_rng(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tops = rng.integers(0, xt.shape[1] - crop + 1, batch)
        lefts = rng.integers(0, xt.shape[2] - crop + 1, batch)
        xb = torch.stack([xt[:, t:t + crop, l:l + crop] for t, l in zip(tops, lefts)])
        yb = torch.stack([yt[:, t:t + crop, l:l + crop] for t, l in zip(tops, lefts)])
        _, recon = model(xb)
        loss, _ = unmixing_loss(recon, yb, model.decoder.weight, {"charbonnier": 1, "sad": 0.1, "endmember_tv": 0.015})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        _, recon = model.eval()(torch.from_numpy(x_test.transpose(2, 0, 1).copy())[None])
    pred = recon[0].permute(1, 2, 0).numpy()
    return {"PSNR": psnr(y_test, pred), "SAM": sam(y_test, pred), **brightness_diagnostic(y_test, pred), "steps": steps, "seconds": round(elapsed, 1),
            "patches_per_s": round(steps * batch / elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="option names to run")
    args = parser.parse_args()
    for bands in ([53, 33, 14], [7, 17, 27]):
        x_train, y_train = prepare_pair(read_hsi(args.train)[0], bands)
        x_test, y_test = prepare_pair(read_hsi(args.test)[0], bands)
        print(json.dumps({"model": "linear regression (3 bands + 1)", "bands": bands,
                          **linear_baseline(x_train, y_train, x_test, y_test)}), flush=True)
    x_train, y_train = prepare_pair(read_hsi(args.train)[0], [53, 33, 14])
    x_test, y_test = prepare_pair(read_hsi(args.test)[0], [53, 33, 14])
    for name, overrides in OPTIONS.items():
        if args.only and name not in args.only:
            continue
        result = train_option(overrides, x_train, y_train, x_test, y_test, args.seconds, args.crop, args.batch, args.seed)
        print(json.dumps({"model": name, "bands": [53, 33, 14], "threads": torch.get_num_threads(), **result}), flush=True)


if __name__ == "__main__":
    main()
