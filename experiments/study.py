"""Does RGB-derived structure make synthetic HSIs more useful? The paper's claim, measured in one command.

    python experiments/study.py --data ../shared/data [--budget small|default|large] [--out experiments/study]
                                [--profile improved|faithful] [--stage1-method near_data] [--jobs 2] [--plan]
    python experiments/study.py --out STUDY --more-seeds FIRST LAST [--jobs 2]   # more seeds of a finished study
    python experiments/study.py --out STUDY --more-seeds FIRST LAST --task sr4 --arms control_shuffled inferred_aid-50

For every scene (Chikusei; with --budget large also the ABU airport scenes, another sensor) the study trains
stage 1 on the scene's training files (`Unmixing.py train --method`), runs it over the RGB sources of --data
(AID, RSSCN7, and the Landsat scene and photos cut into 150 x 150 tiles) and cuts the inferred maps into
abundance sets: the *tiles axis* (aid-5, aid-50, ... the first N of one seeded order of AID) and the *sources
axis* (mix2/mix3-N: N maps from AID + RSSCN7, or all three, in equal shares; aid-N is the one-source point).
A 64 x 64 DDPM (config/cpu_DDPM_64.json) learns one set and its samples are one more arm. The controls separate
"structure" from "RGB-derived structure": per-pixel Dirichlet mixtures (no structure), the inferred maps
with their pixels shuffled (their very values, no arrangement), and dead-leaves maps whose shares, sharpness
and blob size match the inferred maps (structure no RGB image gave); Gaussian-field
maps and noisy copies of the real training files are budget options. Each arm pre-trains a downstream UNet
(receptive field >= 32 px) on HSIs rendered on the fly from its maps and the scene's endmembers, then
fine-tunes on the real training files (`Evaluate.py downstream --protocol pretrain --real-test`); tasks: x4
super-resolution and denoising (spatial), and RGB-to-HSI where a budget asks. The real-only arm of each
(scene, task) is trained once; every arm over the same seeds. docs/study.md has the design and the results.

Writes `report.md` (tables and the headline plot: downstream gain against tiles and sources, controls as
lines) and `report.json` (flat keys: `downstream.<task>.<arm>.delta.psnr_mean` / `_std` for the main scene,
`downstream@<scene>.<task>.<arm>...` for the others, and the keys of the earlier single-scene study).
Resumable: every finished step leaves `<step>/done.json`; a rerun skips those steps (delete a folder to redo
it), and `--budget large` in the folder of a finished default run reuses all of it. `--plan` prints what
would run and the estimate, and stops. The study's own default profile is `improved` (printed at the start);
`faithful` runs the reference's stage settings where a CLI has them.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from study_plan import (BUDGETS, OTHER_TILE, UNIT_SECONDS, AbundanceSets,  # noqa: E402
                        arm_names, check_sources, estimate_seconds, glob_maps, plan_sets, scene_tasks, shared_scenes,
                        shared_sources, wall_estimate)
from ubf.core.errors import UserError, cli_main  # noqa: E402

DDPM_CONFIG = os.path.join("config", "cpu_DDPM_64.json")
STAGE1_METHOD = "near_data"
# stage 1 chooses no epoch: its only held-out crop is the test crop, so the final one-cycle epoch is used
# (studies before this key validated on the test crop and kept the best epoch there, a selection leak)
STAGE1_KEY = "final-epoch"
NOISY_SIGMA, NOISY_COPIES = 0.02, 4
# fine-tuning after pre-training at 0.3 x the learning rate: at 1 x a pre-trained UNet's test output blew up on a
# corner of the test crop late in fine-tuning (1 seed of 3; 37.6 dB at fine-tuning step 500, -14.1 dB at the
# end, predictions down to -316) with small, steady gradients and weights; at 0.3 x it stayed smooth (docs/study.md)
FINETUNE_LR_SCALE = 0.3
BAND_COUNTS = {"chikusei": 59, "abu-airport": 205}  # the scenes' channels, for the estimate's step costs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Does RGB-derived structure make synthetic HSIs more useful?")
    parser.add_argument("--data", help="the data folder, needed except with --more-seeds (../shared/data: "
                        "paper/chikusei, hsi/abu, rgb/aid, rgb/rsscn7, rgb/remote, rgb/natural)")
    parser.add_argument("--out", default=os.path.join("experiments", "study"),
                        help="output folder (default experiments/study); a rerun there reuses the finished steps")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                        help="small (a smoke run), default (one scene, under an hour on 2 idle cores) or large "
                             "(the multi-source sweep on two scenes, about 4 hours)")
    parser.add_argument("--profile", choices=("improved", "faithful"), default="improved",
                        help="stage settings passed to every CLI: improved (default) or faithful (the reference's)")
    parser.add_argument("--stage1-method", default=STAGE1_METHOD,
                        help=f"stage-1 method (Unmixing.py train --method; default {STAGE1_METHOD})")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] for every step (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every step (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="steps run at once, each a one-thread process (default 2, "
                        "one per core of a 2-core machine)")
    parser.add_argument("--plan", action="store_true", help="print the plan and the estimate, run nothing")
    parser.add_argument("--more-seeds", type=int, nargs=2, metavar=("FIRST", "LAST"),
                        help="in the finished study at --out (same --budget), run seeds FIRST..LAST of the main "
                             "scene's arms on one task (--task; denoising by default) with the study's settings "
                             "(--jobs workers) and pool them with the study's seeds into <out>/more_seeds/report.md "
                             "(<out>/more_seeds_TASK/ for another task)")
    parser.add_argument("--adam-eps", type=float, default=None, metavar="EPS",
                        help="with --more-seeds: train every arm with Adam's epsilon EPS (Evaluate.py downstream "
                             "--adam-eps) into <out>/more_seeds_adam-eps-EPS/, pooled on their own (the study's "
                             "seeds ran with torch's 1e-8)")
    parser.add_argument("--task", default=None, metavar="TASK",
                        help="with --more-seeds: the main scene's task to run (default denoise; one of the budget's "
                             "tasks), into <out>/more_seeds_TASK/ for a task other than denoise")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help="with --more-seeds: only these arms (default every control and the inferred set; "
                             "ddpm_<set> adds the DDPM samples; the real-only arm always runs, with the first of them)")
    return parser


class Study:
    """Runs the steps in order, each once; a finished step leaves `<out>/<name>/done.json` with its record."""

    def __init__(self, out: str):
        self.out = out
        os.makedirs(out, exist_ok=True)

    def folder(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def finished(self, name: str) -> dict | None:
        path = os.path.join(self.folder(name), "done.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def step(self, name: str, work, key: str | None = None) -> dict:
        """Run `work` once; `key` names what the step covers (e.g. the images a set needs): a finished step
        with another key is run again (its work adds what is missing, e.g. infer skips the done images)."""
        record = self.finished(name)
        if record is not None and record.get("key") == key:
            print(f"[study] {name}: done earlier ({record.get('seconds', 0):.0f} s), reused", flush=True)
            return record
        if record is not None:
            print(f"[study] {name}: done earlier for other inputs, run again for this budget's", flush=True)
        os.makedirs(self.folder(name), exist_ok=True)
        print(f"[study] {name} ...", flush=True)
        started = time.time()
        record = dict(work() or {})
        record["seconds"] = time.time() - started
        if key is not None:
            record["key"] = key
        with open(os.path.join(self.folder(name), "done.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        print(f"[study] {name}: {record['seconds']:.0f} s", flush=True)
        return record


def refuse_earlier_stage1(study: Study, scenes) -> None:
    """A folder whose stage 1 was chosen on the test crop (studies before STAGE1_KEY) is not continued:
    every map, set and downstream score in it comes from that model, and infer would reuse its maps."""
    for scene in scenes:
        earlier = study.finished(f"stage1_{scene}")
        if earlier is not None and earlier.get("key") != STAGE1_KEY:
            raise UserError(f"{study.folder(f'stage1_{scene}')}: made by an earlier study that chose stage 1's "
                            "epoch on the test crop; its maps and results cannot be reused: start a new --out")


def content_key(names) -> str:
    """A short digest of a list of names (what a step covers), order-free."""
    import hashlib
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def run_cli(args: list[str], threads: int) -> None:
    shown = " ".join(os.path.relpath(a, ROOT) if os.path.isabs(a) and a.startswith(ROOT) else a for a in args)
    print(f"$ python {shown}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable] + args, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise UserError(f"failed with exit status {result.returncode}: python {shown}")


def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def link(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.lexists(target):
        os.symlink(os.path.abspath(source), target)


# controls and helpers (kept from the single-scene study; tests/test_study.py) -------------------------------

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


def write_dirichlet_abundances(folder: str, count: int, size: int, k: int, seed: int, brightness_pool=None) -> None:
    """`count` maps of i.i.d. Dirichlet(1) abundances (no spatial structure) as sampled-abundance files; with
    `brightness_pool` (the pooled Bright values of the inferred maps) each pixel also draws a brightness from
    it independently, so the control keeps the maps' brightness distribution but not its structure."""
    from ubf.data.matio import write_mat
    rng = np.random.default_rng([seed, 17])
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        abundance = rng.dirichlet(np.ones(k), size=(size, size)).astype(np.float32)
        variables = {"Abu": abundance, "SR": abundance * 2 - 1}
        if brightness_pool is not None:
            variables["Bright"] = rng.choice(np.asarray(brightness_pool, np.float32).ravel(), size=(size, size))
        write_mat(os.path.join(folder, f"dirichlet_{i:04d}.mat"), variables)


