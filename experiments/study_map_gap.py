"""How far each pre-training source of a finished study is from the scene's own abundance maps.

The study's arms differ only in the abundance maps their HSIs are rendered from (the endmembers are the
scene's stage-1 endmembers in every arm), and every arm is fine-tuned on the real scene. This script puts
the maps beside the ones stage 1 assigns to the scene itself (`Unmixing.py infer --hsi` on its real training
HSI) and measures, per source, the per-pixel gap (energy distance of the abundance vectors, Wasserstein
distance of the brightness, each beside the reference's own sampling floor) and the spatial one (correlation
length, autocorrelation profile), next to the arm's denoising gain (every seed the study folder holds):

    python experiments/study_map_gap.py STUDY          # the --out folder of experiments/study.py
    python experiments/study_map_gap.py STUDY --pixels 3000 --seed 1

Writes STUDY/map_gap_<scene>/report.md, report.json and map_gap.png; the reference maps are inferred once
into STUDY/map_gap_<scene>/scene_maps and reused. Metrics: ubf/evaluation/map_gap.py.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from ubf.core.errors import OneLineParser, UserError, cli_main  # noqa: E402
from ubf.core.fs import atomic_output  # noqa: E402

LABELS = {"scene": "the scene's own maps (stage 1 on its real HSI)",
          "control_dirichlet": "Dirichlet mixtures (no structure)",
          "control_structure": "dead-leaves maps (structure no RGB gave)",
          "control_gaussian": "Gaussian-field maps",
          "control_shuffled": "the inferred maps, pixels shuffled"}


def label(name: str) -> str:
    if name.startswith("inferred_"):
        return f"maps inferred from RGB, {name[len('inferred_'):]}"
    if name.startswith("ddpm_"):
        return f"DDPM samples, {name[len('ddpm_'):]}"
    return LABELS.get(name, name)


def source_folders(study: str, scene: str) -> dict[str, str]:
    """{arm: its abundance-map folder} for the arms a study folder has: every map control, every inferred
    set, every DDPM's samples (the noisy-copies control is HSIs, not maps, and is left out)."""
    found = {}
    for folder in sorted(glob.glob(os.path.join(study, f"control_*_{scene}"))):
        control = os.path.basename(folder)[len("control_"):-len(f"_{scene}")]
        if control != "copies":
            found[f"control_{control}"] = folder
    for folder in sorted(glob.glob(os.path.join(study, f"sets_{scene}", "*"))):
        found[f"inferred_{os.path.basename(folder)}"] = folder
    for folder in sorted(glob.glob(os.path.join(study, f"ddpm_{scene}_*", "run", "mat_results"))):
        found[f"ddpm_{os.path.basename(os.path.dirname(os.path.dirname(folder)))[len(f'ddpm_{scene}_'):]}"] = folder
    return {arm: folder for arm, folder in found.items() if glob.glob(os.path.join(folder, "*.mat"))}


def scene_maps(study: str, scene: str, out: str, args) -> str:
    """The reference: stage 1 run over the scene's real training HSIs (once; reused while its files are there)."""
    from study import run_cli
    ckpt = os.path.join(study, f"stage1_{scene}", "checkpoint", "latest.pth")
    train = os.path.join(study, "data", scene, "train")
    for needed in (ckpt, train):
        if not os.path.exists(needed):
            raise UserError(f"{needed}: not found; is {study} the --out folder of a finished experiments/study.py?")
    target = os.path.join(out, "scene_maps")
    wanted = {os.path.splitext(n)[0] for n in os.listdir(train) if n.endswith(".mat")}
    done = {os.path.splitext(n)[0] for n in os.listdir(target)} if os.path.isdir(target) else set()
    if not wanted <= done:
        run_cli(["Unmixing.py", "infer", "--ckpt", ckpt, "--hsi", train, "--out", target, "--no-recon",
                 "--no-progress", "--overwrite", "--device", args.device, "--threads", str(args.threads),
                 "--profile", args.profile], args.threads)
    return target


def gains(study: str, arms, scene: str) -> dict:
    """The pooled denoising gain over real only of the arms that have downstream reports (all their seeds)."""
    import study_more_seeds_report as pool
    with_reports = [a for a in arms if pool.arm_reports(study, a, scene)]
    if not with_reports:
        return {}
    result = pool.pooled(study, with_reports, scene)
    return {arm: {k: result[arm][k] for k in ("mean", "std", "stderr", "n", "median", "failed_seeds")}
            for arm in with_reports}


def gain_cell(gain: dict | None) -> str:
    """Mean +/- SE (seeds) and the median; failed runs (`study_more_seeds_report.failed_runs`) named."""
    if not gain:
        return "-"
    failed = gain.get("failed_seeds") or []
    return (f"{gain['mean']:+.2f} +/- {gain['stderr']:.2f} ({gain['n']}); median {gain['median']:+.2f}"
            + (f"; failed: seed {', '.join(map(str, failed))}" if failed else ""))


