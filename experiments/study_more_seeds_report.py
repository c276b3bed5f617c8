"""Pool the study's seeds of one task with those of `experiments/study.py --more-seeds FIRST LAST [--task T]`.

With three seeds the arms' differences are inside the seed-to-seed spread; pooled over more seeds, the
paired difference (same seed, same real data) gets a standard error std / sqrt(n) that can separate them.
A run that ends below the task's input (a denoiser worse than handing back the noisy image) has failed to
train; one such run moves a 43-seed mean by half a dB, so each summary also gives the median, the failed
seeds and the mean without them (the criterion is the input's own score, not a threshold tuned on these runs).
Runs whose recorded test-PSNR curve (`--eval-every`) falls more than DIP_DB below its best so far at a later
checkpoint are counted as unstable, whether or not they recover by the end.
`study.py --more-seeds` writes <study>/more_seeds/report.md, report.json and seeds.png (every seed's gain per
arm) when its runs end; this script writes them again from the folders alone:

    python experiments/study_more_seeds_report.py STUDY_DIR      # the --out folder of experiments/study.py
    python experiments/study_more_seeds_report.py STUDY_DIR --task sr4   # the seeds of --more-seeds ... --task sr4
"""
import argparse
import glob
import json
import os
import re
import textwrap

import numpy as np

from study_report import TASK_LABELS  # the study report's names of the tasks

TASK = "denoise"  # the task whose arms get more seeds by default (the one the study's sweep runs on)
DIP_DB = 3.0  # several times the seed-to-seed spread of the final PSNR (0.6-0.9 dB)
ARMS = ("control_dirichlet", "control_structure", "inferred_aid-50")  # the default budget's arms
LABELS = {"control_dirichlet": "Dirichlet mixtures (no structure)",
          "control_structure": "dead-leaves maps (structure no RGB gave)",
          "control_copies": "noisy copies of the real files",
          "control_shuffled": "the inferred maps, pixels shuffled",
          "inferred_aid-50": "HSIs from the inferred maps, aid-50",
          "ddpm_aid-50": "DDPM samples trained on aid-50"}


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


def largest_dips(report: dict, kind: str) -> dict[int, float]:
    """{seed: the largest fall (dB) of its test-PSNR curve below the best value before it} of `kind`."""
    found = {}
    for key, points in report.items():
        match = re.fullmatch(rf"curve\.{kind}\.seed(\d+)", key)
        if match and points:
            values = np.asarray([p[1] for p in points], dtype=float)
            found[int(match.group(1))] = float((np.maximum.accumulate(values) - values).max())
    return found


MORE = "more_seeds"  # the folder of the extra seeds trained with the study's own settings


def variant_folder(adam_eps: float | None, task: str = TASK) -> str:
    """Where `study.py --more-seeds` puts its runs: MORE for denoising with the study's settings, MORE_<task>
    for another task, and for another optimiser setting a folder of its own (`_adam-eps-<EPS>` after the
    task's name), whose seeds pool only with each other, never with the study's."""
    return (MORE + ("" if task == TASK else f"_{task}")
            + ("" if adam_eps is None else f"_adam-eps-{adam_eps:g}"))


def arm_reports(study: str, arm: str, scene: str, more: str = MORE, task: str = TASK) -> list[str]:
    """The finished report.json files of one arm on `task`: the study's own folder (only when `more` holds
    the study's own settings), then <more>/<arm>_s*."""
    own = more == variant_folder(None, task)
    folders = [os.path.join(study, f"downstream_{scene}_{task}_{arm}")] if own else []
    folders += sorted(glob.glob(os.path.join(study, more, f"{arm}_s*")))
    return [p for p in (os.path.join(f, "report.json") for f in folders) if os.path.isfile(p)]


def seed_owners(study: str, arm: str, scene: str = "chikusei", more: str = MORE, task: str = TASK
                ) -> dict[int, str]:
    """{seed: the report that holds its pre-trained score}; a seed in two reports of one arm is refused."""
    owners = {}
    for path in arm_reports(study, arm, scene, more, task):
        with open(path) as handle:
            for seed in seed_values(json.load(handle), "real_plus_synthetic"):
                if seed in owners:
                    raise SystemExit(f"{path}: seed {seed} is also in another report of {arm} ({owners[seed]})")
                owners[seed] = path
    return owners