def write_shuffled_abundances(maps, brightness, folder: str, seed: int) -> dict:
    """Every map of the reference set with its pixels moved to random places (one permutation per map,
    abundances and brightness together): each map keeps exactly its own pixels, and only their spatial
    arrangement, the structure the RGB image gave, is gone. Against the inferred set itself this control
    measures what that arrangement is worth downstream. `maps`, `brightness`: `read_abundance_maps` of the
    reference folder."""
    from ubf.data.matio import write_mat
    rng = np.random.default_rng([seed, 29])
    os.makedirs(folder, exist_ok=True)
    for i, abundance in enumerate(maps):
        h, w, k = abundance.shape
        order = rng.permutation(h * w)
        shuffled = abundance.reshape(h * w, k)[order].reshape(h, w, k)
        variables = {"Abu": shuffled, "SR": shuffled * 2 - 1}
        if brightness is not None:
            variables["Bright"] = brightness[i].reshape(h * w)[order].reshape(h, w)
        write_mat(os.path.join(folder, f"shuffled_{i:04d}.mat"), variables)
    return {"count": len(maps), "brightness": brightness is not None}


def write_noisy_copies(train_files, folder: str, sigma: float, copies: int, seed: int) -> None:
    """Min-max normalised real training files plus Gaussian noise, `copies` per file, as synthetic HSIs."""
    from ubf.data.matio import read_hsi, write_mat
    from ubf.data.normalize import minmax
    rng = np.random.default_rng([seed, 23])
    for path in train_files:
        cube = minmax(read_hsi(path)[0]).astype(np.float32)
        for c in range(copies):
            noisy = np.clip(cube + rng.normal(0, sigma, cube.shape), 0, 1).astype(np.float32)
            write_mat(os.path.join(folder, f"{os.path.splitext(os.path.basename(path))[0]}_noisy{c}.mat"), {"HSI": noisy})


