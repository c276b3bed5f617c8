"""Sampler fidelity against time on one trained DDPM: ancestral (all T), DDIM 10/20/50/100 (eta 0 and 1),
DPM-Solver++(2M) 10/20/50.

    python bench/bench_samplers.py --ddpm CKPT --unmixing BEST.pth --abundances DIR --out DIR
                                   [--samples 32] [--threads 1]

Every sampler starts from the same initial noise (one seed). Samples are projected onto the simplex,
rendered with the unmixing checkpoint's endmembers, and scored by `evaluation.generation` against HSIs
rendered from the DDPM's own training maps (`--abundances`, the like-for-like reference; the feature
network is trained once and cached in --out). Prints one JSON line per sampler and writes
`samplers.json`, `samplers.md` (a table) and `samplers.png` (FD_half and precision/recall against
seconds per sample) in --out. Times are wall-clock on this machine: report the load beside them.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.data.matio import read_mat, write_mat  # noqa: E402
from ubf.evaluation.generation import GenerationSettings, run_generation  # noqa: E402
from ubf.evaluation.roughness import as_channels_first, noisy_fraction  # noqa: E402
from ubf.pipeline.diffusion_config import load_diffusion_config  # noqa: E402
from ubf.pipeline.diffusion_sample import (build_diffusion, load_weights_for_sampling, signed_abundance,  # noqa: E402
                                       to_abundance)
from ubf.pipeline.synthesis import load_endmembers, synthesize  # noqa: E402

SAMPLERS = [("ancestral", None), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
            ("dpmpp2m", 10), ("dpmpp2m", 20), ("dpmpp2m", 50), ("ddim_eta1", 50), ("ddim_eta1", 100)]


def render(abundances_hwk: list[np.ndarray], endmembers: np.ndarray, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(abundances_hwk):
        _, hsi = synthesize(a, endmembers, simplex=True)
        write_mat(os.path.join(folder, f"{i:04d}.mat"), {"HSI": hsi, "Abu": a})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddpm", required=True, help="stage 2 checkpoint (I<step>_E<epoch>.pth)")
    parser.add_argument("--unmixing", required=True, help="stage 1 checkpoint whose endmembers render the HSIs")
    parser.add_argument("--abundances", required=True, help="the DDPM's training abundance maps (.mat with Abu)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    parser.add_argument("--only", nargs="*", help="sampler labels to run (e.g. ddim-10 dpmpp2m-20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    endmembers, _, _ = load_endmembers(args.unmixing)
    maps = [read_mat(os.path.join(args.abundances, f), ["Abu"])["Abu"]
            for f in sorted(os.listdir(args.abundances)) if f.endswith(".mat")]
    reference = os.path.join(args.out, "reference")
    if not os.path.isdir(reference):
        render(maps, endmembers, reference)
    cfg = load_diffusion_config(None)
    unet, model_cfg, step, which = load_weights_for_sampling(args.ddpm, cfg, torch.device("cpu"), not args.raw)
    diffusion = build_diffusion(model_cfg, unet, "val")
    size, channels = model_cfg["diffusion"]["image_size"], model_cfg["diffusion"]["channels"]
    noise = torch.randn((args.samples, channels, size, size), generator=torch.Generator().manual_seed(0))
    settings = GenerationSettings(feature_cache=os.path.join(args.out, "feature_cache"), normalise_real=False,
                                  endmembers=args.unmixing)
    rows = []
    for sampler, steps in SAMPLERS:
        label = f"{sampler}-{steps or diffusion.num_timesteps}"
        if args.only and label not in args.only:
            continue
        started = time.perf_counter()
        with torch.no_grad():
            if sampler == "ancestral":
                x = diffusion.ancestral_sample(noise.shape, "cpu", torch.Generator().manual_seed(1), noise=noise)
            elif sampler.startswith("ddim"):  # ddim_eta1: stochastic DDIM, ancestral over a subsequence
                x = diffusion.ddim_sample(noise.shape, "cpu", steps, 1.0 if sampler == "ddim_eta1" else 0.0,
                                          torch.Generator().manual_seed(1), noise=noise)
            else:
                x = diffusion.dpmpp2m_sample(noise.shape, "cpu", steps, noise=noise)
        seconds = (time.perf_counter() - started) / args.samples
        abundance = to_abundance(signed_abundance(x.clamp(-1, 1), model_cfg), True)
        folder = os.path.join(args.out, label)
        render(list(abundance.permute(0, 2, 3, 1).numpy()), endmembers, folder)
        rough = noisy_fraction(abundance.double(), [as_channels_first(m) for m in maps])
        settings.baselines = not rows  # the Dirichlet baseline once
        report = run_generation(reference, folder, os.path.join(args.out, f"report_{label}"), settings,
                                torch.device("cpu"), overwrite=True, progress=False)
        row = {"sampler": label, "network_evaluations": steps or diffusion.num_timesteps, "s_per_sample": seconds,
               "ddpm_step": step, "weights": which, "load": os.getloadavg()[0],
               **{k: report.get(k) for k in ("F_p", "FD", "FD_half", "precision", "recall", "FD_real_floor",
                                             "baseline_dirichlet.FD_half")},
               "noisy_sample_fraction": rough["noisy_sample_fraction"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(os.path.join(args.out, "samplers.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    lines = ["| sampler | evaluations | s / sample | F_p | FD | FD_half | precision | recall | noisy |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['network_evaluations']} | {r['s_per_sample']:.3f} | {r['F_p']:.3f} | "
              f"{r['FD']:.3f} | {r['FD_half']:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | "
              f"{r['noisy_sample_fraction']:.2f} |" for r in rows]
    with open(os.path.join(args.out, "samplers.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out, "samplers.png"))
    print("\n".join(lines))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for family, marker in (("ancestral", "s"), ("ddim", "o"), ("ddim_eta1", "v"), ("dpmpp2m", "^")):
        mine = [r for r in rows if r["sampler"].rsplit("-", 1)[0] == family]
        if not mine:
            continue
        t = [r["s_per_sample"] for r in mine]
        axes[0].plot(t, [r["FD_half"] for r in mine], marker=marker, label=family)
        axes[1].plot(t, [r["precision"] for r in mine], marker=marker, label=f"{family} precision")
        axes[1].plot(t, [r["recall"] for r in mine], marker=marker, linestyle="--", label=f"{family} recall")
        for r in mine:
            axes[0].annotate(str(r["network_evaluations"]), (r["s_per_sample"], r["FD_half"]), fontsize=7)
    floor = rows[0].get("FD_real_floor")
    if floor is not None:
        axes[0].axhline(floor, color="grey", linestyle=":", label="real-vs-real floor")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("seconds per sample")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("FD_half (lower is better)")
    axes[1].set_ylabel("k-NN precision / recall")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