def collect(study: str, arm: str, scene: str = "chikusei", dips: dict | None = None, more: str = MORE,
            task: str = TASK) -> tuple[dict[int, float], dict[int, float], float | None]:
    """(real only, pre-trained) PSNR per seed of one arm, from the study's folder and more_seeds/, and the
    PSNR of the task's input taken as the answer (`input.psnr`; None when no report has it). `dips`, when
    given, gets {"real_only": {seed: dB}, "real_plus_synthetic": {seed: dB}} (`largest_dips`)."""
    seed_owners(study, arm, scene, more, task)  # refuses a seed run twice
    real, synthetic, floor = {}, {}, None
    for path in arm_reports(study, arm, scene, more, task):
        with open(path) as handle:
            report = json.load(handle)
        synthetic.update(seed_values(report, "real_plus_synthetic"))
        real.update(seed_values(report, "real_only"))
        if dips is not None:
            for kind in ("real_only", "real_plus_synthetic"):
                dips.setdefault(kind, {}).update(largest_dips(report, kind))
        if report.get("input.psnr") is not None:
            if floor is not None and abs(floor - float(report["input.psnr"])) > 1e-6:
                raise SystemExit(f"{path}: its input scores {report['input.psnr']:.4f} dB, another report of {arm} "
                                 f"{floor:.4f} dB (other test data)")
            floor = float(report["input.psnr"])
    return real, synthetic, floor


def summarise(values: list[float]) -> dict:
    """Mean, population std (as the study reports it), standard error (sample std / sqrt n), count."""
    array = np.asarray(values, dtype=float)
    error = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "std": float(array.std()), "stderr": error, "n": int(len(array))}


def robust(values: list[float], seeds: list[int], failed: set[int]) -> dict:
    """The median, the failed seeds among `seeds`, and `summarise` of the values of the others."""
    kept = [v for v, s in zip(values, seeds) if s not in failed]
    return {"median": float(np.median(values)), "failed_seeds": sorted(set(seeds) & failed),
            "without_failed": summarise(kept) if kept else None}


def pooled(study: str, arms=ARMS, scene: str = "chikusei", more: str = MORE, task: str = TASK) -> dict:
    """Per arm the gain over real only per seed, and the paired differences between arms on the seeds
    that both have; each with its median and its summary without the failed runs (`failed_runs`)."""
    real, found, floor, dips = {}, {}, None, {}
    for arm in arms:
        dips[arm] = {}
        arm_real, arm_synthetic, arm_floor = collect(study, arm, scene, dips[arm], more, task)
        real.update(arm_real)
        found[arm] = arm_synthetic
        floor = arm_floor if arm_floor is not None else floor
    failed = {"real_only": failed_runs(real, floor), **{arm: failed_runs(found[arm], floor) for arm in arms}}
    out = {"scene": scene, "task": task, "arms": list(arms), "input_psnr": floor, "folder": more,
           "dip_db": DIP_DB,
           "real_only": summarise(list(real.values())) | {"seeds": sorted(real),
                                                          "failed_seeds": sorted(failed["real_only"]),
                                                          **unstable({k: v for a in arms
                                                                      for k, v in dips[a].get("real_only", {}).items()})}}
    for arm, synthetic in found.items():
        seeds = sorted(s for s in synthetic if s in real)
        gains = [synthetic[s] - real[s] for s in seeds]
        out[arm] = summarise(gains) | {"seeds": seeds, "gain_per_seed": gains} | robust(
            gains, seeds, failed[arm] | failed["real_only"]) | unstable(dips[arm].get("real_plus_synthetic", {}))
    for first, second in arm_pairs(arms):
        seeds = sorted(set(found[first]) & set(found[second]))
        diffs = [found[first][s] - found[second][s] for s in seeds]
        out[f"{first}-{second}"] = summarise(diffs) | {"ahead": int(sum(d > 0 for d in diffs))} | robust(
            diffs, seeds, failed[first] | failed[second])
    return out


