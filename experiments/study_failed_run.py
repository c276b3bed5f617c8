"""Retrain one seed of one downstream arm of a study and show where its model goes wrong.

A pooled report (`study_more_seeds_report.py`) names the runs that end below the task's input; this script
retrains such a run from the settings its report.json recorded (same data, same seed: the PSNR it reports
beside the recorded one says whether the failure is reproducible or a numerical accident) and measures
what is special about the pixels it gets wrong: their share, the model's output range, the PSNR with the
output clipped to the data's [0, 1] range, the PSNR on the clean test image and on the training image, and
how far the wrong pixels' spectra are from the nearest training spectrum compared with the other pixels'.

    python experiments/study_failed_run.py STUDY --arm inferred_aid-50 --seed 35

Writes STUDY/failed_run_<arm>_s<seed>/report.md, report.json and failure.png (the test image, the error map,
the test PSNR against training steps).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from ubf.core.errors import OneLineParser, UserError, cli_main  # noqa: E402
from ubf.core.fs import atomic_output  # noqa: E402

WRONG = 0.5  # a pixel is wrong when some band is off by half the data's [0, 1] range


def settings_from_report(report: dict, seed: int):
    """The DownstreamSettings a report.json recorded (`settings.<field>`), for one seed."""
    from ubf.evaluation.downstream import DownstreamSettings
    values = {}
    for spec in dataclasses.fields(DownstreamSettings):
        if f"settings.{spec.name}" not in report:
            continue
        value = report[f"settings.{spec.name}"]
        if spec.name == "bands" and isinstance(value, str):
            value = [int(v) for v in value.split(",")] if "," in value or value.isdigit() else value
        values[spec.name] = value
    values["seeds"] = [seed]
    return DownstreamSettings(**values)


def owning_report(study: str, arm: str, seed: int, scene: str) -> str:
    import study_more_seeds_report as pool
    owners = pool.seed_owners(study, arm, scene)
    if seed not in owners:
        raise UserError(f"{study}: no downstream report of {arm} holds seed {seed} (seeds: "
                        f"{', '.join(map(str, sorted(owners))) or 'none'})")
    return owners[seed]


def nearest_angle(spectra: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Degrees from each spectrum to the closest reference spectrum (spectral angle)."""
    a = spectra / np.maximum(np.linalg.norm(spectra, axis=1, keepdims=True), 1e-12)
    r = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    return np.degrees(np.arccos(np.clip((a @ r.T).max(axis=1), -1.0, 1.0)))


def retrain(report_path: str, seed: int, device) -> dict:
    """Train the pre-trained arm of `seed` again and measure its failure on the first test image."""
    import torch
    from ubf.core.metrics import psnr
    from ubf.evaluation import downstream as D
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    settings = settings_from_report(report, seed)
    real = D.hsi_files(report["real_dir"], "real")
    tests = D.hsi_files(report["real_test_dir"], "real test") if report.get("real_test_dir") else None
    train_pairs, test_pairs, _ = D.split_real(real, settings, test_files=tests)
    bands = train_pairs[0][1].shape[2]
    rendered = "endmembers" in report  # an abundance set rendered on the fly, else synthetic HSI files
    synthetic, _, _ = D.load_synthetic(None if rendered else report["synthetic_dir"],
                                       report["synthetic_dir"] if rendered else None,
                                       report.get("endmembers"), settings, bands)
    curve = D.Curve(settings.eval_every or 100, test_pairs, device, settings)
    started = time.time()
    model = D.train_arm(train_pairs, synthetic, settings, seed, device, True, curve)
    seconds = time.time() - started
    x, target = D.held_out_inputs(test_pairs, settings)[0]
    denoise = D.make_task(settings).name == "denoise"
    with torch.no_grad():
        prediction = model(x.to(device))[0].permute(1, 2, 0).float().cpu().numpy()
        clean = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)))[None].to(device)
        on_clean = model(clean)[0].permute(1, 2, 0).float().cpu().numpy() if denoise else None  # no noise at all
    wrong = np.abs(prediction - target).max(axis=2) > WRONG
    train_scores = D.test_arm(model, train_pairs, device, settings, ("psnr",))
    result = {"report": os.path.abspath(report_path), "seed": seed, "seconds": round(seconds, 1),
              "recorded_psnr": report.get(f"real_plus_synthetic.seed{seed}.psnr"),
              "retrained_psnr": psnr(target, prediction), "clipped_psnr": psnr(target, np.clip(prediction, 0, 1)),
              "clean_input_psnr": psnr(target, on_clean) if denoise else None,
              "train_image_psnr": train_scores["psnr"], "input_psnr": report.get("input.psnr"),
              "wrong_fraction": float(wrong.mean()), "wrong_pixels": int(wrong.sum()),
              "output_range": [float(prediction.min()), float(prediction.max())], "curve": curve.points}
    if wrong.any():
        spectra = target.reshape(-1, bands)
        reference = train_pairs[0][1].reshape(-1, bands)
        others = np.flatnonzero(~wrong.ravel())
        others = np.random.default_rng(0).choice(others, min(2000, len(others)), replace=False)
        bad_angle, other_angle = nearest_angle(spectra[wrong.ravel()], reference), nearest_angle(spectra[others], reference)
        result.update(wrong_nearest_train_sam=[float(np.median(bad_angle)), float(np.percentile(bad_angle, 90))],
                      other_nearest_train_sam=[float(np.median(other_angle)), float(np.percentile(other_angle, 90))],
                      wrong_brightness=float(spectra[wrong.ravel()].mean()), mean_brightness=float(spectra.mean()))
    return result, target, prediction, settings