def tile_images(images: list[str], folder: str, size: int = OTHER_TILE) -> list[str]:
    """Non-overlapping size x size tiles (PNG) of each image, row by row; images smaller than a tile are skipped."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    tiles = []
    for path in images:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            stem = os.path.splitext(os.path.basename(path))[0]
            for top in range(0, rgb.height - size + 1, size):
                for left in range(0, rgb.width - size + 1, size):
                    target = os.path.join(folder, f"{stem}_r{top // size}_c{left // size}.png")
                    if not os.path.isfile(target):
                        rgb.crop((left, top, left + size, top + size)).save(target)
                    tiles.append(target)
    return tiles


def link_name(source: str, path: str, data: str) -> str:
    """A flat, unique file name for one image of a source (its path below --data, separators as '__')."""
    relative = os.path.relpath(path, data) if not os.path.relpath(path, data).startswith("..") else os.path.basename(path)
    return f"{source}__" + relative.replace(os.sep, "__")


def maps_of(folder: str) -> list[np.ndarray]:
    from ubf.data.matio import read_mat
    return [read_mat(p, ["Abu"])["Abu"] for p in glob_maps(folder)]


# the study ------------------------------------------------------------------------------------------------

def prepare_data(args, study: Study, budget) -> dict:
    """Scenes and sources of --data, the other images tiled, every set's members as link names."""
    data = os.path.abspath(args.data)
    scenes = shared_scenes(data)
    missing = [s for s in budget.scenes if s not in scenes]
    if missing:
        raise UserError(f"{data}: no files for scene(s) {', '.join(missing)} (paper/chikusei/block_118.mat and "
                        "block_282.mat; hsi/abu/abu-airport-1..3.mat)")
    sources = shared_sources(data)
    sources["other"] = tile_images(sources["other"], study.folder("data", "other_tiles"))
    check_sources(sources, budget)
    plan = plan_sets(sources, budget.aid_counts, budget.mix_count)
    names = {}
    for source, images in sources.items():
        for path in images:
            names[path] = link_name(source, path, data)
    return {"scenes": {s: {"train": list(v.train), "test": list(v.test), "bands": list(v.bands)}
                       for s, v in scenes.items() if s in budget.scenes},
            "sets": {name: [names[p] for p in members] for name, members in plan.sets.items()},
            "images": {names[p]: p for p in plan.images()}}


def control_reference_set(budget, plan, wanted) -> str:
    """The set the controls match: the DDPM's training set (the same in every budget, so a control step is
    reused), else the largest set the scene has."""
    return next((s for s in budget.ddpm_sets if s in plan.sets), max(wanted, key=lambda s: len(plan.sets[s])))


def arm_source(kind: str, folder: str, ckpt: str) -> list[str]:
    """Evaluate.py downstream's arguments naming an arm's synthetic data: abundance maps rendered with the
    scene's stage-1 endmembers, or finished HSIs (the noisy-copies control)."""
    return ["--abundances", folder, "--endmembers", ckpt] if kind == "abundances" else ["--synthetic", folder]


def downstream_argv(budget, folders: dict, source: list[str], task: str, bands, seeds, out: str,
                    reuse_real_only: str | None, args) -> list[str]:
    """The one `Evaluate.py downstream` command line of an arm: the budget's steps, crop and evaluation, the
    pre-train-then-fine-tune protocol and the stage settings of --device/--threads/--profile. The study's
    arms and --more-seeds both build theirs here, so extra seeds run exactly the study's settings."""
    return ["Evaluate.py", "downstream", "--real", folders["train"], "--real-test", folders["test"], *source,
            "--task", task, "--model", "cnn" if task == "rgb2hsi" else "unet",
            "--steps", str(budget.downstream_steps), "--pretrain-steps", str(budget.pretrain_steps),
            "--crop", str(budget.crop), "--seeds", *map(str, seeds), "--protocol", "pretrain",
            "--finetune-lr-scale", str(FINETUNE_LR_SCALE), "--rgb-bands", *map(str, bands), "--out", out,
            "--overwrite", "--no-progress", *(["--eval-every", str(budget.eval_every)] if budget.eval_every else []),
            *(["--reuse-real-only", reuse_real_only] if reuse_real_only else []),
            "--device", args.device, "--threads", str(args.threads), "--profile", args.profile,
            *(["--adam-eps", f"{args.adam_eps:g}"] if getattr(args, "adam_eps", None) is not None else [])]