def unstable(dips: dict[int, float]) -> dict:
    """The seeds whose curve fell more than DIP_DB below its best, of how many curves were recorded."""
    return {"unstable_seeds": sorted(s for s, d in dips.items() if d > DIP_DB), "curves": len(dips)}


def failed_runs(psnr_per_seed: dict[int, float], input_psnr: float | None) -> set[int]:
    """The seeds whose model ends below the task's input taken as the answer (none when that is unknown)."""
    if input_psnr is None:
        return set()
    return {seed for seed, value in psnr_per_seed.items() if value < input_psnr}


def arms_in(folder: str) -> list[str]:
    """The arms with folders `<arm>_s<a>-<b>` in more_seeds/ (controls first, in the budgets' order), else ARMS."""
    found = {m.group(1) for m in (re.fullmatch(r"(.+)_s\d+-\d+", n) for n in os.listdir(folder)) if m}
    return sorted(a for a in found if a.startswith("control_")) + sorted(a for a in found
                                                                       if not a.startswith("control_")) or list(ARMS)


def title(result: dict) -> str:
    """The scene and task, and the variant (what the folder's name adds to the task's) when it is not the
    study's own settings."""
    task = result.get("task", TASK)
    own = variant_folder(None, task)
    variant = result.get("folder", own)
    return (f"{result['scene'].capitalize()} {TASK_LABELS.get(task, task)}"
            + ("" if variant == own else f" ({variant[len(own):].lstrip('_')})"))


def plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    arms = result["arms"]
    kept_values = [g for arm in arms for g, s in zip(result[arm]["gain_per_seed"], result[arm]["seeds"])
                   if s not in result[arm].get("failed_seeds", [])]
    low, high = (min(kept_values), max(kept_values)) if kept_values else (-1.0, 1.0)
    margin = 0.1 * (high - low) + 0.1
    any_failed = any(result[arm].get("failed_seeds") for arm in arms)
    bottom = low - (2 if any_failed else 1) * margin  # failed runs sit on this line, their value beside them
    labelled = False
    for index, arm in enumerate(arms):
        gains = np.asarray(result[arm]["gain_per_seed"])
        failed = np.isin(result[arm]["seeds"], result[arm].get("failed_seeds", []))
        jitter = np.linspace(-0.15, 0.15, len(gains)) if len(gains) > 1 else np.zeros(1)
        dots = ax.scatter(index + jitter[~failed], gains[~failed], s=18, alpha=0.7)
        for x, gain, seed in zip(index + jitter[failed], gains[failed],
                                 np.asarray(result[arm]["seeds"])[failed]):
            ax.scatter([x], [bottom + 0.3 * margin], marker="v", s=40, color=dots.get_facecolor()[0])
            ax.annotate(f"seed {seed}: {gain:+.1f} (failed)", (x, bottom + 0.3 * margin), fontsize=7,
                        xytext=(6, -3), textcoords="offset points")
        ax.errorbar([index + 0.3], [result[arm]["mean"]], yerr=[2 * result[arm]["stderr"]], color="black",
                    marker="o", capsize=4, label="mean +/- 2 SE, every seed" if index == 0 else None)
        kept = result[arm].get("without_failed")
        if kept and result[arm].get("failed_seeds"):
            ax.errorbar([index + 0.4], [kept["mean"]], yerr=[2 * kept["stderr"]], color="tab:gray", marker="s",
                        capsize=4, label=None if labelled else "without failed runs")
            labelled = True
    ax.set_ylim(bottom, high + margin)
    ax.axhline(0.0, color="black", linewidth=0.8)
    if any_failed:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(range(len(arms)), [textwrap.fill(LABELS.get(a, a), 24) for a in arms], fontsize=8)
    ax.set_ylabel("PSNR gain over real only (dB)")
    ax.set_title(f"{title(result)}, {result[arms[0]]['n']} seeds: every seed, mean +/- 2 standard errors",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def failed_note(summary: dict) -> str:
    seeds = summary.get("failed_seeds") or []
    return f" ({len(seeds)} failed: seed {', '.join(map(str, seeds))})" if seeds else ""


def stability_line(result: dict) -> str:
    """How many recorded curves fell more than DIP_DB below their best at some point, per arm."""
    parts = []
    for name in ["real_only"] + result["arms"]:
        r = result[name]
        if r.get("curves"):
            seeds = r["unstable_seeds"]
            parts.append(f"{'real only' if name == 'real_only' else LABELS.get(name, name)} {len(seeds)} of "
                         f"{r['curves']}" + (f" (seed {', '.join(map(str, seeds))})" if seeds else ""))
    if not parts:
        return "No report recorded test-PSNR curves (--eval-every), so stability is not counted."
    return (f"Curves that fell more than {result.get('dip_db', DIP_DB):.0f} dB below their best at a later "
            f"checkpoint (recovered or not): " + "; ".join(parts) + ".")


def failure_rule(result: dict) -> str:
    if result.get("input_psnr") is None:
        return "No report holds the task input's score, so no run is counted as failed."
    return (f"A run has failed when its model ends below the task's input taken as the answer "
            f"({result['input_psnr']:.2f} dB); a seed is left out of a row's last column when a run it "
            f"compares failed.")


def robust_cells(summary: dict) -> str:
    """The median, failed seeds and summary-without-them cells of one table row."""
    seeds, kept = summary.get("failed_seeds", []), summary.get("without_failed")
    failed = ", ".join(f"seed {s}" for s in seeds) or "none"
    rest = f"{kept['mean']:+.2f} +/- {kept['stderr']:.2f} ({kept['n']})" if kept else "-"
    return f"{summary['median']:+.2f} | {failed} | {rest}"


def write_report(folder: str, result: dict) -> None:
    lines = [f"# {title(result)}, pooled seeds", "",
             f"Real only: {result['real_only']['mean']:.2f} +/- {result['real_only']['std']:.2f} dB over "
             f"{result['real_only']['n']} seeds{failed_note(result['real_only'])}.", "",
             failure_rule(result), "", stability_line(result), "",
             "| arm | seeds | gain (dB), mean +/- std | standard error | median | failed runs | "
             "mean +/- SE without them |", "|---|---|---|---|---|---|---|"]
    for arm in result["arms"]:
        r = result[arm]
        lines.append(f"| {LABELS.get(arm, arm)} | {r['n']} | {r['mean']:+.2f} +/- {r['std']:.2f} | {r['stderr']:.2f} | "
                     f"{robust_cells(r)} |")
    lines += ["", "| paired difference | seeds | mean +/- std (dB) | standard error | seeds ahead | median | "
              "failed runs | mean +/- SE without them |", "|---|---|---|---|---|---|---|---|"]
    for first, second in arm_pairs(result["arms"]):
        r = result[f"{first}-{second}"]
        lines.append(f"| {first} - {second} | {r['n']} | {r['mean']:+.2f} +/- {r['std']:.2f} | "
                     f"{r['stderr']:.2f} | {r['ahead']}/{r['n']} | {robust_cells(r)} |")
    lines += ["", "![every seed](seeds.png)", ""]
    with open(os.path.join(folder, "report.md"), "w") as handle:
        handle.write("\n".join(lines))
    with open(os.path.join(folder, "report.json"), "w") as handle:
        json.dump(result, handle, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study folder with more_seeds/ from experiments/study.py --more-seeds")
    parser.add_argument("--task", default=TASK, help=f"the task the extra seeds ran (default {TASK}; "
                        "study.py --more-seeds ... --task)")
    parser.add_argument("--folder", default=None, help=f"the study's folder of extra seeds (default {MORE} for "
                        f"denoising, {MORE}_<task> for another task; {MORE}[_<task>]_adam-eps-<EPS> for "
                        "--more-seeds ... --adam-eps EPS)")
    args = parser.parse_args(argv)
    name = args.folder or variant_folder(None, args.task)
    folder = os.path.join(args.study, name)
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not found (run experiments/study.py --out STUDY_DIR --more-seeds FIRST LAST "
                         f"--task {args.task} first)")
    result = pooled(args.study, arms_in(folder), more=name, task=args.task)
    write_report(folder, result)
    plot(os.path.join(folder, "seeds.png"), result)
    print(open(os.path.join(folder, "report.md")).read())


if __name__ == "__main__":
    main()
