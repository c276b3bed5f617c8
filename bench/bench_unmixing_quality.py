"""Stage-1 quality on every real scene against the per-pixel linear bar, for every model variant.

Each scene is a training file and a test file, or one file split into its left (train) and right
(test) halves. Each file (each half) is min-max normalised on its own, as the training pipeline does.
Beside every scene: the per-pixel linear regression from the same 3 input bands (+1) to all bands
(least squares). Every variant gets the same *work* (optimizer steps on whole training images), so
the table does not depend on how loaded the machine was; wall seconds and the process's CPU seconds
(with one thread, about what the run takes on an idle core) are reported beside it.

    python bench/bench_unmixing_quality.py                       # the scenes of ../shared/data, 3 seeds
    python bench/bench_unmixing_quality.py --scene my.mat:40,25,10 --scene a.mat,b.mat --steps 300

A scene spec is `TRAIN[,TEST][:R,G,B]`; without bands they come from the file's wavelengths
(nearest to 672/569/471 nm), else evenly spread. Prints one JSON line per run, then a Markdown table.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.core.metrics import psnr, sam  # noqa: E402
from ubf.data.bands import evenly_spread_bands, nearest_bands  # noqa: E402
from ubf.data.hsi_dataset import prepare_pair  # noqa: E402
from ubf.data.matio import read_hsi  # noqa: E402
from ubf.models.losses import unmixing_loss  # noqa: E402
from ubf.models.unmixing import build_unmixing_model  # noqa: E402
from ubf.models.unmixing_init import farthest_points, linear_simplex_init, orthogonal_vertices  # noqa: E402
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS  # noqa: E402

RGB_NM = (672.0, 569.0, 471.0)
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
# Samson: 156 bands evenly over 401-889 nm (data README). Moffett: AVIRIS subset with no stored
# wavelengths; its vegetation spectrum's green peak, red trough and red edge sit at bands 14, 28 and 33,
# i.e. about 400 + 9.7 nm * index, which puts 672/569/471 nm at bands 28/17/7.
DEFAULT_SCENES = [
    ("chikusei 282->118", ("paper/chikusei/block_282.mat", "paper/chikusei/block_118.mat"), [53, 33, 14]),
    ("samson left->right", ("hsi/samson.mat",), nearest_bands(np.linspace(401, 889, 156), RGB_NM)),
    ("moffett left->right", ("hsi/moffett.mat",), nearest_bands(400 + 9.7 * np.arange(184), RGB_NM)),
]

# name -> (model overrides, endmember init, loss weights, peak lr). Same steps for all.
VARIANTS = {
    "paper sspn (demo widths), random init": (
        {"widths": [16, 32, 16], "n_blocks": 1}, "random",
        {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015}, 2e-3),
    "probe: pixel_mlp softmax + brightness, distant pixels": (
        {"encoder": "pixel_mlp", "brightness": True}, "distant_pixels", {"charbonnier": 1.0}, 1e-2),
    "pixel_mlp softmax + brightness, ATGP vertices": (
        {"encoder": "pixel_mlp", "brightness": True}, "vertices", {"charbonnier": 1.0}, 1e-2),
    "improved: pixel_mlp, linear-simplex head": (
        {"encoder": "pixel_mlp", "simplex": "relu", "linear_skip": True}, "linear_simplex",
        {"charbonnier": 1.0, "sad": 0.1}, 3e-3),
    "improved head on sspn (demo widths)": (
        {"widths": [16, 32, 16], "n_blocks": 1, "simplex": "relu", "linear_skip": True}, "linear_simplex",
        {"charbonnier": 1.0, "sad": 0.1}, 2e-3),
}


def parse_scene(spec: str):
    """`TRAIN[,TEST][:R,G,B]` -> (name, paths, bands or None)."""
    paths, _, bands = spec.partition(":")
    files = tuple(paths.split(","))
    return os.path.basename(files[0]), files, [int(b) for b in bands.split(",")] if bands else None


def load_scene(files, bands):
    """((x_train, y_train), (x_test, y_test)) normalised per file (per half when one file)."""
    cube, wavelengths = read_hsi(files[0])
    if bands is None:
        bands = nearest_bands(wavelengths, RGB_NM) if wavelengths is not None else evenly_spread_bands(cube.shape[2])
    if len(files) > 1:
        test = read_hsi(files[1])[0]
        return prepare_pair(cube, bands), prepare_pair(test, bands), bands
    half = cube.shape[1] // 2
    return prepare_pair(cube[:, :half], bands), prepare_pair(cube[:, half:], bands), bands


def linear_baseline(train, test) -> dict:
    (x_train, y_train), (x_test, y_test) = train, test
    design = lambda x: np.concatenate([x.reshape(-1, 3), np.ones((x.shape[0] * x.shape[1], 1))], 1)
    coef, *_ = np.linalg.lstsq(design(x_train), y_train.reshape(-1, y_train.shape[2]), rcond=None)
    pred = (design(x_test) @ coef).reshape(y_test.shape)
    return {"PSNR": psnr(y_test, pred), "SAM": sam(y_test, pred)}


def initialise(model, init: str, x_train: np.ndarray, y_train: np.ndarray, seed: int) -> None:
    """Set the decoder (and the affine head) from the training pixels."""
    pixels, count = y_train.reshape(-1, y_train.shape[2]), model.num_endmembers
    with torch.no_grad():
        if init == "linear_simplex":
            ends, mixing = linear_simplex_init(x_train.reshape(-1, 3), pixels, count, seed=seed)
            model.skip.weight[:count, :, 0, 0] = torch.from_numpy(mixing[:, :3]).float()
            model.skip.bias[:count] = torch.from_numpy(mixing[:, 3]).float()
        elif init in ("distant_pixels", "vertices"):
            pick = farthest_points if init == "distant_pixels" else orthogonal_vertices
            ends = pixels[pick(pixels, count)].T
        else:
            return
        model.decoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(ends)).float()[:, :, None, None])


def to_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float()


def train_variant(variant, train, test, steps: int, seed: int, warmup: float = 0.3) -> dict:
    """Whole-image full-batch Adam with a one-cycle learning rate; test metrics and endmember usage."""
    overrides, init, loss_weights, lr = variant
    (x_train, y_train), (x_test, y_test) = train, test
    torch.manual_seed(seed)
    model = build_unmixing_model(dict(UNMIXING_DEFAULTS["model"], **overrides), 3, y_train.shape[2])
    initialise(model, init, x_train, y_train, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)
    x, y = to_image(x_train), to_image(y_train)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, recon = model(x)
        loss, _ = unmixing_loss(recon, y, model.decoder.weight, loss_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    with torch.no_grad():
        abundances, recon = model.eval()(to_image(x_test))
    pred = recon[0].permute(1, 2, 0).numpy()
    usage = (abundances[0] > 0.1).float().mean((1, 2))
    return {"PSNR": psnr(y_test, pred), "SAM": sam(y_test, pred), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "usage": [round(float(u), 3) for u in usage]}


def mean_std(values) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append", help="TRAIN[,TEST][:R,G,B] (repeatable; default: ../shared/data)")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per run (the fixed work)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scene:
        scenes = [parse_scene(spec) for spec in args.scene]
    else:
        scenes = [(name, tuple(os.path.join(SHARED, f) for f in files), bands) for name, files, bands in DEFAULT_SCENES
                  if all(os.path.isfile(os.path.join(SHARED, f)) for f in files)]
    rows = []
    print(json.dumps({"load_before": open("/proc/loadavg").read().split()[:3]}) if os.path.exists("/proc/loadavg") else "{}",
          flush=True)
    for name, files, bands in scenes:
        train, test, bands = load_scene(files, bands)
        bar = linear_baseline(train, test)
        print(json.dumps({"scene": name, "bands": bands, "model": "linear regression (3 bands + 1)", **bar}), flush=True)
        rows.append((name, "linear regression (3 bands + 1)", f"{bar['PSNR']:.2f}", f"{bar['SAM']:.2f}", "0", "0", "-"))
        for variant_name, variant in VARIANTS.items():
            if args.only and variant_name not in args.only:
                continue
            runs = []
            for seed in args.seeds:
                result = train_variant(variant, train, test, args.steps, seed)
                runs.append(result)
                print(json.dumps({"scene": name, "model": variant_name, "seed": seed, "steps": args.steps, **result}),
                      flush=True)
            rows.append((name, variant_name, mean_std([r["PSNR"] for r in runs]), mean_std([r["SAM"] for r in runs]),
                         mean_std([r["seconds"] for r in runs]), mean_std([r["cpu_seconds"] for r in runs]),
                         str(len(runs))))
    print(json.dumps({"load_after": open("/proc/loadavg").read().split()[:3]}) if os.path.exists("/proc/loadavg") else "{}")
    print(f"\n{args.steps} steps, threads {args.threads}\n")
    print("| scene | model | test PSNR (dB) | test SAM (deg) | wall seconds | CPU seconds | seeds |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