def scene_jobs(args, study: Study, budget, data: dict, scene: str, main: bool, plan, jobs: "Jobs") -> dict:
    """Add the steps of one scene to `jobs` (stage 1, inference, sets, controls, DDPM, downstream arms) with
    what each needs first; returns where their results will be."""
    info, threads = data["scenes"][scene], ["--threads", str(args.threads)]
    device, profile = ["--device", args.device], ["--profile", args.profile]
    folders = {role: study.folder("data", scene, role) for role in ("train", "test")}
    for role in ("train", "test"):
        for path in info[role]:
            link(path, os.path.join(folders[role], os.path.basename(path)))
    bands = [str(b) for b in info["bands"]]
    unmixing = study.folder(f"stage1_{scene}")
    ckpt = os.path.join(unmixing, "checkpoint", "latest.pth")
    stage1 = jobs.add(f"stage1_{scene}", lambda: run_cli([
        "Unmixing.py", "train", "--method", args.stage1_method, "--train", folders["train"], "--no-val",
        "--test", folders["test"], "--bands", *bands, "--out", unmixing, "--no-progress", *device, *threads, *profile],
        args.threads), key=STAGE1_KEY)

    def stage1_quality():
        report_dir = study.folder(f"stage1_eval_{scene}")
        run_cli(["Evaluate.py", "reconstruction", "--ckpt", ckpt, "--hsi", folders["test"], "--out", report_dir,
                 "--overwrite", "--no-progress", *device, *threads], args.threads)
        report = load_json(os.path.join(report_dir, "report.json"))
        keep = {k: v for k, v in report.items() if (k in ("psnr", "sam") or k.startswith(("contrast.", "endmembers.")))
                and not isinstance(v, (list, dict))}
        return {**keep, "linear_psnr": linear_baseline_psnr(folders["train"], folders["test"], info["bands"])}
    evaluation = jobs.add(f"stage1_eval_{scene}", stage1_quality, [stage1])

    # the sets this scene needs (the main scene: all), their images linked flat and inferred once
    wanted = [s for s in plan.sets if main or f"inferred_{s}" in budget.other_scene_arms]
    # the controls match the DDPM's training set (the same in every budget, so a control step is reused)
    reference_set = control_reference_set(budget, plan, wanted)
    if not main and f"inferred_{reference_set}" not in budget.other_scene_arms:
        wanted.append(reference_set)
    rgb_links = study.folder("data", f"rgb_{scene}")
    for name in sorted({n for s in wanted for n in plan.sets[s]}):
        link(data["images"][name], os.path.join(rgb_links, name))
    abundances = study.folder(f"abundances_{scene}")
    inferred = jobs.add(f"abundances_{scene}", lambda: run_cli([
        "Unmixing.py", "infer", "--ckpt", ckpt, "--rgb", rgb_links, "--out", abundances, "--no-recon",
        "--no-progress", *device, *threads, *profile], args.threads), [stage1], key=content_key(os.listdir(rgb_links)))
    set_dirs = {s: study.folder(f"sets_{scene}", s) for s in wanted}

    def link_sets():
        for set_name in wanted:
            for name in plan.sets[set_name]:
                produced = os.path.join(abundances, os.path.splitext(name)[0] + ".mat")
                if not os.path.isfile(produced):
                    raise UserError(f"{produced}: not written by the inference step (see its log)")
                link(produced, os.path.join(set_dirs[set_name], os.path.basename(produced)))
        return {s: len(glob_maps(d)) for s, d in set_dirs.items()}
    sets = jobs.add(f"sets_{scene}", link_sets, [inferred], key=content_key(wanted))

    arms = {}  # arm -> (kind, folder, the job that makes it)
    for control in budget.controls:
        folder = study.folder(f"control_{control}_{scene}")
        if control == "copies":
            job = jobs.add(f"control_{control}_{scene}", lambda folder=folder: write_noisy_copies(
                info["train"], folder, NOISY_SIGMA, NOISY_COPIES, 0))
        else:
            job = jobs.add(f"control_{control}_{scene}", lambda control=control, folder=folder: write_control(
                control, set_dirs[reference_set], folder, budget.control_maps, 0), [sets])
        arms[f"control_{control}"] = ("hsi" if control == "copies" else "abundances", folder, job)
    for set_name in wanted:
        arms[f"inferred_{set_name}"] = ("abundances", set_dirs[set_name], sets)
    ddpm = {}
    for set_name in budget.ddpm_sets if main else ():
        run_dir = study.folder(f"ddpm_{scene}_{set_name}")
        trained = jobs.add(f"ddpm_{scene}_{set_name}", lambda run_dir=run_dir, set_name=set_name: run_cli([
            "Diffusion.py", "-p", "train", "-c", DDPM_CONFIG, "--data", set_dirs[set_name], "--out",
            os.path.join(run_dir, "run"), "--n-iter", str(budget.ddpm_steps), "--no-progress", *device, *threads,
            *profile], args.threads), [sets])

        def sample(run_dir=run_dir):
            last = max(glob.glob(os.path.join(run_dir, "run", "checkpoint", "I*_E*.pth")),
                       key=lambda p: int(os.path.basename(p)[1:].split("_")[0]))
            started = time.time()
            run_cli(["Diffusion.py", "-p", "val", "-c", DDPM_CONFIG, "--ckpt", last, "--out", os.path.join(run_dir, "run"),
                     "--num-samples", str(budget.ddpm_samples), "--no-progress", *device, *threads, *profile],
                    args.threads)
            return {"checkpoint": last, "seconds_per_sample": (time.time() - started) / budget.ddpm_samples}
        sampled = jobs.add(f"samples_{scene}_{set_name}", sample, [trained])
        samples_dir = os.path.join(run_dir, "run", "mat_results")
        generation = jobs.add(f"generation_{scene}_{set_name}", lambda set_name=set_name, samples_dir=samples_dir:
                              generation_scores(args, study, scene, ckpt, set_dirs[set_name], samples_dir), [sampled])
        arms[f"ddpm_{set_name}"] = ("abundances", samples_dir, sampled)
        ddpm[set_name] = (sampled, generation)

    downstream = {}
    for task in scene_tasks(budget, main):
        first = None
        for arm in arm_names(budget, plan, main, task):
            if arm not in arms:
                continue
            kind, folder, made_by = arms[arm]
            label = f"downstream_{scene}_{task}_{arm}"

            def work(task=task, kind=kind, folder=folder, label=label, first=first):
                report_dir = study.folder(label)
                reuse = os.path.join(study.folder(first), "report.json") if first else None
                run_cli(downstream_argv(budget, folders, arm_source(kind, folder, ckpt), task, bands, budget.seeds,
                                        report_dir, reuse, args), args.threads)
                report = load_json(os.path.join(report_dir, "report.json"))
                return {k: v for k, v in report.items() if k.startswith(("real_only.", "real_plus_synthetic.", "delta."))
                        and k.endswith(("_mean", "_std"))}
            downstream[(task, arm)] = jobs.add(label, work, [stage1, made_by] + ([first] if first else []))
            first = first or label
    return {"stage1": evaluation, "ddpm": ddpm, "downstream": downstream, "sets": sets, "reference_set": reference_set}


