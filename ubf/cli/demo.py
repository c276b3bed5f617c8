"""The whole pipeline in one command, on built-in synthetic demo data (or on real files with --data).

    python demo.py [--data DIR] [--out DIR] [--device auto|cpu|cuda] [--samples N] [--overwrite]
                   [--profile improved|faithful] [--threads N] [--no-progress] [--seed S]
    ubf-demo ...   (the same, from an installed package: pip install .)

The demo runs the `improved` profile by default (the measured departures, README "Profiles"); every
step gets the same `--profile`, and the demo prints which one it uses.

Steps: make the demo data (synthetic HSI scenes mixed from USGS splib07 spectra, and "external" RGB
images), then run, as a user would, `Unmixing.py train`, `Unmixing.py infer`, `Diffusion.py -p train`,
`Diffusion.py -p val` and `Synthesis.py` (as `python -m ubf.cli.<stage>`, which works in a checkout and in an
installed package alike) with the small built-in configs `config/demo_unmixing.json` and
`config/demo_DDPM.json`. Each command is printed before it runs and each step is timed; the end
lists where the pictures and files are. About five minutes on a 2-core CPU. See docs/synthesis.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from ubf.core.cliflags import (add_device_argument, add_overwrite_argument, add_progress_argument, add_seed_argument,
                               add_threads_argument)
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import check_output_path, require_folder
from ubf.core.profiles import add_profile_argument
from ubf.core.resources import resolve_config
from ubf.core.validate import INT_POSITIVE, Number, flag
from ubf.core.version import add_version_argument

# the folder `ubf` is imported from: the steps run as `python -m ubf.cli.<stage>` and must import the same copy
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join("experiments", "demo")
# stage 1 per profile: improved runs the near-data method (endmembers that are scene pixels, contrasty maps
# with a brightness channel); faithful the paper's network, narrowed for a CPU, every key written out
UNMIXING_CONFIGS = {"improved": os.path.join("config", "demo_near_data.json"),
                    "faithful": os.path.join("config", "demo_unmixing.json")}
DDPM_CONFIG = os.path.join("config", "demo_DDPM.json")
OWNED = ("data", "unmixing", "abundances", "ddpm", "synthesis", "reference", "generation", "timings.json")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Run the five pipeline steps end to end on demo data")
    add_version_argument(parser)
    parser.add_argument("--data", help="run on real files instead: a folder with HSI crops (.mat, e.g. "
                        "chikusei/*.mat) and RGB images (e.g. aid/*.jpg), such as ../shared/data/paper")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    add_device_argument(parser)
    parser.add_argument("--samples", type=flag(INT_POSITIVE), default=8,
                        help="abundance maps to sample = synthetic HSIs (default 8)")
    parser.add_argument("--unmixing-config", default=None,
                        help=f"stage-1 config (default {UNMIXING_CONFIGS['improved']} with --profile improved, "
                             f"{UNMIXING_CONFIGS['faithful']} with faithful; built-in configs are found by name "
                             "from any folder)")
    parser.add_argument("--ddpm-config", default=DDPM_CONFIG, help=f"stage-2 config (default {DDPM_CONFIG})")
    add_seed_argument(parser, default=0, what="the demo data")
    parser.add_argument("--size", type=flag(Number(integer=True, low=8, high=1024)), default=64,
                        help="height and width of the demo scenes and images (8 to 1024; real data: --data)")
    add_overwrite_argument(parser, "the outputs of an earlier demo in --out (deleted first)")
    add_threads_argument(parser)
    add_progress_argument(parser)
    add_profile_argument(parser, default="improved")
    return parser


def check_step_configs(unmixing_config: str, ddpm_config: str) -> None:
    """Load (and so validate) both configs before step 1, so a bad value stops the demo before any work."""
    from ubf.pipeline.diffusion_config import load_diffusion_config
    from ubf.pipeline.unmixing_config import load_unmixing_config
    load_unmixing_config(unmixing_config)
    load_diffusion_config(ddpm_config)


def prepare_output(out: str, overwrite: bool) -> None:
    """Refuse to mix with an earlier demo unless --overwrite, which removes only the demo's own outputs."""
    earlier = [name for name in OWNED if os.path.exists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise UserError(f"{out}: holds an earlier demo ({', '.join(earlier)}); use --overwrite or another --out")
    links = [name for name in earlier if os.path.islink(os.path.join(out, name))]
    if links:  # the demo never makes one: removing through it could reach files outside --out
        raise UserError(f"{os.path.join(out, links[0])}: is a symbolic link, which the demo never writes; "
                        "--overwrite removes only the demo's own outputs (remove it yourself or choose another --out)")
    for name in earlier:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)


