"""Pool the study's Chikusei denoising seeds with those of experiments/study_more_seeds.sh.

With three seeds the arms' differences are inside the seed-to-seed spread; pooled over more seeds, the
paired difference (same seed, same real data) gets a standard error std / sqrt(n) that can separate them.
Writes <study>/more_seeds/report.md, report.json and seeds.png (every seed's gain per arm).

    python experiments/study_more_seeds_report.py STUDY_DIR      # the --out folder of experiments/study.py
"""
import argparse
import glob
import json
import os
import re

import numpy as np

ARMS = ("control_dirichlet", "control_structure", "inferred_aid-50")
LABELS = {"control_dirichlet": "Dirichlet mixtures (no structure)",
          "control_structure": "dead-leaves maps (structure no RGB gave)",
          "inferred_aid-50": "HSIs from the inferred maps, aid-50"}
PAIRS = (("inferred_aid-50", "control_structure"), ("inferred_aid-50", "control_dirichlet"),
         ("control_structure", "control_dirichlet"))


def seed_values(report: dict, kind: str) -> dict[int, float]:
    """{seed: PSNR} of one downstream report's `kind` (real_only or real_plus_synthetic)."""
    found = {}
    for key, value in report.items():
        match = re.fullmatch(rf"{kind}\.seed(\d+)\.psnr", key)
        if match:
            found[int(match.group(1))] = float(value)
    return found


def collect(study: str, arm: str) -> tuple[dict[int, float], dict[int, float]]:
    """(real only, pre-trained) PSNR per seed of one arm, from the study's folder and more_seeds/."""
    folders = [os.path.join(study, f"downstream_chikusei_denoise_{arm}")]
    folders += sorted(glob.glob(os.path.join(study, "more_seeds", f"{arm}_s*")))
    real, synthetic = {}, {}
    for folder in folders:
        path = os.path.join(folder, "report.json")
        if not os.path.isfile(path):
            continue
        with open(path) as handle:
            report = json.load(handle)
        for seed, value in seed_values(report, "real_plus_synthetic").items():
            if seed in synthetic:
                raise SystemExit(f"{path}: seed {seed} is also in another report of {arm}")
            synthetic[seed] = value
        real.update(seed_values(report, "real_only"))
    return real, synthetic


def summarise(values: list[float]) -> dict:
    """Mean, population std (as the study reports it), standard error (sample std / sqrt n), count."""
    array = np.asarray(values, dtype=float)
    error = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "std": float(array.std()), "stderr": error, "n": int(len(array))}


def pooled(study: str) -> dict:
    """Per arm the gain over real only per seed, and the paired differences between arms on the seeds
    that both have."""
    real, arms = {}, {}
    for arm in ARMS:
        arm_real, arm_synthetic = collect(study, arm)
        real.update(arm_real)
        arms[arm] = arm_synthetic
    out = {"real_only": summarise(list(real.values())) | {"seeds": sorted(real)}}
    for arm, synthetic in arms.items():
        seeds = sorted(s for s in synthetic if s in real)
        gains = [synthetic[s] - real[s] for s in seeds]
        out[arm] = summarise(gains) | {"seeds": seeds, "gain_per_seed": gains}
    for first, second in PAIRS:
        seeds = sorted(set(arms[first]) & set(arms[second]))
        diffs = [arms[first][s] - arms[second][s] for s in seeds]
        out[f"{first}-{second}"] = summarise(diffs) | {"ahead": int(sum(d > 0 for d in diffs))}
    return out


def plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for index, arm in enumerate(ARMS):
        gains = result[arm]["gain_per_seed"]
        jitter = np.linspace(-0.15, 0.15, len(gains)) if len(gains) > 1 else [0.0]
        ax.scatter(index + np.asarray(jitter), gains, s=18, alpha=0.7)
        ax.errorbar([index + 0.3], [result[arm]["mean"]], yerr=[2 * result[arm]["stderr"]], color="black",
                    marker="o", capsize=4)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ARMS)), [LABELS[a] for a in ARMS], fontsize=8)
    ax.set_ylabel("PSNR gain over real only (dB)")
    ax.set_title(f"Chikusei denoising, {result[ARMS[0]]['n']} seeds: every seed, mean +/- 2 standard errors",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: str, result: dict) -> None:
    lines = ["# Chikusei denoising, pooled seeds", "",
             f"Real only: {result['real_only']['mean']:.2f} +/- {result['real_only']['std']:.2f} dB over "
             f"{result['real_only']['n']} seeds.", "",
             "| arm | seeds | gain (dB), mean +/- std | standard error |", "|---|---|---|---|"]
    for arm in ARMS:
        r = result[arm]
        lines.append(f"| {LABELS[arm]} | {r['n']} | {r['mean']:+.2f} +/- {r['std']:.2f} | {r['stderr']:.2f} |")
    lines += ["", "| paired difference | seeds | mean +/- std (dB) | standard error | seeds ahead |",
              "|---|---|---|---|---|"]
    for first, second in PAIRS:
        r = result[f"{first}-{second}"]
        lines.append(f"| {first} - {second} | {r['n']} | {r['mean']:+.2f} +/- {r['std']:.2f} | "
                     f"{r['stderr']:.2f} | {r['ahead']}/{r['n']} |")
    lines += ["", "![every seed](seeds.png)", ""]
    with open(os.path.join(folder, "report.md"), "w") as handle:
        handle.write("\n".join(lines))
    with open(os.path.join(folder, "report.json"), "w") as handle:
        json.dump(result, handle, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study folder with more_seeds/ from experiments/study_more_seeds.sh")
    args = parser.parse_args()
    folder = os.path.join(args.study, "more_seeds")
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not found (run experiments/study_more_seeds.sh first)")
    result = pooled(args.study)
    write_report(folder, result)
    plot(os.path.join(folder, "seeds.png"), result)
    print(open(os.path.join(folder, "report.md")).read())


if __name__ == "__main__":
    main()