class Jobs:
    """Steps with what each needs first, run `workers` at a time (each step is one CLI process with its own
    threads); a failed step stops the rest once the running ones end. Steps are names of Study steps."""

    def __init__(self, study: Study, workers: int):
        self.study, self.workers = study, max(1, workers)
        self.work, self.deps, self.keys, self.order = {}, {}, {}, []

    def add(self, name: str, work, deps=(), key: str | None = None) -> str:
        self.work[name], self.deps[name], self.keys[name] = work, [d for d in deps if d], key
        self.order.append(name)
        return name

    def run(self) -> dict[str, dict]:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
        done, running, records, failure = set(), {}, {}, None
        with ThreadPoolExecutor(self.workers) as pool:
            while len(done) < len(self.order):
                if failure is None:
                    for name in self.order:
                        if len(running) >= self.workers:
                            break
                        if name not in done and name not in running.values() and all(d in done for d in self.deps[name]):
                            running[pool.submit(self.study.step, name, self.work[name], self.keys[name])] = name
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    try:
                        records[name] = future.result()
                        done.add(name)
                    except Exception as err:  # the others finish; nothing new starts
                        failure = failure or err
        if failure is not None:
            raise failure
        return records


CONTROL_KINDS = {"structure": "dead_leaves", "gaussian": "gaussian_field"}  # study arm -> structure_controls


def write_control(kind: str, reference: str, folder: str, count: int, seed: int) -> dict:
    """Abundance maps of a control: per-pixel Dirichlet (no structure), the reference's maps with their pixels
    shuffled ("shuffled": its values, no arrangement), or dead-leaves ("structure") /
    Gaussian-field maps with the statistics of the reference set's maps (ubf/evaluation/structure_controls.py),
    at the reference's size, with a matched brightness where the reference has one."""
    from ubf.evaluation.structure_controls import read_abundance_maps, write_control_set
    reference_maps, brightness = read_abundance_maps(reference)
    size = int(np.median([m.shape[0] for m in reference_maps]))
    k = reference_maps[0].shape[2]
    if kind == "shuffled":  # the reference's own maps, every one (count does not apply)
        return {"size": size, **write_shuffled_abundances(reference_maps, brightness, folder, seed)}
    if kind == "dirichlet":
        pool = None if brightness is None else np.concatenate([b.ravel() for b in brightness])
        write_dirichlet_abundances(folder, count, size, k, seed, brightness_pool=pool)
        return {"size": size, "count": count, "brightness": brightness is not None}
    summary = write_control_set(CONTROL_KINDS[kind], reference_maps, folder, count, size, seed,
                                brightness=brightness, overwrite=True)
    return {"size": size, "count": count, "correlation_length": summary["generated"]["correlation_length"],
            "mean_max": summary["generated"]["mean_max"],
            "source_correlation_length": summary["source"]["correlation_length"],
            "source_mean_max": summary["source"]["mean_max"]}


def generation_scores(args, study: Study, scene: str, ckpt: str, training_maps: str, samples: str) -> dict:
    """Samples against HSIs rendered from the DDPM's own training maps (64 of them), the like-for-like reference."""
    from ubf.evaluation.roughness import as_channels_first, noisy_fraction
    import torch
    device, threads = ["--device", args.device], ["--threads", str(args.threads)]
    subset = study.folder(f"generation_{scene}", "training_maps")
    for path in glob_maps(training_maps)[:64]:
        link(path, os.path.join(subset, os.path.basename(path)))
    rendered = {}
    for name, source in (("training", subset), ("samples", samples)):
        target = study.folder(f"generation_{scene}", f"synthesis_{name}")
        run_cli(["Synthesis.py", "--abundances", source, "--ckpt", ckpt, "--out", target, "--overwrite", *device,
                 "--profile", args.profile], args.threads)
        rendered[name] = os.path.join(target, "HSI")
    report_dir = study.folder(f"generation_{scene}", "report")
    run_cli(["Evaluate.py", "generation", "--real", rendered["training"], "--real-as-is", "--synthetic",
             rendered["samples"], "--endmembers", ckpt, "--out", report_dir, "--overwrite", "--no-progress",
             "--feature-cache", "none", *device, *threads], args.threads)
    report = load_json(os.path.join(report_dir, "report.json"))
    keys = ("FD", "FD_half", "FD_real_floor", "precision", "recall", "F_p", "D_b_ncc", "KID",
            "baseline_dirichlet.FD", "baseline_dirichlet.FD_half", "baseline_dirichlet.precision",
            "baseline_dirichlet.recall", "baseline_real_copies.D_b_ncc", "baseline_real_copies.FD_half")
    sampled = [as_channels_first(m).numpy() for m in maps_of(samples)]
    training = [as_channels_first(m).numpy() for m in maps_of(subset)]
    rough = noisy_fraction(torch.from_numpy(np.stack(sampled)), training)
    return {**{k: report.get(k) for k in keys}, **rough}


