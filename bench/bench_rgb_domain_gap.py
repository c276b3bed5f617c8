"""The RGB domain gap of stage 1: abundance statistics on external RGB collections vs the training crops.

Trains the improved stage-1 model (config/improved_unmixing.json's recipe, in memory) on one real HSI
crop, optionally loads other unmixing checkpoints (`--ckpt`), and for every collection of RGB images
prints, per model and per inference option:
  usage   share of pixels where each endmember exceeds 0.1 (a dead endmember has 0)
  top     share of the total abundance mass carried by the most used endmember
  entropy mean per-pixel abundance entropy (nats; log K is the uniform mixture)
  sat     mean HSV saturation of the resynthesised HSI (E a) rendered in CIE 1931 true colour,
          a measure of how colourful (wide-gamut) the synthesised spectra are
against the same on the training crop's own composite (the encoder's training input).

    python bench/bench_rgb_domain_gap.py [--train .../block_282.mat] [--ckpt run/checkpoint/best.pth ...]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.core.color import hsi_to_rgb  # noqa: E402
from ubf.data.bands import chikusei_wavelengths  # noqa: E402
from ubf.data.hsi_dataset import prepare_pair  # noqa: E402
from ubf.data.images import list_images, read_rgb  # noqa: E402
from ubf.data.matio import read_hsi  # noqa: E402
from ubf.data.normalize import minmax  # noqa: E402
from ubf.models.losses import unmixing_loss  # noqa: E402
from ubf.models.unmixing_init import linear_simplex_init  # noqa: E402
from ubf.pipeline.unmixing_infer import load_unmixing_model  # noqa: E402
from ubf.pipeline.unmixing_color import match_moments  # noqa: E402
from ubf.pipeline.unmixing_train import one_cycle_lr  # noqa: E402
from ubf.models.unmixing import build_unmixing_model  # noqa: E402
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
COLLECTIONS = {"AID tiles": "paper/aid", "Landsat": "rgb/remote", "natural photos": "rgb/natural"}


def train_improved(x: np.ndarray, y: np.ndarray, steps: int = 200, lr: float = 3e-3, seed: int = 0):
    """The improved recipe on one (H, W, 3) / (H, W, C) pair: linear-simplex start, L1 + 0.1 SAD, one-cycle."""
    torch.manual_seed(seed)
    cfg = dict(UNMIXING_DEFAULTS["model"], encoder="pixel_mlp", simplex="relu", linear_skip=True)
    model = build_unmixing_model(cfg, 3, y.shape[2])
    ends, mixing = linear_simplex_init(x.reshape(-1, 3), y.reshape(-1, y.shape[2]), model.num_endmembers, seed=seed)
    with torch.no_grad():
        model.skip.weight[:, :, 0, 0] = torch.from_numpy(mixing[:, :3]).float()
        model.skip.bias[:] = torch.from_numpy(mixing[:, 3]).float()
        model.decoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(ends)).float()[:, :, None, None])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = image(x), image(y)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(lr, step, steps, 0.3)
        loss, _ = unmixing_loss(model(xt)[1], yt, model.decoder.weight, {"charbonnier": 1.0, "sad": 0.1})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))[None]


@torch.no_grad()
def statistics(model, inputs: list[np.ndarray], wavelengths) -> dict:
    """Usage, top share, entropy and saturation of the model's abundances over a list of (H, W, 3) inputs."""
    ends = model.endmembers().float().numpy()
    usage, mass, entropy, saturation, count = 0, 0, 0.0, 0.0, 0
    for x in inputs:
        a = model.abundances(image(x))[0].permute(1, 2, 0).reshape(-1, model.num_endmembers).numpy()
        usage = usage + (a > 0.1).sum(0)
        mass = mass + a.sum(0)
        entropy += float(-(a * np.log(np.clip(a, 1e-12, None))).sum(1).sum())
        synth = np.clip(a @ ends.T, 0, None).reshape(x.shape[0], x.shape[1], -1)
        rgb = hsi_to_rgb(synth, wavelengths, mode="cie").reshape(-1, 3).astype(np.float64)
        high, low = rgb.max(1), rgb.min(1)
        saturation += float(np.where(high > 1e-6, (high - low) / np.maximum(high, 1e-6), 0).sum())
        count += len(a)
    return {"usage": [round(float(u) / count, 3) for u in usage], "top": round(float(mass.max() / mass.sum()), 3),
            "entropy": round(entropy / count, 3), "sat": round(saturation / count, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=os.path.join(SHARED, "paper", "chikusei", "block_282.mat"))
    parser.add_argument("--bands", type=int, nargs=3, default=[53, 33, 14])
    parser.add_argument("--ckpt", nargs="*", default=[], help="other unmixing checkpoints to measure")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--max-side", type=int, default=256, help="RGB images are centre-cropped to this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = prepare_pair(read_hsi(args.train)[0], args.bands)
    wavelengths = chikusei_wavelengths() if y.shape[2] == 59 else None
    training_inputs = [x]
    models = {"improved (pixel_mlp, linear-simplex)": train_improved(x, y, args.steps)}
    for path in args.ckpt:
        models[path] = load_unmixing_model(path, torch.device("cpu"))[0]
    collections = {"training crop composite": [x]}
    for name, folder in COLLECTIONS.items():
        folder = os.path.join(SHARED, folder)
        if os.path.isdir(folder):
            images = []
            for path in list_images(folder):
                rgb = read_rgb(path)
                top, left = max(0, (rgb.shape[0] - args.max_side) // 2), max(0, (rgb.shape[1] - args.max_side) // 2)
                side = min(args.max_side, rgb.shape[0], rgb.shape[1])
                images.append(minmax(rgb[top:top + side, left:left + side]))
            collections[name] = images
    for model_name, model in models.items():
        for option in ("none", "moments"):
            for name, images in collections.items():
                if option == "moments" and name == "training crop composite":
                    continue
                inputs = images if option == "none" else [match_moments(i, training_inputs) for i in images]
                print(json.dumps({"model": model_name, "color_match": option, "collection": name,
                                  "images": len(images), **statistics(model, inputs, wavelengths)}), flush=True)


if __name__ == "__main__":
    main()
