"""Stage-1 quality on every scene: reconstruction against the per-pixel linear bar, and the scores that
synthesis needs (map contrast, endmember distance to the nearest real pixel, abundance RMSE and
endmember SAD where a reference exists), one table per scene.

Each scene is a training file and a test file, or one file split into its left (train) and right
(test) halves. Each file (each half) is min-max normalised on its own, as the training pipeline does.
Rows are stage-1 *methods*, found by name (`method_for`; add a method as one entry of METHODS, a
function (scene, steps, seed) -> outcome dict):
- `linear`: the per-pixel linear regression from the same 3 input bands (+1) to all bands (the bar);
- `variant:NAME`: one of VARIANTS, trained here for --steps full-image Adam steps (one-cycle lr), so
  every variant gets the same *work* whatever the machine's load;
- `config:PATH`: an unmixing config trained by `Unmixing.py train`'s own loop (its own epochs, crops and
  schedule; `train.seed` = the bench seed; validated on the test file, tested at its
  `train.test_checkpoint`), i.e. the recipe exactly as users run it;
- `vca+fcls`, `vca-pca+fcls` (VCA's low-SNR PCA projection forced), `nfindr+fcls`: endmembers
  extracted from the training HSI (K = --endmembers), abundances of the *test HSI* by FCLS on all its
  bands: not a 3-band method, a reference for contrast and endmember distance.
Wall seconds and the process's CPU seconds (one thread: about what the run takes on an idle core) are
reported beside each.

    python bench/bench_unmixing_quality.py                       # ../shared/data scenes, 3 seeds, linear + variants
    python bench/bench_unmixing_quality.py --methods linear config:config/improved_unmixing.json vca+fcls --seeds 0
    python bench/bench_unmixing_quality.py --scene my.mat:40,25,10 --scene a.mat,b.mat --scene demo --steps 300

A scene spec is `TRAIN[,TEST][:R,G,B]`, `shared` (the Chikusei, Samson and Moffett scenes of
../shared/data that are present; the default), or `demo` (one training and one test scene of the
built-in synthetic demo data, which know their abundances); without bands they come from the file's wavelengths
(nearest to 672/569/471 nm), else evenly spread. Prints one JSON line per run, then the tables.
Endmember distance: to every pixel of both files (halves), each on its own normalisation. Reference
abundances: the test file's (S_GT, Abu_GT, A or Abu; see ubf/evaluation/reconstruction.py), compared
one-to-one after the best matching and merged (K model maps grouped onto the reference's).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.core.metrics import psnr, sam  # noqa: E402
from ubf.data.bands import evenly_spread_bands, nearest_bands  # noqa: E402
from ubf.data.demo_data import RGB_BANDS, make_demo_dataset  # noqa: E402
from ubf.data.hsi_dataset import prepare_pair  # noqa: E402
from ubf.data.matio import read_hsi, write_mat  # noqa: E402
from ubf.evaluation.reconstruction import read_references  # noqa: E402
from ubf.evaluation.unmixing_scores import (AbundanceErrors, MapContrast, NearestPixels,  # noqa: E402
                                            endmember_sad)
from ubf.models.geometric import fcls, nfindr, vca  # noqa: E402
from ubf.models.losses import unmixing_loss  # noqa: E402
from ubf.models.unmixing import build_unmixing_model  # noqa: E402
from ubf.models.unmixing_init import farthest_points, linear_simplex_init, orthogonal_vertices  # noqa: E402
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config  # noqa: E402
from ubf.pipeline.unmixing_infer import load_unmixing_model  # noqa: E402
from ubf.pipeline.unmixing_train import train_unmixing  # noqa: E402

RGB_NM = (672.0, 569.0, 471.0)
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
# Samson: 156 bands evenly over 401-889 nm (data README). Moffett: AVIRIS subset with no stored
# wavelengths; its vegetation spectrum's green peak, red trough and red edge sit at bands 14, 28 and 33,
# i.e. about 400 + 9.7 nm * index, which puts 672/569/471 nm at bands 28/17/7.
DEFAULT_SCENES = [
    ("chikusei 282->118", ("paper/chikusei/block_282.mat", "paper/chikusei/block_118.mat"), [53, 33, 14]),
    ("samson left->right", ("hsi/samson.mat",), nearest_bands(np.linspace(401, 889, 156), RGB_NM)),
    ("moffett left->right", ("hsi/moffett.mat",), nearest_bands(400 + 9.7 * np.arange(184), RGB_NM)),
    # ABU (AVIRIS, no stored wavelengths): the O2 absorption at 760 nm sits at band 42 of the 205-band airport
    # scenes, i.e. about 365 + 9.6 nm * index, which puts 672/569/471 nm at bands 32/21/11
    ("abu airport-1->airport-3", ("hsi/abu/abu-airport-1.mat", "hsi/abu/abu-airport-3.mat"), [32, 21, 11]),
    ("abu beach-1->beach-3", ("hsi/abu/abu-beach-1.mat", "hsi/abu/abu-beach-3.mat"), [32, 21, 11]),
    ("abu urban-1 left->right", ("hsi/abu/abu-urban-1.mat",), [32, 21, 11]),
]
LINEAR = "linear regression (3 bands + 1)"

# name -> (model overrides, endmember init, loss weights, peak lr). Same steps for all.
VARIANTS = {
    "paper sspn (demo widths), random init": (
        {"widths": [16, 32, 16], "n_blocks": 1}, "random",
        {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015}, 2e-3),
    "probe: pixel_mlp softmax + brightness, distant pixels": (
        {"encoder": "pixel_mlp", "brightness": True}, "distant_pixels", {"charbonnier": 1.0}, 1e-2),
    "pixel_mlp softmax + brightness, ATGP vertices": (
        {"encoder": "pixel_mlp", "brightness": True}, "vertices", {"charbonnier": 1.0}, 1e-2),
    "improved: pixel_mlp, linear-simplex head": (
        {"encoder": "pixel_mlp", "simplex": "relu", "linear_skip": True}, "linear_simplex",
        {"charbonnier": 1.0, "sad": 0.1}, 3e-3),
    "improved head on sspn (demo widths)": (
        {"widths": [16, 32, 16], "n_blocks": 1, "simplex": "relu", "linear_skip": True}, "linear_simplex",
        {"charbonnier": 1.0, "sad": 0.1}, 2e-3),
}



@dataclass
class Scene:
    """One train/test pair: normalised (input (H, W, 3), target (H, W, C)) pairs, the raw cubes, and the
    test file's reference abundances (H, W, K_ref) and endmembers (C, K_ref, on its normalised scale)."""
    name: str
    train: tuple
    test: tuple
    bands: list
    raw_train: np.ndarray
    raw_test: np.ndarray
    reference: np.ndarray | None = None
    reference_endmembers: np.ndarray | None = None