def flat_report(args, budget, results: dict, started: float, out: str) -> dict:
    """report.json: the new keys per (scene, task, arm) and the keys of the single-scene study."""
    flat = {"profile": args.profile, "budget": budget.name, "data": os.path.abspath(args.data),
            "stage1.method": args.stage1_method, "downstream.protocol": "pretrain",
            "downstream.seeds": list(budget.seeds), "downstream.steps": budget.downstream_steps,
            "downstream.pretrain_steps": budget.pretrain_steps, "downstream.crop": budget.crop,
            "downstream.finetune_lr_scale": FINETUNE_LR_SCALE}
    for index, (scene, result) in enumerate(results.items()):
        main = index == 0
        prefix = "downstream" if main else f"downstream@{scene}"
        stage = "stage1" if main else f"stage1@{scene}"
        flat.update({f"{stage}.{k}": v for k, v in result["stage1"].items() if k != "seconds"})
        flat.update({f"sets@{scene}.{k}": v for k, v in result["sets"].items() if k != "seconds"})
        for set_name, record in result["ddpm"].items():
            flat[f"ddpm.{set_name}.seconds_per_sample"] = record.get("seconds_per_sample")
            if main:
                flat.update({f"generation.{k}": v for k, v in record["generation"].items() if k != "seconds"})
        for (task, arm), record in result["downstream"].items():
            flat.update({f"{prefix}.{task}.{arm}.{k}": v for k, v in record.items() if k != "seconds"})
        # the claim's two arms by their short names: the largest inferred set and the DDPM
        for (task, arm), record in result["downstream"].items():
            if arm == f"inferred_{result['reference_set']}":
                flat.update({f"{prefix}.{task}.inferred.{k}": v for k, v in record.items() if k != "seconds"})
            if arm.startswith("ddpm_"):
                flat.update({f"{prefix}.{task}.ddpm.{k}": v for k, v in record.items() if k != "seconds"})
        if main:  # the single-scene study's keys: rgb2hsi as `downstream.`, the others as `downstream_<task>.`
            legacy = {"ddpm": "", "inferred": "control_inferred.", "control_dirichlet": "control_dirichlet.",
                      "control_copies": "control_noisy."}
            for task in {t for t, _ in result["downstream"]}:
                for short, suffix in legacy.items():
                    source = flat_keys(flat, f"{prefix}.{task}.{short}.")
                    head = "downstream." if task == "rgb2hsi" else f"downstream_{task}."
                    flat.update({head + suffix + k: v for k, v in source.items()})
        flat.update(paired_differences(out, scene, prefix, result["downstream"], budget.seeds))
    flat["timing.total_s"] = sum((load_json(p).get("seconds", 0.0)) for p in glob.glob(os.path.join(out, "*", "done.json")))
    flat["timing.this_run_s"] = time.time() - started
    return flat


def paired_differences(out: str, scene: str, prefix: str, downstream: dict, seeds) -> dict:
    """`<prefix>.<task>.<arm>.vs_<control>.psnr_mean/_std`: per seed, the RGB-derived arm's test PSNR minus
    the control's (both fine-tuned from the same seed on the same real files), mean and std over seeds: the
    claim's test, tighter than comparing two gains whose real-only arm is shared."""
    from study_more_seeds_report import seed_values  # the one reader of a report's per-seed scores

    def scores(arm):
        return seed_values(load_json(os.path.join(out, f"downstream_{scene}_{task}_{arm}", "report.json")),
                           "real_plus_synthetic")
    flat = {}
    for task in sorted({t for t, _ in downstream}):
        arms = [a for t, a in downstream if t == task]
        controls = [a for a in arms if a.startswith("control_")]
        for arm in (a for a in arms if a.startswith(("inferred_", "ddpm_"))):
            mine = scores(arm)
            for control in controls:
                theirs = scores(control)
                values = [mine[s] - theirs[s] for s in seeds]
                flat[f"{prefix}.{task}.{arm}.vs_{control}.psnr_mean"] = float(np.mean(values))
                flat[f"{prefix}.{task}.{arm}.vs_{control}.psnr_std"] = float(np.std(values))
                flat[f"{prefix}.{task}.{arm}.vs_{control}.seeds_ahead"] = int(sum(v > 0 for v in values))
    return flat


