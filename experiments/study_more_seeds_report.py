"""Pool the study's denoising seeds with those of `experiments/study.py --more-seeds FIRST LAST`.

With three seeds the arms' differences are inside the seed-to-seed spread; pooled over more seeds, the
paired difference (same seed, same real data) gets a standard error std / sqrt(n) that can separate them.
`study.py --more-seeds` writes <study>/more_seeds/report.md, report.json and seeds.png (every seed's gain per
arm) when its runs end; this script writes them again from the folders alone:

    python experiments/study_more_seeds_report.py STUDY_DIR      # the --out folder of experiments/study.py
"""
import argparse
import glob
import json
import os
import re

import numpy as np

TASK = "denoise"  # the task whose arms get more seeds (the one the study's sweep runs on)
ARMS = ("control_dirichlet", "control_structure", "inferred_aid-50")  # the default budget's arms
LABELS = {"control_dirichlet": "Dirichlet mixtures (no structure)",
          "control_structure": "dead-leaves maps (structure no RGB gave)",
          "control_copies": "noisy copies of the real files",
          "inferred_aid-50": "HSIs from the inferred maps, aid-50"}


def arm_pairs(arms) -> list[tuple[str, str]]:
    """The differences the claim is about: every RGB-derived arm minus every control (the last control
    first), then every control minus the ones before it."""
    rgb = [a for a in arms if not a.startswith("control_")]
    controls = [a for a in arms if a.startswith("control_")]
    pairs = [(r, c) for r in rgb for c in reversed(controls)]
    return pairs + [(later, earlier) for i, earlier in enumerate(controls) for later in controls[i + 1:]]


def seed_values(report: dict, kind: str) -> dict[int, float]:
    """{seed: PSNR} of one downstream report's `kind` (real_only or real_plus_synthetic)."""
    found = {}
    for key, value in report.items():
        match = re.fullmatch(rf"{kind}\.seed(\d+)\.psnr", key)
        if match:
            found[int(match.group(1))] = float(value)
    return found


def arm_reports(study: str, arm: str, scene: str) -> list[str]:
    """The finished report.json files of one arm: the study's own folder, then more_seeds/<arm>_s*."""
    folders = [os.path.join(study, f"downstream_{scene}_{TASK}_{arm}")]
    folders += sorted(glob.glob(os.path.join(study, "more_seeds", f"{arm}_s*")))
    return [p for p in (os.path.join(f, "report.json") for f in folders) if os.path.isfile(p)]


def seed_owners(study: str, arm: str, scene: str = "chikusei") -> dict[int, str]:
    """{seed: the report that holds its pre-trained score}; a seed in two reports of one arm is refused."""
    owners = {}
    for path in arm_reports(study, arm, scene):
        with open(path) as handle:
            for seed in seed_values(json.load(handle), "real_plus_synthetic"):
                if seed in owners:
                    raise SystemExit(f"{path}: seed {seed} is also in another report of {arm} ({owners[seed]})")
                owners[seed] = path
    return owners


def collect(study: str, arm: str, scene: str = "chikusei") -> tuple[dict[int, float], dict[int, float]]:
    """(real only, pre-trained) PSNR per seed of one arm, from the study's folder and more_seeds/."""
    seed_owners(study, arm, scene)  # refuses a seed run twice
    real, synthetic = {}, {}
    for path in arm_reports(study, arm, scene):
        with open(path) as handle:
            report = json.load(handle)
        synthetic.update(seed_values(report, "real_plus_synthetic"))
        real.update(seed_values(report, "real_only"))
    return real, synthetic


def summarise(values: list[float]) -> dict:
    """Mean, population std (as the study reports it), standard error (sample std / sqrt n), count."""
    array = np.asarray(values, dtype=float)
    error = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "std": float(array.std()), "stderr": error, "n": int(len(array))}


def pooled(study: str, arms=ARMS, scene: str = "chikusei") -> dict:
    """Per arm the gain over real only per seed, and the paired differences between arms on the seeds
    that both have."""
    real, found = {}, {}
    for arm in arms:
        arm_real, arm_synthetic = collect(study, arm, scene)
        real.update(arm_real)
        found[arm] = arm_synthetic
    out = {"scene": scene, "task": TASK, "arms": list(arms),
           "real_only": summarise(list(real.values())) | {"seeds": sorted(real)}}
    for arm, synthetic in found.items():
        seeds = sorted(s for s in synthetic if s in real)
        gains = [synthetic[s] - real[s] for s in seeds]
        out[arm] = summarise(gains) | {"seeds": seeds, "gain_per_seed": gains}
    for first, second in arm_pairs(arms):
        seeds = sorted(set(found[first]) & set(found[second]))
        diffs = [found[first][s] - found[second][s] for s in seeds]
        out[f"{first}-{second}"] = summarise(diffs) | {"ahead": int(sum(d > 0 for d in diffs))}
    return out


def arms_in(folder: str) -> list[str]:
    """The arms with folders `<arm>_s<a>-<b>` in more_seeds/ (controls first, in the budgets' order), else ARMS."""
    found = {m.group(1) for m in (re.fullmatch(r"(.+)_s\d+-\d+", n) for n in os.listdir(folder)) if m}
    return sorted(a for a in found if a.startswith("control_")) + sorted(a for a in found
                                                                       if not a.startswith("control_")) or list(ARMS)


def title(result: dict) -> str:
    return f"{result['scene'].capitalize()} {'denoising' if result['task'] == 'denoise' else result['task']}"


def plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    arms = result["arms"]
    for index, arm in enumerate(arms):
        gains = result[arm]["gain_per_seed"]
        jitter = np.linspace(-0.15, 0.15, len(gains)) if len(gains) > 1 else [0.0]
        ax.scatter(index + np.asarray(jitter), gains, s=18, alpha=0.7)
        ax.errorbar([index + 0.3], [result[arm]["mean"]], yerr=[2 * result[arm]["stderr"]], color="black",
                    marker="o", capsize=4)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(arms)), [LABELS.get(a, a) for a in arms], fontsize=8)
    ax.set_ylabel("PSNR gain over real only (dB)")
    ax.set_title(f"{title(result)}, {result[arms[0]]['n']} seeds: every seed, mean +/- 2 standard errors",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: str, result: dict) -> None:
    lines = [f"# {title(result)}, pooled seeds", "",
             f"Real only: {result['real_only']['mean']:.2f} +/- {result['real_only']['std']:.2f} dB over "
             f"{result['real_only']['n']} seeds.", "",
             "| arm | seeds | gain (dB), mean +/- std | standard error |", "|---|---|---|---|"]
    for arm in result["arms"]:
        r = result[arm]
        lines.append(f"| {LABELS.get(arm, arm)} | {r['n']} | {r['mean']:+.2f} +/- {r['std']:.2f} | {r['stderr']:.2f} |")
    lines += ["", "| paired difference | seeds | mean +/- std (dB) | standard error | seeds ahead |",
              "|---|---|---|---|---|"]
    for first, second in arm_pairs(result["arms"]):
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
    parser.add_argument("study", help="a study folder with more_seeds/ from experiments/study.py --more-seeds")
    args = parser.parse_args()
    folder = os.path.join(args.study, "more_seeds")
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not found (run experiments/study.py --out STUDY_DIR --more-seeds FIRST LAST first)")
    result = pooled(args.study, arms_in(folder))
    write_report(folder, result)
    plot(os.path.join(folder, "seeds.png"), result)
    print(open(os.path.join(folder, "report.md")).read())


if __name__ == "__main__":
    main()