def parse_scene(spec: str):
    """`TRAIN[,TEST][:R,G,B]` or `demo` -> (name, paths, bands or None)."""
    if spec == "demo":
        return "demo synthetic", ("demo",), list(RGB_BANDS)
    paths, _, bands = spec.partition(":")
    files = tuple(paths.split(","))
    return os.path.basename(files[0]), files, [int(b) for b in bands.split(",")] if bands else None


def demo_files(folder: str) -> tuple[str, str]:
    """One training and one test scene of the built-in demo data (seed 0, 64 x 64, true `Abu` stored)."""
    made = make_demo_dataset(folder, seed=0, size=64, n_train=1, n_val=0, n_test=1, n_external=0)
    return os.path.join(made["train"], "scene_000.mat"), os.path.join(made["test"], "scene_000.mat")


def load_scene(name: str, files, bands, scratch: str) -> Scene:
    """The scene normalised per file (per half when one file), with the test part's references."""
    if files == ("demo",):
        files = demo_files(os.path.join(scratch, "demo"))
    cube, wavelengths = read_hsi(files[0])
    if bands is None:
        bands = nearest_bands(wavelengths, RGB_NM) if wavelengths is not None else evenly_spread_bands(cube.shape[2])
    if len(files) > 1:
        raw_train, raw_test = cube, read_hsi(files[1])[0]
        found = read_references(files[1], raw_test.shape[0], raw_test.shape[1], raw_test.shape[2])
        reference = found["abundances"]
    else:
        half = cube.shape[1] // 2
        raw_train, raw_test = cube[:, :half], cube[:, half:]
        found = read_references(files[0], cube.shape[0], cube.shape[1], cube.shape[2])
        reference = None if found["abundances"] is None else found["abundances"][:, half:]
    ends = found["endmembers_raw"]
    if ends is not None:  # onto the test part's own min-max, as its target
        lo, hi = float(raw_test.min()), float(raw_test.max())
        ends = (ends - lo) / max(hi - lo, 1e-12)
    return Scene(name, prepare_pair(raw_train, bands), prepare_pair(raw_test, bands), list(bands), raw_train,
                 raw_test, reference, ends)


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds, self.cpu_seconds = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_linear(scene: Scene, steps: int, seed: int) -> dict:
    """The bar: [x, 1] -> y by least squares on the training pixels."""
    (x_train, y_train), (x_test, y_test) = scene.train, scene.test
    design = lambda x: np.concatenate([x.reshape(-1, 3), np.ones((x.shape[0] * x.shape[1], 1))], 1)
    with Clock() as clock:
        coef, *_ = np.linalg.lstsq(design(x_train), y_train.reshape(-1, y_train.shape[2]), rcond=None)
        pred = (design(x_test) @ coef).reshape(y_test.shape)
    return {"pred": pred, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds}


