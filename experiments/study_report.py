"""The study's report: report.md (tables, pictures) and the headline plot (downstream gain against the
number of RGB tiles and the sources, with every control as a line)."""
import os

import numpy as np

CONTROL_LABELS = {"control_copies": "noisy copies of the real training files",
                  "control_dirichlet": "Dirichlet mixtures (no structure)",
                  "control_structure": "dead-leaves maps (structure no RGB gave)",
                  "control_gaussian": "Gaussian-field maps (smooth structure no RGB gave)",
                  "control_shuffled": "the inferred maps, pixels shuffled (their values, no arrangement)"}
CONTROL_STYLES = {"control_copies": ("grey", ":"), "control_dirichlet": ("tab:red", "--"),
                  "control_structure": ("tab:purple", "-."), "control_gaussian": ("tab:brown", "--"),
                  "control_shuffled": ("tab:olive", ":")}
TASK_LABELS = {"sr4": "x4 super-resolution", "denoise": "denoising", "rgb2hsi": "RGB-to-HSI"}


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def arm_label(arm: str) -> str:
    if arm in CONTROL_LABELS:
        return CONTROL_LABELS[arm]
    kind, _, name = arm.partition("_")
    return {"inferred": "HSIs from the inferred maps, ", "ddpm": "DDPM samples trained on "}.get(kind, "") + name