def _link_or_copy(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.symlink(os.path.abspath(source), target)
    except OSError:
        shutil.copy2(source, target)


def split_real_data(data_dir: str, out: str) -> dict:
    """Folders for the steps from a folder of real files: .mat HSI crops split into train/val/test, RGB images.

    One crop: used for all three. Two: the second trains, the first validates and tests. More: the
    first tests, the second validates, the rest train. Crops are linked (or copied) into `out/data/hsi`.
    """
    from ubf.data.hsi_dataset import list_mat_files
    from ubf.data.images import list_images
    require_folder(data_dir, "data folder")
    crops, images = list_mat_files(data_dir), list_images(data_dir)
    if not crops:
        raise UserError(f"{data_dir}: no .mat HSI crops found (e.g. chikusei/*.mat)")
    if not images:
        raise UserError(f"{data_dir}: no RGB images found (e.g. aid/*.jpg)")
    if len(crops) == 1:
        splits = {"train": crops, "val": crops, "test": crops}
    elif len(crops) == 2:
        splits = {"train": crops[1:], "val": crops[:1], "test": crops[:1]}
    else:
        splits = {"train": crops[2:], "val": crops[1:2], "test": crops[:1]}
    return link_step_folders(splits, images, out)


def link_step_folders(splits: dict, images: list[str], out: str) -> dict:
    """Link (or copy) each split's HSI crops into `out/data/hsi/<split>` and the RGB images into
    `out/data/rgb` (numbered, so equal names from different folders stay apart); the step folders."""
    folders = {}
    for split, files in splits.items():
        folders[split] = os.path.join(out, "data", "hsi", split)
        for path in files:
            _link_or_copy(path, os.path.join(folders[split], os.path.basename(path)))
    folders["rgb"] = os.path.join(out, "data", "rgb")
    for index, path in enumerate(images):
        _link_or_copy(path, os.path.join(folders["rgb"], f"{index:04d}_{os.path.basename(path)}"))
    return folders


def _short(argument: str) -> str:
    """An absolute path below the current folder shown relative to it."""
    if not os.path.isabs(argument):
        return argument
    relative = os.path.relpath(argument, os.getcwd())
    return argument if relative.startswith("..") else relative


def stage_command(module: str, *arguments: str) -> list[str]:
    """`python -m ubf.cli.<module> ...`: the same in a checkout and in an installed package."""
    return [sys.executable, "-m", f"ubf.cli.{module}", *arguments]


def step_environment() -> dict:
    """The environment of a step: this process's, with the folder `ubf` came from first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([IMPORT_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_step(number: int, total: int, title: str, command: list[str]) -> float:
    """Print and run one CLI command (its progress bars show), return its wall time; a failure stops the demo."""
    shown = " ".join(["python"] + [_short(c) for c in command[1:]])
    print(f"\n[{number}/{total}] {title}\n$ {shown}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, env=step_environment())
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise UserError(f"step {number} ({title}) failed with exit status {result.returncode}: {shown}")
    print(f"[{number}/{total}] {title}: done in {elapsed:.1f} s", flush=True)
    return elapsed


def report(out: str, timings: dict, paths: dict) -> None:
    total = sum(timings.values())
    print(f"\nDemo finished in {total:.0f} s ({total / 60:.1f} min):")
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds:7.1f} s  {100 * seconds / max(total, 1e-9):5.1f} %")
    metrics_path = os.path.join(paths["unmixing"], "checkpoint", "test_metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        print(f"  unmixing test reconstruction: PSNR {metrics.get('PSNR', float('nan')):.2f} dB, "
              f"SAM {metrics.get('SAM', float('nan')):.2f} deg")
    generation_path = os.path.join(paths.get("generation", ""), "report.json")
    if os.path.isfile(generation_path):
        print_generation_scores(generation_path, paths)
    print("\nPictures:")
    print(f"  synthetic HSIs (RGB contact sheet): {os.path.join(paths['synthesis'], 'contact_sheet.png')}")
    print(f"  endmembers and spectra:             {os.path.join(paths['synthesis'], 'spectra.png')}")
    print(f"  one preview per synthetic HSI:      {os.path.join(paths['synthesis'], 'RGB')}")
    print(f"  abundances of the external images:  {os.path.join(paths['abundances'], 'previews')}")
    print(f"  DDPM samples:                       {os.path.join(os.path.dirname(paths['samples']), 'results')}")
    print(f"  input RGB images:                   {paths['rgb']}")
    print("Files:")
    print(f"  unmixing checkpoint:                {paths['checkpoint']}")
    print(f"  sampled abundances (.mat):          {paths['samples']}")
    print(f"  synthetic HSIs (.mat):              {os.path.join(paths['synthesis'], 'HSI')}")
    with open(os.path.join(out, "timings.json"), "w", encoding="utf-8") as f:
        json.dump({"seconds": timings, "total": total}, f, indent=2)
        f.write("\n")


def print_generation_scores(report_path: str, paths: dict) -> None:
    """FD of the samples, the real-vs-real floor and the Dirichlet baseline's side by side."""
    with open(report_path, encoding="utf-8") as f:
        r = json.load(f)
    line = "  generation (vs HSIs rendered from the training maps): FD_half {:.3g} | floor {:.3g} | Dirichlet {:.3g}; " \
           "precision {:.2f} recall {:.2f}"
    nan = float("nan")
    print(line.format(r.get("FD_half", nan), r.get("FD_real_floor", nan), r.get("baseline_dirichlet.FD_half", nan),
                      r.get("precision", nan), r.get("recall", nan)))
    import numpy as np
    from ubf.data.matio import read_mat
    from ubf.evaluation.roughness import as_channels_first, noisy_fraction

    def abundance_maps(folder):
        return [as_channels_first(read_mat(os.path.join(folder, f), ["Abu"])["Abu"]).numpy()
                for f in sorted(os.listdir(folder)) if f.endswith(".mat")]
    rough = noisy_fraction(np.stack(abundance_maps(paths["samples"])), abundance_maps(paths["abundances"]))
    print(f"  noisy samples (more high-frequency energy than the noisiest training crop): "
          f"{rough['noisy_sample_fraction']:.0%}")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    chosen = args.unmixing_config or UNMIXING_CONFIGS[args.profile]
    unmixing_config, ddpm_config = (resolve_config(c) for c in (chosen, args.ddpm_config))
    for config in (unmixing_config, ddpm_config):
        if not os.path.isfile(config):
            raise UserError(f"{config}: demo config not found")
    unmixing_config, ddpm_config = os.path.abspath(unmixing_config), os.path.abspath(ddpm_config)
    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    check_step_configs(unmixing_config, ddpm_config)
    out = os.path.abspath(args.out)
    check_output_path(out)
    from ubf.core.runlock import RunLock
    with RunLock(out, "demo.py"):
        run_demo(args, out, unmixing_config, ddpm_config)


def run_demo(args, out: str, unmixing_config: str, ddpm_config: str) -> None:
    """The eight steps into `out` (locked by the caller), with the two configs resolved and checked."""
    prepare_output(out, args.overwrite)
    total = 8
    paths = {"unmixing": os.path.join(out, "unmixing"), "abundances": os.path.join(out, "abundances"),
             "ddpm": os.path.join(out, "ddpm"), "synthesis": os.path.join(out, "synthesis")}
    # the profile decides which checkpoint stage 1 hands on: best.pth (improved) or the final epoch (faithful)
    paths["checkpoint"] = os.path.join(paths["unmixing"], "checkpoint",
                                       "best.pth" if args.profile == "improved" else "latest.pth")
    timings = {}
    print(f"profile: {args.profile} (every step runs with --profile {args.profile})", flush=True)

    title = "data: real files from " + args.data if args.data else "data: built-in synthetic demo data"
    print(f"[1/{total}] {title}", flush=True)
    started = time.perf_counter()
    if args.data:
        folders = split_real_data(args.data, out)
    else:
        from ubf.data.demo_data import make_demo_dataset
        folders = make_demo_dataset(os.path.join(out, "data"), seed=args.seed, size=args.size)
        print("  synthetic scenes: linear mixtures of real USGS splib07 spectra (see ubf/data/demo_data.py)")
    paths["rgb"] = folders["rgb"]
    timings["data"] = time.perf_counter() - started
    print(f"  HSI crops: {os.path.dirname(folders['train'])}  RGB images: {folders['rgb']}")

    shared_flags = ["--device", args.device, "--profile", args.profile,
                    *(["--threads", str(args.threads)] if args.threads else []),
                    *(["--no-progress"] if args.no_progress else [])]
    timings["unmixing train"] = run_step(2, total, "stage 1: train the unmixing network", stage_command(
        "unmixing", "train", "-c", unmixing_config, "--train", folders["train"], "--val", folders["val"],
        "--test", folders["test"], "--out", paths["unmixing"], *shared_flags))
    timings["unmixing infer"] = run_step(3, total, "stage 1: abundances of the external RGB images", stage_command(
        "unmixing", "infer", "--ckpt", paths["checkpoint"], "--rgb", folders["rgb"], "--out", paths["abundances"],
        *shared_flags))
    # stage 2 keeps the reference's layout: a <name>_<timestamp> run below --root; maps with a brightness
    # (the near-data method) have it generated as one more channel
    ddpm_sets = brightness_settings(paths["abundances"])
    timings["diffusion train"] = run_step(4, total, "stage 2: train the abundance DDPM", stage_command(
        "diffusion", "-p", "train", "-c", ddpm_config, "--data", paths["abundances"], "--root", paths["ddpm"],
        *ddpm_sets, *shared_flags))
    timings["diffusion sample"] = run_step(5, total, "stage 2: sample new abundance maps", stage_command(
        "diffusion", "-p", "val", "-c", ddpm_config, "--ckpt", "latest", "--root", paths["ddpm"],
        "--num-samples", str(args.samples), *ddpm_sets, *shared_flags))
    from ubf.pipeline.synthesis import newest_abundance_dir
    paths["samples"] = newest_abundance_dir(paths["ddpm"])
    timings["synthesis"] = run_step(6, total, "stage 3: synthesize HSIs", stage_command(
        "synthesis", "--abundances", paths["samples"], "--ckpt", paths["checkpoint"], "--out", paths["synthesis"],
        *shared_flags))
    # the like-for-like reference of the samples: HSIs rendered from the DDPM's own training maps
    paths["reference"], paths["generation"] = os.path.join(out, "reference"), os.path.join(out, "generation")
    timings["reference"] = run_step(7, total, "reference: HSIs rendered from the DDPM's training maps", stage_command(
        "synthesis", "--abundances", paths["abundances"], "--ckpt", paths["checkpoint"], "--out", paths["reference"],
        *shared_flags))
    timings["generation scores"] = run_step(8, total, "generation scores against that reference", stage_command(
        "evaluate", "generation", "--real", os.path.join(paths["reference"], "HSI"), "--real-as-is",
        "--synthetic", os.path.join(paths["synthesis"], "HSI"), "--endmembers", paths["checkpoint"],
        "--out", paths["generation"], "--feature-cache", "none", *shared_flags,
        *([] if args.no_progress else ["--no-progress"])))
    report(out, timings, paths)


def brightness_settings(abundance_dir: str) -> list[str]:
    """`--set` flags that make stage 2 generate the maps' brightness as channel K + 1 when the inferred
    files carry one (`Bright`), else none."""
    import glob
    from ubf.data.matio import mat_keys, read_mat
    files = sorted(glob.glob(os.path.join(abundance_dir, "**", "*.mat"), recursive=True))
    if not files or "Bright" not in mat_keys(files[0]):
        return []
    channels = read_mat(files[0], ["Abu"])["Abu"].shape[-1] + 1
    print(f"  the maps carry a brightness: stage 2 generates it as channel {channels}")
    return ["--set", "model.diffusion.brightness=true", f"model.unet.in_channel={channels}",
            f"model.unet.out_channel={channels}", f"model.diffusion.channels={channels}"]


if __name__ == "__main__":
    main()