def flat_keys(flat: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def run_study(args) -> dict:
    from study_report import write_report
    budget = BUDGETS[args.budget]
    out = os.path.abspath(args.out)
    study = Study(out)
    refuse_earlier_stage1(study, budget.scenes)
    started = time.time()
    print(f"[study] profile {args.profile}{' (the study default)' if args.profile == 'improved' else ''}, budget "
          f"{budget.name}, stage 1 {args.stage1_method}, output {out}", flush=True)
    data = study.step("data", lambda: prepare_data(args, study, budget),
                      key=f"aid {list(budget.aid_counts)} mix {budget.mix_count} scenes {list(budget.scenes)}")
    plan = AbundanceSets({name: members for name, members in data["sets"].items()})
    estimate = estimate_seconds(budget, plan, data["scenes"], BAND_COUNTS)
    print(f"[study] plan: scenes {', '.join(budget.scenes)}; sets "
          f"{', '.join(f'{n} ({len(m)})' for n, m in plan.sets.items())}; tasks {', '.join(budget.tasks)}; seeds "
          f"{list(budget.seeds)}; downstream {budget.pretrain_steps} + {budget.downstream_steps} steps per arm", flush=True)
    for scene_index, scene in enumerate(budget.scenes):
        for task in scene_tasks(budget, scene_index == 0):
            print(f"[study]   {scene} {task}: real only + {', '.join(arm_names(budget, plan, scene_index == 0, task))}",
                  flush=True)
    print("[study] estimate, compute on an idle core: " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in estimate.items())
          + f"; wall with --jobs {args.jobs}: about {wall_estimate(estimate, args.jobs) / 60:.0f} min", flush=True)
    estimate["wall"] = wall_estimate(estimate, args.jobs)
    if args.plan:
        return {"estimate": estimate}
    jobs = Jobs(study, args.jobs)
    handles = {scene: scene_jobs(args, study, budget, data, scene, index == 0, plan, jobs)
               for index, scene in enumerate(budget.scenes)}
    records = jobs.run()
    results = {scene: {"stage1": records[h["stage1"]], "sets": records[h["sets"]], "reference_set": h["reference_set"],
                       "ddpm": {s: dict(records[sampled], generation=records[generation])
                                for s, (sampled, generation) in h["ddpm"].items()},
                       "downstream": {key: records[name] for key, name in h["downstream"].items()}}
               for scene, h in handles.items()}
    flat = flat_report(args, budget, results, started, out)
    flat.update({f"estimate.{k}_s": v for k, v in estimate.items()})
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(flat, f, indent=2)
    write_report(out, flat, results, budget)
    print(f"[study] report: {os.path.join(out, 'report.md')} and report.json", flush=True)
    return flat


def more_seeds_chunks(first: int, last: int, jobs: int) -> list[list[int]]:
    """Seeds first..last as up to `jobs` contiguous runs, one worker each (their folders are named by them)."""
    if last < first:
        raise UserError(f"--more-seeds {first} {last}: the last seed is before the first")
    seeds = list(range(first, last + 1))
    return [list(map(int, chunk)) for chunk in np.array_split(seeds, min(max(1, jobs), len(seeds)))]