def format_report(result: dict) -> str:
    floor = result["floor"]
    bright = "brightness_wasserstein" in floor
    lines = [f"# Abundance-map gap to the scene's own maps: {result['scene']}", "",
             f"Reference: {label('scene')}, {result['reference']['n_maps']} map(s). Pixel distances on "
             f"{result['pixels']} pixels per set (seed {result['seed']}), to the first half of the reference; floor "
             f"(how far the reference's second half is, another region of the same scene): abundance energy {floor['abundance_energy']:.4f}"
             + (f", brightness Wasserstein {floor['brightness_wasserstein']:.4f}" if bright else "") + ".", "",
             "| source | maps | mean largest abundance | correlation length (px) | brightness mean +/- std "
             "| abundance energy distance | brightness Wasserstein | denoising gain (dB, mean +/- SE (seeds); median) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ["reference"] + result["sets"]:
        row = result[name]
        gain = result["gains"].get(name)
        cells = [label("scene") if name == "reference" else label(name), str(row["n_maps"]), f"{row['mean_max']:.3f}",
                 f"{row['correlation_length']:.1f}",
                 f"{row['bright_mean']:.3f} +/- {row['bright_std']:.3f}" if "bright_mean" in row else "-",
                 "-" if name == "reference" else f"{row['abundance_energy']:.4f}",
                 f"{row['brightness_wasserstein']:.4f}" if "brightness_wasserstein" in row else "-",
                 gain_cell(gain)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: str, result: dict, pixels: dict) -> None:
    """Autocorrelation profiles, brightness and largest-abundance histograms, one line per source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0))
    for name in ["reference"] + result["sets"]:
        style = {"color": "black", "linewidth": 2.2} if name == "reference" else {"linewidth": 1.2}
        text = label("scene") if name == "reference" else label(name)
        profile = result[name]["profile"]
        axes[0].plot(range(len(profile)), profile, label=text, **style)
        abundances, bright = pixels[name]
        axes[2].hist(abundances.max(axis=1), bins=40, range=(0, 1), density=True, histtype="step", **style)
        if bright is not None:
            axes[1].hist(bright, bins=40, density=True, histtype="step", **style)
    axes[0].axhline(np.exp(-1), color="grey", linestyle=":", linewidth=0.8)
    axes[0].set(xlabel="lag (pixels)", ylabel="autocorrelation (pooled over endmembers)", title="spatial structure")
    axes[1].set(xlabel="brightness (Bright)", ylabel="density", title="brightness per pixel")
    axes[2].set(xlabel="largest abundance of a pixel", ylabel="density", title="how pure the pixels are")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['scene']}: pre-training maps against the scene's own", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="study_map_gap.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the --out folder of a finished experiments/study.py")
    parser.add_argument("--scene", default="chikusei", help="the study's scene (default chikusei, the main one)")
    parser.add_argument("--pixels", type=int, default=2000, help="pixels drawn per set for the distances (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel draws (default 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", default="improved", choices=["faithful", "improved"],
                        help="stage 1's inference profile for the scene's maps (default improved, the study's)")
    return parser


@cli_main
def main(argv=None) -> None:
    from ubf.evaluation.map_gap import map_gap, sample_pixels
    from ubf.evaluation.structure_controls import read_abundance_maps
    args = build_parser().parse_args(argv)
    study = os.path.abspath(args.study)
    if not os.path.isdir(study):
        raise UserError(f"{args.study}: study folder not found")
    sources = source_folders(study, args.scene)
    if not sources:
        raise UserError(f"{study}: no abundance maps of scene {args.scene} (control_*, sets_*, ddpm_*) here")
    out = os.path.join(study, f"map_gap_{args.scene}")
    os.makedirs(out, exist_ok=True)
    reference = read_abundance_maps(scene_maps(study, args.scene, out, args))
    sets = {name: read_abundance_maps(folder) for name, folder in sources.items()}
    result = map_gap(reference, sets, pixels=args.pixels, seed=args.seed)
    result.update(scene=args.scene, sets=list(sets), folders=sources, gains=gains(study, list(sets), args.scene))
    pixels = {name: sample_pixels(*(reference if name == "reference" else sets[name]), result["pixels"], args.seed)
              for name in ["reference"] + list(sets)}
    with atomic_output(os.path.join(out, "report.json")) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    with atomic_output(os.path.join(out, "report.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(format_report(result))
    plot(os.path.join(out, "map_gap.png"), result, pixels)
    print(format_report(result), end="")
    print(f"[map gap] {os.path.join(out, 'report.md')}, report.json and map_gap.png")


if __name__ == "__main__":
    main()