def set_count(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def headline_plot(path: str, flat: dict, results: dict) -> None:
    """One panel per (scene, task): PSNR gain over the real-only arm (mean +/- std over seeds) of the
    inferred sets against their number of maps (AID only: line; the sources mixes at their count: markers),
    the DDPM arms, and the controls as horizontal lines with their spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(scene, task) for index, (scene, result) in enumerate(results.items())
              for task in sorted({t for t, _ in result["downstream"]}, key=list(TASK_LABELS).index)]
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, (scene, task) in zip(axes.ravel(), panels):
        prefix = "downstream" if scene == next(iter(results)) else f"downstream@{scene}"
        arms = [a for t, a in results[scene]["downstream"] if t == task]

        def value(arm):
            return flat.get(f"{prefix}.{task}.{arm}.delta.psnr_mean"), flat.get(f"{prefix}.{task}.{arm}.delta.psnr_std")
        aid = sorted((set_count(a), *value(a)) for a in arms if a.startswith("inferred_aid-"))
        if aid:
            x, m, s = map(np.array, zip(*aid))
            ax.errorbar(x, m, yerr=s, color="tab:blue", marker="o", capsize=3, label="inferred maps, AID only")
        markers = {"mix1": "s", "mix2": "D", "mix3": "^"}
        for arm in arms:
            mix = arm.startswith("inferred_mix")
            if mix or arm.startswith("ddpm_"):
                mean, std = value(arm)
                if mean is None:
                    continue
                name = arm.partition("_")[2]
                style = dict(marker=markers.get(name.split("-")[0], "*"), markersize=9, capsize=3, linestyle="none",
                             color="tab:green" if mix else "tab:orange")
                count = set_count(name)
                label = {"mix1": f"{count} maps: AID", "mix2": f"{count} maps: AID + RSSCN7",
                         "mix3": f"{count} maps: AID + RSSCN7 + others"}.get(name.split("-")[0], f"DDPM samples ({name})")
                ax.errorbar([set_count(name)], [mean], yerr=[std], label=label, **style)
        for arm in arms:
            if arm in CONTROL_LABELS:
                mean, std = value(arm)
                if mean is None:
                    continue
                color, line = CONTROL_STYLES[arm]
                ax.axhline(mean, color=color, linestyle=line, label=CONTROL_LABELS[arm])
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("RGB tiles behind the synthetic set (log scale)")
        ax.set_ylabel("PSNR gain over real only (dB)")
        ax.set_title(f"{scene}: {TASK_LABELS.get(task, task)}")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Pre-training on synthetic HSIs, then fine-tuning on real: gain per arm (mean +/- std over seeds)")
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(labels) // 3), 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(ahead: int | None, seeds: int) -> str:
    """'ahead' when the RGB-derived arm is ahead of the control on every seed, 'behind' when on none,
    else 'overlapping' (the spreads do not separate the arms at this scale)."""
    if ahead is None:
        return "-"
    return "ahead" if ahead == seeds else "behind" if ahead == 0 else "overlapping"


def claim_table(flat: dict, result: dict, prefix: str, seeds: int) -> list[str]:
    """Per task: each RGB-derived arm's PSNR minus each control's, paired by seed (mean +/- std, seeds ahead)."""
    lines = []
    for task in sorted({t for t, _ in result["downstream"]}, key=list(TASK_LABELS).index):
        arms = [a for t, a in result["downstream"] if t == task]
        controls = [a for a in arms if a.startswith("control_")]
        derived = [a for a in arms if a.startswith(("inferred_", "ddpm_"))]
        if not controls or not derived:
            continue
        lines += [f"#### {TASK_LABELS.get(task, task)}: RGB-derived arms against the controls (paired by seed)", "",
                  "| arm | " + " | ".join(f"minus {CONTROL_LABELS.get(c, c)} (dB)" for c in controls) + " |",
                  "|---|" + "---|" * len(controls)]
        for arm in derived:
            cells = []
            for control in controls:
                key = f"{prefix}.{task}.{arm}.vs_{control}."
                ahead = flat.get(key + "seeds_ahead")
                cells.append(f"{_f(flat.get(key + 'psnr_mean'))} +/- {_f(flat.get(key + 'psnr_std'))} "
                             f"({verdict(ahead, seeds)}, {ahead if ahead is not None else '-'}/{seeds} seeds)")
            lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def set_summary(sets: dict) -> str:
    """'aid-5 (5 maps), ...' from a sets step's record: only the sets (a map count each), not the step's
    bookkeeping beside them (its seconds, the key of what it covered)."""
    counts = {name: count for name, count in sets.items()
              if isinstance(count, int) and not isinstance(count, bool) and name not in ("seconds", "key")}
    return ", ".join(f"{name} ({count} maps)" for name, count in counts.items())


def write_report(out: str, flat: dict, results: dict, budget) -> None:
    headline = os.path.join(out, "gain_vs_sources.png")
    headline_plot(headline, flat, results)
    lines = [f"# Study: does RGB-derived structure make synthetic HSIs more useful? (profile {flat['profile']}, "
             f"budget {flat['budget']})", "",
             f"Data: `{flat['data']}`. Stage 1: method `{flat['stage1.method']}`. Downstream: pre-train "
             f"{flat['downstream.pretrain_steps']} steps on the synthetic set, fine-tune {flat['downstream.steps']} "
             f"on the real training files (real only: {flat['downstream.steps']}), crop {flat['downstream.crop']}, "
             f"seeds {flat['downstream.seeds']}. Compute of all steps: {flat['timing.total_s'] / 60:.1f} min "
             f"(estimate: {flat.get('estimate.total_s', 0) / 60:.0f} min of compute, about "
             f"{flat.get('estimate.wall_s', 0) / 60:.0f} min of wall time; measured wall time of this run: "
             f"{flat['timing.this_run_s'] / 60:.0f} min).", "",
             "![gain against tiles and sources](gain_vs_sources.png)", ""]
    for index, (scene, result) in enumerate(results.items()):
        stage = "stage1" if index == 0 else f"stage1@{scene}"
        prefix = "downstream" if index == 0 else f"downstream@{scene}"
        lines += [f"## {scene}", "",
                  f"Stage 1 on the test files: PSNR {_f(flat.get(stage + '.psnr'))} dB (linear map "
                  f"{_f(flat.get(stage + '.linear_psnr'))} dB), mean largest abundance "
                  f"{_f(flat.get(stage + '.contrast.max_abundance_mean'), 3)}. Sets: "
                  + set_summary(result["sets"]) + ".", ""]
        for task in sorted({t for t, _ in result["downstream"]}, key=list(TASK_LABELS).index):
            lines += [f"### {TASK_LABELS.get(task, task)}", "",
                      "| pre-training set | real only (dB) | with pre-training (dB) | PSNR gain (dB) | SAM change (deg) |",
                      "|---|---|---|---|---|"]
            for t, arm in result["downstream"]:
                if t != task:
                    continue
                key = f"{prefix}.{task}.{arm}."
                lines.append(f"| {arm_label(arm)} | {_f(flat.get(key + 'real_only.psnr_mean'))} +/- "
                             f"{_f(flat.get(key + 'real_only.psnr_std'))} | "
                             f"{_f(flat.get(key + 'real_plus_synthetic.psnr_mean'))} +/- "
                             f"{_f(flat.get(key + 'real_plus_synthetic.psnr_std'))} | "
                             f"{_f(flat.get(key + 'delta.psnr_mean'))} +/- {_f(flat.get(key + 'delta.psnr_std'))} | "
                             f"{_f(flat.get(key + 'delta.sam_mean'))} +/- {_f(flat.get(key + 'delta.sam_std'))} |")
            lines.append("")
        lines += claim_table(flat, result, prefix, len(flat.get("downstream.seeds", [])))
        for set_name, record in result["ddpm"].items():
            g = record.get("generation", {})
            lines += [f"DDPM on {set_name}: FD_half {_f(g.get('FD_half'), 3)} (Dirichlet "
                      f"{_f(g.get('baseline_dirichlet.FD_half'), 3)}, real-vs-real floor {_f(g.get('FD_real_floor'), 3)}), "
                      f"precision {_f(g.get('precision'))}, recall {_f(g.get('recall'))}, D_b_ncc "
                      f"{_f(g.get('D_b_ncc'))}, noisy samples {_f(g.get('noisy_sample_fraction'))}; "
                      f"{_f(record.get('seconds_per_sample'))} s per sample.", ""]
    lines += ["Curves of every arm: `downstream_*/plots/curves.png`; per-arm reports: `downstream_*/summary.md`."]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
