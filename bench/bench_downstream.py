"""Benchmark the downstream networks: step times, convergence of the real-only arm, and where the spectral
prior alone saturates.

Sections (`--sections`, default all; run in the order curves, saturation, steps):
- `steps`: the time of one training step (batch 8, crop 64 by default) of every model on every task, for
  C = 59 and C = 205 bands, median of `--repeats` blocks of `--step-count` steps; `full` times the whole
  step of `evaluation.downstream._fit` (crops drawn from an in-memory 128 x 128 cube, the task's input
  built, forward, backward, Adam), `model` the forward + backward + Adam alone on fixed tensors;
- `curves`: the real-only arm's test PSNR every `--eval-every` steps up to `--curve-steps` (UNet,
  denoise at `--curve-sigma` and sr4), trained on Chikusei crop 118 and tested on crop 282; the
  convergence point is the first recorded step within 0.1 dB (and 0.2 dB) of the best recorded PSNR;
- `saturation`: real-only, the same data: for denoising at each `--sigmas`, the per-pixel denoiser
  (`--model pixel`, 1 x 1 convolutions only) against the UNet, `--steps` each, with the noisy input's
  PSNR; for sr4 the UNet against bicubic upsampling (the task's input); and the UNet with the identity
  skip path at `--curve-sigma` (the default is the linear one for denoising). The gap UNet - pixel is
  what spatial context adds beyond the spectral prior.

Prints Markdown tables and the load average; `--json FILE` also writes every figure.

    nice -n 15 python bench/bench_downstream.py [--data ../shared/data/paper/chikusei] [--sections steps curves]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.data.hsi_dataset import prepare_pair  # noqa: E402
from ubf.data.matio import read_hsi  # noqa: E402
from ubf.evaluation.downstream import (Curve, DownstreamSettings, _fit, default_bands, input_scores,  # noqa: E402
                                       make_model, skip_path, test_arm, train_arm)
from ubf.evaluation.downstream_models import default_lr  # noqa: E402
from ubf.evaluation.downstream_tasks import make_task  # noqa: E402
from ubf.evaluation.synthetic_sets import PairSet  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "paper",
                            "chikusei")
CPU = torch.device("cpu")


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def chikusei(folder: str):
    """(train pairs, test pairs, bands): crop 118 to train, crop 282 to test, per-file min-max."""
    train, test = (read_hsi(os.path.join(folder, f"block_{n}.mat"))[0] for n in (118, 282))
    bands = default_bands(train.shape[2])
    return [prepare_pair(train, bands)], [prepare_pair(test, bands)], bands


def step_times(args) -> list[dict]:
    rows = []
    for n_bands in (59, 205):
        cube = np.random.default_rng(0).random((128, 128, n_bands)).astype(np.float32)
        source = PairSet([(cube[..., :3].copy(), cube)])
        for task_name in ("rgb2hsi", "denoise", "sr4"):
            for model_name in ("unet", "cnn", "pixel"):
                settings = DownstreamSettings(task=task_name, model=model_name, batch=args.batch, crop=args.crop,
                                              steps=args.step_count)
                task = make_task(settings)
                torch.manual_seed(0)
                model = make_model(settings, n_bands, task)
                rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
                full = []
                for _ in range(args.repeats + 1):  # the first block warms up
                    start = time.perf_counter()
                    _fit(model, task, source, None, 0.0, args.step_count, settings, rng, gen, CPU, "", False)
                    full.append((time.perf_counter() - start) / args.step_count)
                x = task.make_input(torch.rand(args.batch, n_bands, args.crop, args.crop),
                                    torch.rand(args.batch, 3, args.crop, args.crop), gen)
                y = torch.rand(args.batch, n_bands, args.crop, args.crop)
                optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
                alone = []
                for _ in range(args.repeats + 1):
                    start = time.perf_counter()
                    for _ in range(args.step_count):
                        loss = torch.nn.functional.l1_loss(model(x), y)
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                        optimiser.step()
                    alone.append((time.perf_counter() - start) / args.step_count)
                row = {"bands": n_bands, "task": task_name, "model": model_name,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "full_s": float(np.median(full[1:])), "model_s": float(np.median(alone[1:])), "load": load()}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def lr_setting(args) -> dict:
    return {} if args.lr is None else {"lr": args.lr}


def convergence(points, tolerance: float) -> int:
    best = max(p for _, p in points)
    return int(next(s for s, p in points if p >= best - tolerance))


def curves(args, train, test) -> list[dict]:
    rows = []
    for task_name in ("denoise", "sr4"):
        settings = DownstreamSettings(task=task_name, model="unet", steps=args.curve_steps, batch=args.batch,
                                      crop=args.crop, noise_sigma=args.curve_sigma, eval_every=args.eval_every,
                                      **lr_setting(args))
        start = time.time()
        curve = Curve(settings.eval_every, test, CPU, settings)
        model = train_arm(train, None, settings, 0, CPU, False, curve)
        final = test_arm(model, test, CPU, settings)["psnr"]
        row = {"task": task_name, "sigma": args.curve_sigma if task_name == "denoise" else None,
               "steps": args.curve_steps, "lr": settings.lr or default_lr("unet"), "final_psnr": final, "best_psnr": max(p for _, p in curve.points),
               "input_psnr": input_scores(test, settings)["psnr"],
               "within_0.1dB_step": convergence(curve.points, 0.1), "within_0.2dB_step": convergence(curve.points, 0.2),
               "within_0.5dB_step": convergence(curve.points, 0.5),
               "seconds": time.time() - start, "load": load(), "curve": curve.points}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def saturation(args, train, test) -> list[dict]:
    rows = []
    runs = [("denoise", sigma, model, None) for sigma in args.sigmas for model in ("pixel", "unet")]
    runs += [("denoise", args.curve_sigma, "unet", "identity"), ("sr4", None, "unet", None)]
    for task_name, sigma, model_name, skip in runs:
        settings = DownstreamSettings(task=task_name, model=model_name, steps=args.steps, batch=args.batch,
                                      crop=args.crop, noise_sigma=sigma or 0.1, skip=skip, **lr_setting(args))
        start = time.time()
        model = train_arm(train, None, settings, 0, CPU, False)
        scores = test_arm(model, test, CPU, settings)
        row = {"task": task_name, "sigma": sigma, "model": model_name, "skip": skip_path(settings),
               "steps": args.steps, "lr": settings.lr or default_lr(model_name), "psnr": scores["psnr"],
               "sam": scores["sam"], "input_psnr": input_scores(test, settings)["psnr"],
               "seconds": time.time() - start, "load": load()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def print_tables(results: dict) -> None:
    if "steps" in results:
        print("\n| bands | task | model | parameters | full step (s) | model step (s) | load |")
        print("|---|---|---|---|---|---|---|")
        for r in results["steps"]:
            print(f"| {r['bands']} | {r['task']} | {r['model']} | {r['parameters']:,} | {r['full_s']:.3f} | "
                  f"{r['model_s']:.3f} | {r['load']} |")
    if "curves" in results:
        print("\n| task | steps | input PSNR | final PSNR | best PSNR | within 0.5 / 0.2 / 0.1 dB of best at step | "
              "time (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in results["curves"]:
            name = f"denoise sigma {r['sigma']}" if r["task"] == "denoise" else r["task"]
            print(f"| {name} | {r['steps']} | {r['input_psnr']:.2f} | {r['final_psnr']:.2f} | {r['best_psnr']:.2f} | "
                  f"{r['within_0.5dB_step']} / {r['within_0.2dB_step']} / {r['within_0.1dB_step']} | "
                  f"{r['seconds']:.0f} |")
        for r in results["curves"]:
            print(f"\ncurve {r['task']}: " + ", ".join(f"{s}: {p:.2f}" for s, p in r["curve"]))
    if "saturation" in results:
        rows = results["saturation"]
        print("\n| task | noisy / bicubic input PSNR | per-pixel (1x1) PSNR | UNet PSNR | UNet - per-pixel (dB) | "
              "UNet - input (dB) |")
        print("|---|---|---|---|---|---|")
        for sigma in sorted({r["sigma"] for r in rows if r["task"] == "denoise"}):
            pixel = next(r for r in rows if r["sigma"] == sigma and r["model"] == "pixel")
            unet = next(r for r in rows if r["sigma"] == sigma and r["model"] == "unet" and r["skip"] == "linear")
            print(f"| denoise sigma {sigma} | {unet['input_psnr']:.2f} | {pixel['psnr']:.2f} | {unet['psnr']:.2f} | "
                  f"{unet['psnr'] - pixel['psnr']:+.2f} | {unet['psnr'] - unet['input_psnr']:+.2f} |")
        for r in rows:
            if r["task"] == "sr4":
                print(f"| sr4 | {r['input_psnr']:.2f} | - | {r['psnr']:.2f} | - | {r['psnr'] - r['input_psnr']:+.2f} |")
            elif r["skip"] == "identity":
                print(f"| denoise sigma {r['sigma']}, UNet with the identity skip path | {r['input_psnr']:.2f} | - | "
                      f"{r['psnr']:.2f} | - | {r['psnr'] - r['input_psnr']:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with block_118.mat and block_282.mat")
    parser.add_argument("--sections", nargs="+", choices=("steps", "curves", "saturation"),
                        default=["steps", "curves", "saturation"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the curves and saturation runs "
                        "(default: the downstream default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per step time (median)")
    parser.add_argument("--step-count", type=int, default=5, help="steps per timed block")
    parser.add_argument("--curve-steps", type=int, default=3000)
    parser.add_argument("--curve-sigma", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the saturation runs")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_downstream: {' '.join(sys.argv[1:]) or '(defaults)'}; {args.threads} thread(s); {load()}",
          flush=True)
    results = {}
    if {"curves", "saturation"} & set(args.sections):
        train, test, _ = chikusei(args.data)
        if "curves" in args.sections:
            results["curves"] = curves(args, train, test)
        if "saturation" in args.sections:
            results["saturation"] = saturation(args, train, test)
    if "steps" in args.sections:
        results["steps"] = step_times(args)
    print_tables(results)
    print(f"\n{load()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