def initialise(model, init: str, x_train: np.ndarray, y_train: np.ndarray, seed: int) -> None:
    """Set the decoder (and the affine head) from the training pixels."""
    pixels, count = y_train.reshape(-1, y_train.shape[2]), model.num_endmembers
    with torch.no_grad():
        if init == "linear_simplex":
            ends, mixing = linear_simplex_init(x_train.reshape(-1, 3), pixels, count, seed=seed)
            model.skip.weight[:count, :, 0, 0] = torch.from_numpy(mixing[:, :3]).float()
            model.skip.bias[:count] = torch.from_numpy(mixing[:, 3]).float()
        elif init in ("distant_pixels", "vertices"):
            pick = farthest_points if init == "distant_pixels" else orthogonal_vertices
            ends = pixels[pick(pixels, count)].T
        else:
            return
        model.decoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(ends)).float()[:, :, None, None])


def to_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float()


def variant_method(variant):
    """A VARIANTS entry as a method: whole-image full-batch Adam for `steps` steps, one-cycle lr."""
    def run(scene: Scene, steps: int, seed: int, warmup: float = 0.3) -> dict:
        overrides, init, loss_weights, lr = variant
        (x_train, y_train), (x_test, _) = scene.train, scene.test
        torch.manual_seed(seed)
        model = build_unmixing_model(dict(UNMIXING_DEFAULTS["model"], **overrides), 3, y_train.shape[2])
        initialise(model, init, x_train, y_train, seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)
        x, y = to_image(x_train), to_image(y_train)
        with Clock() as clock:
            for _ in range(steps):
                _, recon = model(x)
                loss, _ = unmixing_loss(recon, y, model.decoder.weight, loss_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        return dict(infer(model, x_test), seconds=clock.seconds, cpu_seconds=clock.cpu_seconds, steps=steps)
    return run


@torch.no_grad()
def infer(model, x_test: np.ndarray) -> dict:
    """Prediction (H, W, C), abundances (H, W, K) and endmembers (C, K) of a model on the test input."""
    abundances, recon = model.eval()(to_image(x_test))
    return {"pred": recon[0].permute(1, 2, 0).numpy(), "abundances": abundances[0].permute(1, 2, 0).numpy(),
            "endmembers": model.endmembers().double().numpy()}


def config_method(path: str | None, overrides: dict | None = None):
    """An unmixing config (or the defaults with `overrides`, e.g. a model.method) trained by the project's training loop on the scene's files (written to a
    scratch folder), validated on the test file, tested at its train.test_checkpoint."""
    def run(scene: Scene, steps: int, seed: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench_stage1_") as scratch:
            folders = {role: os.path.join(scratch, role) for role in ("train", "test")}
            write_mat(os.path.join(folders["train"], "scene.mat"), {"Y": scene.raw_train})
            write_mat(os.path.join(folders["test"], "scene.mat"), {"Y": scene.raw_test})
            cfg = load_unmixing_config(path, {**(overrides or {}), "data.train": folders["train"],
                                              "data.val": folders["test"], "data.test": folders["test"],
                                              "data.bands": scene.bands, "train.seed": seed})
            run_dir = os.path.join(scratch, "run")
            with Clock() as clock:
                train_unmixing(cfg, run_dir, torch.device("cpu"))
            which = cfg["train"]["test_checkpoint"]
            model, _ = load_unmixing_model(os.path.join(run_dir, "checkpoint", f"{which}.pth"), torch.device("cpu"))
        x_test, _ = prepare_pair(scene.raw_test, scene.bands, cfg["data"]["input_norm"])
        return dict(infer(model, x_test), seconds=clock.seconds, cpu_seconds=clock.cpu_seconds)
    return run


GEOMETRIC = {"vca+fcls": (vca, {}), "vca-pca+fcls": (vca, {"snr_db": -np.inf}), "nfindr+fcls": (nfindr, {})}
GEOMETRIC_LABELS = {"vca+fcls": "VCA + FCLS", "vca-pca+fcls": "VCA (PCA projection forced) + FCLS",
                    "nfindr+fcls": "N-FINDR + FCLS"}


def geometric_method(extract, options: dict, count: int):
    """Endmembers extracted from the training HSI, FCLS abundances of the test HSI (all its bands)."""
    def run(scene: Scene, steps: int, seed: int) -> dict:
        y_train, y_test = scene.train[1], scene.test[1]
        with Clock() as clock:
            ends, _ = extract(y_train.reshape(-1, y_train.shape[2]), count, seed=seed, **options)
            abundances = fcls(y_test.reshape(-1, y_test.shape[2]), ends)
        return {"pred": (abundances @ ends.T).reshape(y_test.shape), "endmembers": ends,
                "abundances": abundances.reshape(y_test.shape[:2] + (count,)), "seconds": clock.seconds,
                "cpu_seconds": clock.cpu_seconds}
    return run


# name -> (function, seeded). New stage-1 methods: one entry here (or a config through `config:PATH`).
METHODS = {"linear": (run_linear, False)}
METHODS.update({f"variant:{name}": (variant_method(variant), True) for name, variant in VARIANTS.items()})


def method_for(name: str, count: int):
    """(run function, seeded, table label) of a --methods name."""
    if name.startswith("method:"):  # a stage-1 method of ubf/pipeline/unmixing_methods.py, as Unmixing.py trains it
        return config_method(None, {"model.method": name[len("method:"):]}), True, f"method {name[len('method:'):]}"
    if name.startswith("config:"):
        return config_method(name[len("config:"):]), True, f"config {os.path.basename(name[len('config:'):])}"
    if name in GEOMETRIC:
        return geometric_method(*GEOMETRIC[name], count), True, f"{GEOMETRIC_LABELS[name]} on the test HSI, K = {count}"
    if name not in METHODS:
        known = ", ".join(list(METHODS) + list(GEOMETRIC) + ["config:PATH"])
        raise SystemExit(f"unknown method '{name}' (known: {known})")
    run, seeded = METHODS[name]
    return run, seeded, LINEAR if name == "linear" else name[len("variant:"):]


def score(scene: Scene, outcome: dict) -> dict:
    """Test PSNR/SAM and, with abundances and endmembers, the scores for synthesis."""
    y_test = scene.test[1]
    out = {"PSNR": psnr(y_test, outcome["pred"]), "SAM": sam(y_test, outcome["pred"]),
           "seconds": outcome["seconds"], "cpu_seconds": outcome["cpu_seconds"]}
    if "steps" in outcome:
        out["steps"] = outcome["steps"]
    abundances, ends = outcome.get("abundances"), outcome.get("endmembers")
    if abundances is not None:
        contrast = MapContrast()
        contrast.add(abundances)
        maps = contrast.result()
        out.update(max_abundance=maps["max_abundance_mean"], spatial_std=maps["spatial_std_mean"],
                   usage=[round(float(u), 3) for u in (abundances > 0.1).reshape(-1, abundances.shape[2]).mean(0)])
    if ends is not None:
        nearest = NearestPixels(ends)
        nearest.add(scene.train[1])
        nearest.add(y_test)
        angles = nearest.result()["sam_deg"]
        out.update(sam_to_data_max=float(angles.max()), sam_to_data=[round(float(a), 2) for a in angles])
        if scene.reference_endmembers is not None:
            out["sad"] = endmember_sad(ends, scene.reference_endmembers)["sad_mean_deg"]
    if abundances is not None and scene.reference is not None:
        errors = AbundanceErrors()
        errors.add(abundances, scene.reference)
        result = errors.result()
        out.update(abundance_rmse=result["rmse"], abundance_rmse_merged=result["rmse_merged"])
    return out


def mean_std(values, digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table_row(label: str, runs: list[dict], bar: dict) -> str:
    """One Markdown row: reconstruction, the linear map's PSNR difference, contrast, endmember distance,
    reference scores, seconds, seeds."""
    column = lambda key, digits=2: mean_std([r.get(key) for r in runs], digits)
    delta = mean_std([r["PSNR"] - bar["PSNR"] for r in runs])
    rmse = column("abundance_rmse", 3)
    if any(r.get("abundance_rmse_merged") is not None for r in runs):
        rmse += f" / {column('abundance_rmse_merged', 3)}"
    cells = [label, column("PSNR"), column("SAM"), delta, column("max_abundance", 3), column("spatial_std", 3),
             column("sam_to_data_max"), rmse, column("sad"), column("seconds", 0), column("cpu_seconds", 1),
             str(len(runs))]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = ["| method | test PSNR (dB) | test SAM (deg) | PSNR - linear (dB) | mean largest abundance | "
                "spatial std | endmember SAM to nearest pixel, max (deg) | abundance RMSE (one-to-one / merged) | "
                "endmember SAD (deg) | wall s | CPU s | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def load_average() -> list[str] | None:
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append",
                        help="TRAIN[,TEST][:R,G,B], demo, or shared (the scenes of ../shared/data, the default); "
                             "repeatable")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per variant run (the fixed work)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+",
                        help="rows: linear, variant:NAME, config:PATH, vca+fcls, vca-pca+fcls, nfindr+fcls (default: linear and "
                             "every variant)")
    parser.add_argument("--only", nargs="*", help="variant names to run, without the 'variant:' prefix (default: all)")
    parser.add_argument("--endmembers", type=int, default=5, help="K of the geometric methods (default 5)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods or (["linear"] + [f"variant:{n}" for n in VARIANTS if not args.only or n in args.only])
    methods = [(name, *method_for(name, args.endmembers)) for name in names]
    shared = [(name, tuple(os.path.join(SHARED, f) for f in files), bands) for name, files, bands in DEFAULT_SCENES
              if all(os.path.isfile(os.path.join(SHARED, f)) for f in files)]
    scenes = [scene for spec in (args.scene or ["shared"])
              for scene in (shared if spec == "shared" else [parse_scene(spec)])]
    print(json.dumps({"load_before": load_average()}), flush=True)
    tables = []
    with tempfile.TemporaryDirectory(prefix="bench_scenes_") as scratch:
        for name, files, bands in scenes:
            scene = load_scene(name, files, bands, scratch)
            bar = score(scene, run_linear(scene, args.steps, 0))
            rows = []
            for method, run, seeded, label in methods:
                runs = []
                for seed in (args.seeds if seeded else [0]):
                    result = score(scene, run(scene, args.steps, seed))
                    runs.append(result)
                    print(json.dumps({"scene": name, "bands": scene.bands, "method": method, "seed": seed, **result}),
                          flush=True)
                rows.append(table_row(label, runs, bar))
            reference = "reference abundances" if scene.reference is not None else "no reference abundances"
            tables.append((name, reference, rows))
    print(json.dumps({"load_after": load_average()}))
    print(f"\n{args.steps} steps per variant, threads {args.threads}, seeds {' '.join(map(str, args.seeds))}")
    for name, reference, rows in tables:
        print(f"\n### {name} ({reference})\n")
        print("\n".join(TABLE_HEADER + rows))


if __name__ == "__main__":
    main()