def plot(path: str, result: dict, target: np.ndarray, prediction: np.ndarray, bands) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    rgb = target[..., list(bands)] if isinstance(bands, list) else target[..., :3]
    axes[0].imshow(np.clip(rgb / max(rgb.max(), 1e-12), 0, 1))
    axes[0].set_title("test image (its bands as RGB)", fontsize=9)
    shown = axes[1].imshow(np.abs(prediction - target).max(axis=2), vmin=0, vmax=max(2 * WRONG, 1e-3), cmap="magma")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    axes[1].set_title(f"largest error over bands ({100 * result['wrong_fraction']:.1f}% of pixels > {WRONG})", fontsize=9)
    steps, values = zip(*result["curve"]) if result["curve"] else ((), ())
    axes[2].plot(steps, values, marker="o", color="tab:green")
    if result.get("input_psnr") is not None:
        axes[2].axhline(result["input_psnr"], color="gray", linestyle="--", label="the task's input")
        axes[2].legend(fontsize=8)
    axes[2].set_xlabel("training step (pre-training, then fine-tuning)")
    axes[2].set_ylabel("test PSNR (dB)")
    axes[2].grid(alpha=0.3)
    axes[2].set_title(f"seed {result['seed']}: {result['retrained_psnr']:.2f} dB at the end", fontsize=9)
    for ax in axes[:2]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(result: dict, arm: str) -> str:
    lines = [f"# {arm}, seed {result['seed']}: the run again, and where it goes wrong", "",
             f"Settings and data from `{result['report']}`; retrained in {result['seconds']:.0f} s.", "",
             "| measurement | value |", "|---|---|",
             f"| test PSNR recorded / retrained (dB) | {result['recorded_psnr']:.2f} / {result['retrained_psnr']:.2f} |",
             f"| the task's input as the answer (dB) | {result['input_psnr']:.2f} |" if result.get("input_psnr") else None,
             f"| output clipped to [0, 1] (dB) | {result['clipped_psnr']:.2f} |",
             f"| on the clean test image (dB) | {result['clean_input_psnr']:.2f} |" if result.get("clean_input_psnr") else None,
             f"| on the training image (dB) | {result['train_image_psnr']:.2f} |",
             f"| pixels off by more than {WRONG} in some band | {result['wrong_pixels']} ({100 * result['wrong_fraction']:.2f}%) |",
             f"| output range | {result['output_range'][0]:.2f} to {result['output_range'][1]:.2f} |"]
    if "wrong_nearest_train_sam" in result:
        lines += [f"| nearest training spectrum, wrong pixels (median, p90, deg) | "
                  f"{result['wrong_nearest_train_sam'][0]:.2f}, {result['wrong_nearest_train_sam'][1]:.2f} |",
                  f"| nearest training spectrum, other pixels (median, p90, deg) | "
                  f"{result['other_nearest_train_sam'][0]:.2f}, {result['other_nearest_train_sam'][1]:.2f} |",
                  f"| mean value, wrong pixels / all pixels | {result['wrong_brightness']:.3f} / {result['mean_brightness']:.3f} |"]
    lines += ["", "![the failure](failure.png)", ""]
    return "\n".join(line for line in lines if line is not None)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="study_failed_run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the --out folder of experiments/study.py")
    parser.add_argument("--arm", required=True, help="e.g. inferred_aid-50, control_structure")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--scene", default="chikusei")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier result of this run")
    return parser


def run(argv=None) -> int:
    import torch
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = os.path.join(args.study, f"failed_run_{args.arm}_s{args.seed}")
    if os.path.exists(os.path.join(out, "report.json")) and not args.overwrite:
        raise UserError(f"{out}: already holds a result (--overwrite replaces it)")
    path = owning_report(args.study, args.arm, args.seed, args.scene)
    result, target, prediction, settings = retrain(path, args.seed, torch.device("cpu"))
    os.makedirs(out, exist_ok=True)
    for name, text in (("report.json", json.dumps(result, indent=1)), ("report.md", format_report(result, args.arm))):
        with atomic_output(os.path.join(out, name)) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
    plot(os.path.join(out, "failure.png"), result, target, prediction, settings.bands)
    print(format_report(result, args.arm))
    print(f"[failed run] {out}/report.md, report.json and failure.png")
    return 0


@cli_main
def main(argv=None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