def run_more_seeds(args, first: int, last: int) -> dict:
    """More seeds of one task's arms of the main scene (denoising unless `args.task`) in a finished study
    folder: the real-only arm, every control and the inferred set the controls match (or the `args.arms`
    among them), with the study's own downstream command line (downstream_argv), each (arm, run of seeds)
    into `<out>/more_seeds[_<task>]/<arm>_s<a>-<b>`, then all seeds pooled (study_more_seeds_report.py: gains
    and paired differences with standard errors). Resumable: a folder with its report is kept; seeds another
    report of the arm already holds are refused, not run twice.
    With `args.adam_eps` every arm trains with that Adam epsilon into `<out>/more_seeds[_<task>]_adam-eps-<EPS>/`,
    pooled only with each other: any seed may run there, the study's own included."""
    import study_more_seeds_report as pool
    budget = BUDGETS[args.budget]
    out = os.path.abspath(args.out)
    scene, task = budget.scenes[0], args.task or pool.TASK
    if task not in scene_tasks(budget, True):
        raise UserError(f"--task {task}: the {budget.name} budget's tasks on {scene} are "
                        f"{', '.join(scene_tasks(budget, True))}")
    more = pool.variant_folder(args.adam_eps, task)
    study = Study(out)
    data = study.finished("data")
    if data is None or scene not in data.get("scenes", {}):
        raise UserError(f"{study.folder('data')}: no finished study with scene {scene} here (run "
                        f"experiments/study.py --out {args.out} --budget {budget.name} first)")
    refuse_earlier_stage1(study, [scene])
    plan = AbundanceSets(dict(data["sets"]))
    reference_set = control_reference_set(budget, plan, list(plan.sets))
    arms = {f"control_{c}": ("hsi" if c == "copies" else "abundances", study.folder(f"control_{c}_{scene}"),
                             f"control_{c}_{scene}") for c in budget.controls}
    arms[f"inferred_{reference_set}"] = ("abundances", study.folder(f"sets_{scene}", reference_set), f"sets_{scene}")
    # the DDPM samples run only when named: the default arms stay those the recorded more-seeds runs had
    named_only = {f"ddpm_{s}": ("abundances", study.folder(f"ddpm_{scene}_{s}", "run", "mat_results"),
                                f"samples_{scene}_{s}") for s in budget.ddpm_sets}
    offered = arms | named_only
    if args.arms:
        unknown = [a for a in args.arms if a not in offered]
        if unknown:
            raise UserError(f"--arms {' '.join(unknown)}: not an arm of the {budget.name} budget's more seeds "
                            f"(its arms: {', '.join(offered)})")
        arms = {name: offered[name] for name in offered if name in args.arms}  # the budget's order: controls first
    for made_by in [f"stage1_{scene}"] + [step for _, _, step in arms.values()]:
        if study.finished(made_by) is None:
            raise UserError(f"{study.folder(made_by)}: not finished; finish the study (--budget {budget.name}) first")
    for arm in arms:  # the extra seeds pool with the study's own only when both ran the same training
        own = study.folder(f"downstream_{scene}_{task}_{arm}", "report.json")
        if not os.path.isfile(own):
            raise UserError(f"{own}: not found; finish the study (--budget {budget.name}) first")
        ran = load_json(own)
        wanted = {"steps": budget.downstream_steps, "pretrain_steps": budget.pretrain_steps, "crop": budget.crop}
        if any(ran.get(f"settings.{k}") != v for k, v in wanted.items()):
            raise UserError(f"{own}: made with other downstream settings than --budget {budget.name}'s "
                            f"({', '.join(f'{k} {v}' for k, v in wanted.items())}): pass the study's --budget")
    info = data["scenes"][scene]
    folders = {role: study.folder("data", scene, role) for role in ("train", "test")}
    ckpt = os.path.join(study.folder(f"stage1_{scene}"), "checkpoint", "latest.pth")
    chunks = more_seeds_chunks(first, last, args.jobs)
    planned = {f"{arm}_s{c[0]}-{c[-1]}" for c in chunks for arm in arms}
    for arm in arms:
        for seed, where in pool.seed_owners(out, arm, scene, more, task).items():
            label = os.path.basename(os.path.dirname(where))
            if first <= seed <= last and label not in planned:
                raise UserError(f"{where}: already holds seed {seed} of {arm}; ask for seeds it does not hold")
    todo = [c for c in chunks for arm in arms if not os.path.isfile(study.folder(more, f"{arm}_s{c[0]}-{c[-1]}",
                                                                                  "report.json"))]
    # a worker's seconds per step (measured with two at once); other scenes scale by the bench's channel ratio
    step = UNIT_SECONDS["more_seeds_step_59"] * (UNIT_SECONDS["downstream_step_205"] / UNIT_SECONDS["downstream_step_59"]
                                                 if BAND_COUNTS.get(scene, 59) > 100 else 1.0)
    compute = sum(len(c) * (budget.downstream_steps / len(arms) + budget.downstream_steps + budget.pretrain_steps)
                  * step + UNIT_SECONDS["arm_overhead"] for c in todo)
    print(f"[study] more seeds {first}-{last} of {scene} {task} ({args.profile} profile, budget {budget.name}): real "
          f"only + {', '.join(arms)}; {len(chunks)} run(s) of seeds, {len(todo)} of {len(chunks) * len(arms)} arm "
          f"runs to do, about {compute / len(chunks) / 60:.0f} min wall with {len(chunks)} worker(s) on idle cores; "
          f"output {os.path.join(out, more)}", flush=True)
    if args.plan:
        return {"estimate": {"total": compute}}
    jobs = Jobs(study, args.jobs)
    for chunk in chunks:
        tag, first_label = f"s{chunk[0]}-{chunk[-1]}", None
        for arm, (kind, folder, _) in arms.items():
            label = os.path.join(more, f"{arm}_{tag}")

            def work(kind=kind, folder=folder, label=label, first_label=first_label, chunk=chunk):
                report_dir = study.folder(label)
                report_path = os.path.join(report_dir, "report.json")
                if os.path.isfile(report_path) and \
                        set(pool.seed_values(load_json(report_path), "real_plus_synthetic")) == set(chunk):
                    return {"reused": report_path}  # written by an earlier run of these seeds
                reuse = os.path.join(study.folder(first_label), "report.json") if first_label else None
                run_cli(downstream_argv(budget, folders, arm_source(kind, folder, ckpt), task, info["bands"], chunk,
                                        report_dir, reuse, args), args.threads)
                return {"seeds": chunk}
            jobs.add(label, work, [first_label] if first_label else [])
            first_label = first_label or label
    jobs.run()
    folder = study.folder(more)
    # the pooled report keeps every arm the folder holds, not only those this run was asked for
    held = set(pool.arms_in(folder))
    result = pool.pooled(out, [a for a in offered if a in arms or a in held], scene, more, task)
    pool.write_report(folder, result)
    pool.plot(os.path.join(folder, "seeds.png"), result)
    print(f"[study] pooled seeds: {os.path.join(folder, 'report.md')}, report.json and seeds.png", flush=True)
    return result


@cli_main
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.adam_eps is not None and not args.more_seeds:
        raise UserError("--adam-eps is an option of --more-seeds (the study's own arms run with torch's default)")
    for name, value in (("--task", args.task), ("--arms", args.arms)):
        if value is not None and not args.more_seeds:
            raise UserError(f"{name} is an option of --more-seeds (the study runs every task and arm of its budget)")
    if args.adam_eps is not None and not args.adam_eps > 0:
        raise UserError(f"--adam-eps {args.adam_eps}: expected a positive number")
    if args.more_seeds:
        run_more_seeds(args, *args.more_seeds)
        return
    if args.data is None:
        parser.error("--data is required (the data folder, e.g. ../shared/data)")
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: data folder not found")
    run_study(args)


if __name__ == "__main__":
    main()
