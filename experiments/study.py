"""The paper's claim in one command: do synthetic HSIs help a downstream task?

    python experiments/study.py --data ../shared/data/paper [--out experiments/study]
                                [--profile improved|faithful] [--budget default|small] [--device cpu]
                                [--protocol pretrain|mix] [--unmixing-config FILE]

Runs, as a user would, the CLIs of every stage on DIR (HSI crops `.mat` plus RGB image folders, any
number of them: the sources): stage 1 (`Unmixing.py train`, its reconstruction against the linear
least-squares map), the abundances of the RGB images (`Unmixing.py infer`), stage 2 (`Diffusion.py`
train and sample), stage 3 (`Synthesis.py`), then `Evaluate.py generation` (samples against HSIs
rendered from the DDPM's own training maps, the like-for-like reference) and `Evaluate.py downstream`
(RGB-to-HSI and HSI denoising, 3 seeds) for the synthetic HSIs and three controls: HSIs rendered
from the inferred maps themselves (the DDPM's ceiling), random Dirichlet mixtures, and noisy copies
of the real crops. The downstream models pre-train on each synthetic set and then fine-tune on the
real crops (`--protocol pretrain`, default) or mix it into the real batches (`mix`); each task's
real-only arm is trained once and reused for the four sets. Writes `report.md` (with pictures) and
`report.json` (flat keys) in --out.

Resumable: every finished step leaves `<step>/done.json`; a rerun skips those steps (delete a
folder to redo it). The profile picks the stage configs: `improved` (default) uses
config/cpu_DDPM.json, `faithful` config/demo_DDPM.json; `--profile` is passed to the CLIs that have it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.errors import UserError, cli_main  # noqa: E402

BUDGETS = {
    # ddpm_steps: training steps of the DDPM; samples: synthetic HSIs; downstream_steps: per model
    "default": {"ddpm_steps": 9000, "samples": 64, "downstream_steps": 600, "seeds": [0, 1, 2]},
    "small": {"ddpm_steps": 300, "samples": 8, "downstream_steps": 60, "seeds": [0, 1, 2]},
}
DDPM_CONFIGS = {"improved": os.path.join("config", "cpu_DDPM.json"), "faithful": os.path.join("config", "demo_DDPM.json")}
UNMIXING_CONFIG = os.path.join("config", "demo_unmixing.json")
CONTROLS = ("ddpm", "inferred", "dirichlet", "noisy")
TASKS = ("rgb2hsi", "denoise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Stage 1 + 2 + 3, generation and downstream evaluation, one report")
    parser.add_argument("--data", required=True, help="folder with HSI crops (.mat) and RGB images, e.g. "
                        "../shared/data/paper")
    parser.add_argument("--out", default=os.path.join("experiments", "study"), help="output folder (default "
                        "experiments/study); a rerun there reuses the finished steps")
    parser.add_argument("--profile", choices=("improved", "faithful"), default="improved",
                        help="stage settings: improved (default, the measured departures) or faithful (reference)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                        help="default (under an hour on 2 idle cores) or small (a smoke run)")
    parser.add_argument("--unmixing-config", default=UNMIXING_CONFIG,
                        help=f"stage-1 config (default {UNMIXING_CONFIG}: the paper's network, narrower, whose maps "
                             "a DDPM can learn; config/improved_unmixing.json reconstructs better, with flatter maps)")
    parser.add_argument("--ddpm-steps", type=int, help="override the budget's DDPM training steps")
    parser.add_argument("--samples", type=int, help="override the budget's number of synthetic HSIs")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] for every step (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the DDPM (default torch's)")
    parser.add_argument("--protocol", choices=("pretrain", "mix"), default="pretrain",
                        help="how the downstream models use a synthetic set: pretrain on it, then fine-tune on real "
                             "(default), or mix it into the real batches (Evaluate.py downstream --protocol)")
    return parser


class Study:
    """Runs the steps in order, each once; `done(name)` records outputs and time of a finished step."""

    def __init__(self, out: str, device: str):
        self.out, self.device = out, device
        os.makedirs(out, exist_ok=True)

    def folder(self, name: str) -> str:
        return os.path.join(self.out, name)

    def finished(self, name: str) -> dict | None:
        path = os.path.join(self.folder(name), "done.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def step(self, name: str, work) -> dict:
        """Run `work()` (returns a JSON-able dict) unless the step is done; returns its record."""
        record = self.finished(name)
        if record is not None:
            print(f"[study] {name}: done earlier ({record.get('seconds', 0):.0f} s), reused", flush=True)
            return record
        os.makedirs(self.folder(name), exist_ok=True)
        print(f"[study] {name} ...", flush=True)
        started = time.time()
        record = dict(work() or {})
        record["seconds"] = time.time() - started
        with open(os.path.join(self.folder(name), "done.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        print(f"[study] {name}: {record['seconds']:.0f} s", flush=True)
        return record


def run_cli(args: list[str]) -> None:
    shown = " ".join(os.path.relpath(a, ROOT) if os.path.isabs(a) and a.startswith(ROOT) else a for a in args)
    print(f"$ python {shown}", flush=True)
    result = subprocess.run([sys.executable] + args, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"failed with exit status {result.returncode}: python {shown}")


def profile_flag(script: str, profile: str) -> list[str]:
    """Every CLI of this checkout takes --profile."""
    return ["--profile", profile]


def downstream_label(task: str, name: str, protocol: str) -> str:
    """Folder of one downstream step; the protocol is part of it, so a rerun with the other protocol
    does not reuse these results."""
    return f"downstream_{task}_{name}" if protocol == "mix" else f"downstream_{protocol}_{task}_{name}"


def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# controls ----------------------------------------------------------------------------------------

def linear_baseline_psnr(train_dir: str, test_dir: str, band_indices) -> float:
    """PSNR on the test crops of the least-squares affine map from the 3 input bands to all bands."""
    from ubf.core.metrics import psnr
    from ubf.data.hsi_dataset import list_mat_files, prepare_pair
    from ubf.data.matio import read_hsi

    def pairs(folder):
        return [prepare_pair(read_hsi(p)[0], band_indices) for p in list_mat_files(folder)]

    train = pairs(train_dir)
    x = np.concatenate([i.reshape(-1, 3) for i, _ in train])
    y = np.concatenate([t.reshape(-1, t.shape[-1]) for _, t in train])
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    weights, *_ = np.linalg.lstsq(design, y, rcond=None)
    scores = []
    for model_input, target in pairs(test_dir):
        flat = np.hstack([model_input.reshape(-1, 3), np.ones((model_input.shape[0] * model_input.shape[1], 1))])
        scores.append(psnr(target, (flat @ weights).reshape(target.shape).astype(np.float32)))
    return float(np.mean(scores))


def write_dirichlet_abundances(folder: str, count: int, size: int, k: int, seed: int) -> None:
    """`count` maps of i.i.d. Dirichlet(1) abundances (no spatial structure) as sampled-abundance files."""
    from ubf.data.matio import write_mat
    rng = np.random.default_rng([seed, 17])
    for i in range(count):
        abundance = rng.dirichlet(np.ones(k), size=(size, size)).astype(np.float32)
        write_mat(os.path.join(folder, f"dirichlet_{i:04d}.mat"), {"Abu": abundance, "SR": abundance * 2 - 1})


def downstream_train_files(real_dir: str, test_fraction: float = 0.5) -> list[str]:
    """The real files `Evaluate.py downstream` trains on (its split: evaluation.downstream.split_real)."""
    from ubf.data.hsi_dataset import list_mat_files
    files = list_mat_files(real_dir)
    if len(files) == 1:
        return files
    order = np.random.default_rng([0, 5]).permutation(len(files))
    n_test = min(len(files) - 1, max(1, int(round(len(files) * test_fraction))))
    return sorted(files[i] for i in order[n_test:])


def split_data(data_dir: str, out: str) -> dict:
    """Stage 1 trains on exactly the real crops the downstream task trains on and is tested on the
    crops it tests on: endmembers learned from a test crop would leak it into every synthetic HSI."""
    from ubf.data.hsi_dataset import list_mat_files
    from ubf.data.images import list_images
    from ubf.cli.demo import link_step_folders
    crops, images = list_mat_files(data_dir), list_images(data_dir)
    if not crops or not images:
        raise UserError(f"{data_dir}: needs .mat HSI crops and RGB images (e.g. chikusei/*.mat, aid/*.jpg)")
    train = downstream_train_files(data_dir)
    test = [c for c in crops if c not in train] or train
    return link_step_folders({"train": train, "val": test, "test": test}, images, out)


def write_noisy_copies(real_dir: str, folder: str, sigma: float, copies: int, seed: int) -> None:
    """Min-max normalised real training crops of the downstream split plus Gaussian noise, `copies`
    per crop, as synthetic HSIs (never the held-out test crop)."""
    from ubf.data.matio import read_hsi, write_mat
    from ubf.data.normalize import minmax
    rng = np.random.default_rng([seed, 23])
    for path in downstream_train_files(real_dir):
        cube = minmax(read_hsi(path)[0]).astype(np.float32)
        for c in range(copies):
            noisy = np.clip(cube + rng.normal(0, sigma, cube.shape), 0, 1).astype(np.float32)
            write_mat(os.path.join(folder, f"{os.path.splitext(os.path.basename(path))[0]}_noisy{c}.mat"),
                      {"HSI": noisy})


def abundance_maps(folder: str) -> list[np.ndarray]:
    from ubf.data.matio import read_mat
    from ubf.evaluation.roughness import as_channels_first
    files = sorted(f for f in os.listdir(folder) if f.endswith(".mat"))
    return [as_channels_first(read_mat(os.path.join(folder, f), ["Abu"])["Abu"]).numpy() for f in files]


# the study ---------------------------------------------------------------------------------------

def run_study(args) -> dict:
    budget = dict(BUDGETS[args.budget])
    if args.ddpm_steps:
        budget["ddpm_steps"] = args.ddpm_steps
    if args.samples:
        budget["samples"] = args.samples
    out = os.path.abspath(args.out)
    study = Study(out, args.device)
    started = time.time()
    device = ["--device", args.device]
    print(f"[study] profile {args.profile}{' (default)' if args.profile == 'improved' else ''}, budget "
          f"{args.budget} ({budget}), output {out}", flush=True)

    unmixing_config = next((os.path.abspath(p) for p in (args.unmixing_config, os.path.join(ROOT, args.unmixing_config))
                            if os.path.isfile(p)), None)
    if unmixing_config is None:
        raise UserError(f"--unmixing-config {args.unmixing_config}: no such file")
    folders = study.step("data", lambda: split_data(os.path.abspath(args.data), study.out))

    unmixing = study.folder("unmixing")
    ckpt = os.path.join(unmixing, "checkpoint", "best.pth")
    study.step("unmixing", lambda: run_cli([
        os.path.join(ROOT, "Unmixing.py"), "train", "-c", unmixing_config,
        "--train", folders["train"], "--val", folders["val"], "--test", folders["test"], "--out", unmixing,
        *device, *profile_flag("Unmixing.py", args.profile)]))

    def stage1_quality():
        report_dir = study.folder("stage1_eval")
        run_cli([os.path.join(ROOT, "Evaluate.py"), "reconstruction", "--ckpt", ckpt, "--hsi", folders["test"],
                 "--out", report_dir, "--overwrite", "--no-progress", *device])
        report = load_json(os.path.join(report_dir, "report.json"))
        bands = [int(b) for b in str(report["band_indices"]).strip("[]").replace(",", " ").split()]
        return {"psnr": report["psnr"], "sam": report["sam"],
                "linear_psnr": linear_baseline_psnr(folders["train"], folders["test"], bands)}
    stage1 = study.step("stage1_eval", stage1_quality)

    abundances = study.folder("abundances")
    study.step("abundances", lambda: run_cli([
        os.path.join(ROOT, "Unmixing.py"), "infer", "--ckpt", ckpt, "--rgb", folders["rgb"], "--out", abundances,
        *device]))

    ddpm_run = study.folder("ddpm")
    config = os.path.join(ROOT, DDPM_CONFIGS[args.profile])
    threads = ["--threads", str(args.threads)] if args.threads else []
    ddpm = study.step("ddpm", lambda: (run_cli([
        os.path.join(ROOT, "Diffusion.py"), "-p", "train", "-c", config, "--data", abundances, "--out", ddpm_run,
        "--run-dir", os.path.join(ddpm_run, "run"), "--n-iter", str(budget["ddpm_steps"]), *device, *threads,
        *profile_flag("Diffusion.py", args.profile)]), {"steps": budget["ddpm_steps"], "config": config})[1])

    def sample():
        import glob
        from ubf.pipeline.diffusion_sample import checkpoint_step
        checkpoints = glob.glob(os.path.join(ddpm_run, "run", "checkpoint", "I*_E*.pth"))
        last = max(checkpoints, key=checkpoint_step)
        started_sampling = time.time()
        run_cli([os.path.join(ROOT, "Diffusion.py"), "-p", "val", "-c", config, "--resume", last, "--run-dir",
                 os.path.join(ddpm_run, "run"), "--num-samples", str(budget["samples"]), *device, *threads,
                 *profile_flag("Diffusion.py", args.profile)])
        return {"checkpoint": last, "seconds_per_sample": (time.time() - started_sampling) / budget["samples"]}
    sampled = study.step("samples", sample)
    samples_dir = os.path.join(ddpm_run, "run", "mat_results")

    def dirichlet():
        maps = abundance_maps(samples_dir)
        write_dirichlet_abundances(study.folder("dirichlet_abundances"), len(maps), maps[0].shape[-1],
                                   maps[0].shape[0], 0)
    study.step("dirichlet_abundances", dirichlet)

    synth_sources = {"ddpm": samples_dir, "inferred": abundances, "dirichlet": study.folder("dirichlet_abundances")}
    hsi_dirs = {}
    for name, source in synth_sources.items():
        target = study.folder(f"synthesis_{name}")
        study.step(f"synthesis_{name}", lambda source=source, target=target: run_cli([
            os.path.join(ROOT, "Synthesis.py"), "--abundances", source, "--ckpt", ckpt, "--out", target,
            "--overwrite", *device, *profile_flag("Synthesis.py", args.profile)]))
        hsi_dirs[name] = os.path.join(target, "HSI")
    real_dir = os.path.abspath(args.data)
    study.step("noisy_copies", lambda: write_noisy_copies(real_dir, study.folder("noisy_copies"), 0.02, 4, 0))
    hsi_dirs["noisy"] = study.folder("noisy_copies")

    def generation():
        from ubf.evaluation.roughness import noisy_fraction
        report_dir = study.folder("generation")
        run_cli([os.path.join(ROOT, "Evaluate.py"), "generation", "--real", hsi_dirs["inferred"], "--real-as-is",
                 "--synthetic", hsi_dirs["ddpm"], "--endmembers", ckpt, "--out", report_dir, "--overwrite",
                 "--no-progress", "--feature-cache", "none", *device])
        report = load_json(os.path.join(report_dir, "report.json"))
        rough = noisy_fraction(np.stack(abundance_maps(samples_dir)), abundance_maps(abundances))
        keys = ("FD", "FD_half", "FD_real_floor", "precision", "recall", "F_p", "D_b_ncc", "KID",
                "baseline_dirichlet.FD", "baseline_dirichlet.FD_half", "baseline_dirichlet.precision",
                "baseline_dirichlet.recall", "baseline_real_copies.D_b_ncc", "baseline_real_copies.FD_half")
        return {**{k: report.get(k) for k in keys}, **rough}
    gen = study.step("generation", generation)

    downstream = {}
    for task in TASKS:
        for name in CONTROLS:
            label = downstream_label(task, name, args.protocol)

            def work(task=task, name=name, label=label):
                report_dir = study.folder(label)
                # the real-only arm is the same for every synthetic set of a task: trained once (with the first)
                first = study.folder(downstream_label(task, CONTROLS[0], args.protocol)) if name != CONTROLS[0] else None
                reuse = ["--reuse-real-only", os.path.join(first, "report.json")] if first else []
                run_cli([os.path.join(ROOT, "Evaluate.py"), "downstream", "--real", real_dir,
                         "--synthetic", hsi_dirs[name], "--task", task, "--steps", str(budget["downstream_steps"]),
                         "--seeds", *map(str, budget["seeds"]), "--out", report_dir, "--overwrite", "--no-progress",
                         "--protocol", args.protocol, *reuse, *device])
                report = load_json(os.path.join(report_dir, "report.json"))
                return {k: report[k] for k in report if k.startswith(("real_only.", "real_plus_synthetic.", "delta."))
                        and k.endswith(("_mean", "_std"))}
            downstream[(task, name)] = study.step(label, work)

    flat = {"profile": args.profile, "budget": args.budget, "data": os.path.abspath(args.data),
            "stage1.config": args.unmixing_config,
            "downstream.protocol": args.protocol,
            "stage1.psnr": stage1["psnr"], "stage1.sam": stage1["sam"], "stage1.linear_psnr": stage1["linear_psnr"],
            "ddpm.steps": budget["ddpm_steps"], "ddpm.train_s": ddpm["seconds"],
            "ddpm.seconds_per_sample": sampled["seconds_per_sample"]}
    flat.update({f"generation.{k}": v for k, v in gen.items() if k != "seconds"})
    for (task, name), record in downstream.items():
        prefix = "downstream." if name == "ddpm" else f"downstream.control_{name}."
        if task != "rgb2hsi":
            prefix = f"downstream_{task}." if name == "ddpm" else f"downstream_{task}.control_{name}."
        flat.update({prefix + k: v for k, v in record.items() if k != "seconds"})
    flat["timing.total_s"] = sum((study.finished(n) or {}).get("seconds", 0.0) for n in os.listdir(out)
                                 if os.path.isdir(os.path.join(out, n)))
    flat["timing.this_run_s"] = time.time() - started
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(flat, f, indent=2)
    write_report_md(out, flat, folders)
    print(f"[study] report: {os.path.join(out, 'report.md')} and report.json", flush=True)
    return flat


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report_md(out: str, r: dict, folders: dict) -> None:
    """report.md: the numbers of report.json as tables, with the pictures the steps drew."""
    def rel(*parts):
        return os.path.relpath(os.path.join(out, *parts), out)
    lines = [f"# Study: do synthetic HSIs help? (profile {r['profile']}, budget {r['budget']})", "",
             f"Data: `{r['data']}`. Total compute time of all steps: {r['timing.total_s'] / 60:.1f} min.", "",
             "## Stage 1: reconstruction of held-out crops", "",
             "| model | PSNR (dB) |", "|---|---|",
             f"| unmixing network | {_f(r['stage1.psnr'], 2)} |",
             f"| linear least-squares map (3 bands -> all) | {_f(r['stage1.linear_psnr'], 2)} |", "",
             "## Samples: training abundance maps (rendered) vs DDPM samples (rendered)", "",
             f"![inferred]({rel('synthesis_inferred', 'contact_sheet.png')})", "",
             f"![ddpm]({rel('synthesis_ddpm', 'contact_sheet.png')})", "",
             "## Generation scores (reference: HSIs rendered from the DDPM's own training maps)", "",
             "| set | FD | FD_half | precision | recall | D_b_ncc |", "|---|---|---|---|---|---|",
             f"| DDPM samples | {_f(r.get('generation.FD'))} | {_f(r.get('generation.FD_half'))} | "
             f"{_f(r.get('generation.precision'))} | {_f(r.get('generation.recall'))} | "
             f"{_f(r.get('generation.D_b_ncc'))} |",
             f"| Dirichlet mixtures | {_f(r.get('generation.baseline_dirichlet.FD'))} | "
             f"{_f(r.get('generation.baseline_dirichlet.FD_half'))} | "
             f"{_f(r.get('generation.baseline_dirichlet.precision'))} | "
             f"{_f(r.get('generation.baseline_dirichlet.recall'))} | - |",
             f"| real copies | - | {_f(r.get('generation.baseline_real_copies.FD_half'))} | - | - | "
             f"{_f(r.get('generation.baseline_real_copies.D_b_ncc'))} |", "",
             f"Real-vs-real floor FD {_f(r.get('generation.FD_real_floor'))}. Noisy samples (more high-frequency "
             f"energy than the noisiest training crop): {_f(r.get('generation.noisy_sample_fraction'), 2)}.", "",
             f"## Downstream: real only vs real + synthetic (protocol {r.get('downstream.protocol', 'mix')}; "
             "mean +/- std over seeds)", "",
             "| task | synthetic set | real only (dB) | real + synthetic (dB) | PSNR difference (dB) | "
             "SAM difference (deg) |", "|---|---|---|---|---|---|"]
    for task in TASKS:
        for name in CONTROLS:
            prefix = ("downstream." if task == "rgb2hsi" else f"downstream_{task}.") + \
                ("" if name == "ddpm" else f"control_{name}.")
            label = {"ddpm": "DDPM samples", "inferred": "inferred maps (ceiling)", "dirichlet": "Dirichlet mixtures",
                     "noisy": "noisy real copies"}[name]
            lines.append(f"| {task} | {label} | {_f(r.get(prefix + 'real_only.psnr_mean'), 2)} +/- "
                         f"{_f(r.get(prefix + 'real_only.psnr_std'), 2)} | "
                         f"{_f(r.get(prefix + 'real_plus_synthetic.psnr_mean'), 2)} +/- "
                         f"{_f(r.get(prefix + 'real_plus_synthetic.psnr_std'), 2)} | "
                         f"{_f(r.get(prefix + 'delta.psnr_mean'), 2)} +/- {_f(r.get(prefix + 'delta.psnr_std'), 2)} | "
                         f"{_f(r.get(prefix + 'delta.sam_mean'), 2)} +/- {_f(r.get(prefix + 'delta.sam_std'), 2)} |")
    lines += ["", "Plots: `downstream_*/plots/downstream.png`, `generation/plots/`."]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: data folder not found")
    run_study(args)


if __name__ == "__main__":
    main()
