"""`Evaluate.py downstream`: do synthetic HSIs help a real task? (the paper's claim, made measurable)

The task is RGB-to-HSI spectral reconstruction: a small CNN maps three bands of a crop to all of its
bands. Two arms are trained with the same budget (steps, batch, crop) and seeds:
(a) `real_only`: random crops of the real training files;
(b) `real_plus_synthetic`: each crop of a batch comes from the synthetic set with probability
    `synthetic_fraction`, else from the real training files.
Both are tested on held-out real files (or the right part of a single real file) by PSNR, SSIM, SAM
(`core.metrics`) and MRAE, over several seeds; the report gives mean and standard deviation per arm
and the difference (b - a).

Two ways to use the synthetic set (`protocol`): `mix` draws synthetic crops into the batches as above;
`pretrain` trains on synthetic crops only for `pretrain_steps`, then fine-tunes on the real training
files for `steps` (the real-only arm trains `steps` on real). Pre-training costs extra compute, so
read its gain against the controls (noisy copies of the real files get the same extra steps).

Inputs are built as the unmixing stage builds them: the three bands of the cube, min-max scaled
together (`data.hsi_dataset.prepare_pair`), and targets are the cube min-max normalised per file.
Synthetic files get the same preprocessing (`synthetic_norm="minmax"`): an input stretched to [0, 1]
beside a target left in its own narrower range teaches another input-to-target map than the real
files' and cost up to 3.5 dB by itself (docs/evaluation.md). `"as_is"` keeps synthetic targets
unscaled (inputs still stretched), the behaviour before that was measured.

Tasks (`task`: rgb2hsi, denoise, sr4) live in `downstream_tasks.py`, networks (`model`: cnn, unet,
pixel) in `downstream_models.py`, crop sources (HSI files in memory, or abundance maps rendered on the
fly, `abundance_dir`) in `synthetic_sets.py`. With `eval_every` N each arm's test PSNR is recorded
every N steps (pre-training and fine-tuning counted together) as `curve.<arm>.seed<s>`.
"""
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.core.metrics import mrae, psnr, sam, ssim
from ubf.data.bands import BAND_PRESETS, evenly_spread_bands, resolve_bands, select_bands
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.cubes import read_cube
from ubf.data.normalize import minmax
from ubf.evaluation.downstream_models import (SKIP_OVERRIDES, SpectralReconstructionNet,  # noqa: F401
                                              build_model, default_lr, default_width)
from ubf.evaluation.downstream_tasks import check_crop, make_task, trimmed_size
from ubf.evaluation.plots import downstream_bars, downstream_curves
from ubf.evaluation.report import check_out_dir, write_json, write_markdown
from ubf.evaluation.sampling import hsi_files
from ubf.evaluation.synthetic_sets import PairSet, draw_window, load_abundance_set, oriented

ARMS = ("real_only", "real_plus_synthetic")
METRICS = ("psnr", "ssim", "sam", "mrae")


@dataclass
class DownstreamSettings:
    """The CPU preset: 3 seeds x 2 arms of 1000 steps on 32 x 32 crops take a few minutes on 2 cores."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 1000
    batch: int = 8
    crop: int = 32
    lr: float | None = None   # None: the model's default (cnn and pixel 2e-3, unet 1e-3)
    width: int | None = None  # None: the model's default (cnn 32, unet 16, pixel 64)
    blocks: int = 2           # cnn only
    synthetic_fraction: float = 0.5
    test_fraction: float = 0.5
    bands: list[int] | str | None = None
    synthetic_cap: int = 256
    key: str | None = None
    task: str = "rgb2hsi"  # or "denoise" (HSI + Gaussian noise of noise_sigma), "sr4" (x4, blur_sigma): downstream_tasks
    noise_sigma: float = 0.1
    blur_sigma: float = 2.0  # sr4: Gaussian blur before decimation, in HR pixels
    model: str = "cnn"       # or "unet", "pixel" (downstream_models.MODELS)
    skip: str | None = None  # the skip path beside the body: "linear" or "identity"; None: the task's default
    eval_every: int | None = None  # record the test PSNR every N steps (curve.<arm>.seed<s>)
    synthetic_norm: str = "minmax"  # or "as_is": synthetic targets unscaled (see the module docstring)
    protocol: str = "mix"           # or "pretrain": synthetic only for pretrain_steps, then real for steps
    pretrain_steps: int | None = None  # None: the same as steps
    grad_clip: float | None = None  # clip the gradient's global norm to this (None: no clipping)
    finetune_lr_scale: float = 1.0  # protocol pretrain: the fine-tuning learning rate is lr x this
    adam_eps: float = 1e-8          # Adam's epsilon (torch's default); larger damps the steps of parameters
                                    # whose gradients are tiny (docs/evaluation.md, "Protocols")
    endmember_mode: str = "minmax"  # abundance sets: Synthesis.py --endmembers (minmax, the reference, or raw)
    simplex: bool = False           # abundance sets: Synthesis.py --simplex


def default_bands(n_bands: int) -> list[int]:
    return list(BAND_PRESETS["chikusei-rgb"]) if n_bands == 59 else evenly_spread_bands(n_bands)


SYNTHETIC_NORMS = ("minmax", "as_is")
PROTOCOLS = ("mix", "pretrain")


def load_pairs(files: list[str], band_indices, real: bool, key: str | None,
               synthetic_norm: str = "minmax") -> list[tuple[np.ndarray, np.ndarray]]:
    """(input (H, W, 3), target (H, W, C)) per file: inputs and targets min-max normalised per file,
    synthetic targets only with `synthetic_norm="minmax"` (else as they are)."""
    if synthetic_norm not in SYNTHETIC_NORMS:
        raise UserError(f"synthetic normalisation {synthetic_norm!r}: expected one of {', '.join(SYNTHETIC_NORMS)}")
    pairs = []
    for path in files:
        cube, _ = read_cube(path, key)
        if real or synthetic_norm == "minmax":
            pairs.append(prepare_pair(cube, band_indices))
        else:
            pairs.append((minmax(select_bands(cube, band_indices)), cube.astype(np.float32)))
    return pairs


def split_real(files: list[str], settings: DownstreamSettings, seed: int = 0, test_files: list[str] | None = None):
    """(train pairs, test pairs, description): held-out files, or the right part of a single file; with
    `test_files` (another scene or folder) every file of `files` trains and every test file tests."""
    if test_files is not None:
        return (load_pairs(sorted(files), settings.bands, True, settings.key),
                load_pairs(sorted(test_files), settings.bands, True, settings.key),
                f"train files: {', '.join(map(os.path.basename, sorted(files)))}; "
                f"test files (--real-test): {', '.join(map(os.path.basename, sorted(test_files)))}")
    if len(files) == 1:
        cube, _ = read_cube(files[0], settings.key)
        width = cube.shape[1]
        cut = width - max(settings.crop, int(round(width * settings.test_fraction)))
        if cut < settings.crop:
            raise UserError(f"{files[0]}: {cube.shape[0]} x {width} is too small to split into train and test "
                            f"columns with crop {settings.crop}")
        model_input, target = prepare_pair(cube, settings.bands)
        train = [(model_input[:, :cut], target[:, :cut])]
        test = [(model_input[:, cut:], target[:, cut:])]
        return train, test, f"one real file: columns [0, {cut}) train, [{cut}, {width}) test"
    order = np.random.default_rng([seed, 5]).permutation(len(files))
    n_test = min(len(files) - 1, max(1, int(round(len(files) * settings.test_fraction))))
    test_files = sorted(files[i] for i in order[:n_test])
    train_files = sorted(files[i] for i in order[n_test:])
    return (load_pairs(train_files, settings.bands, True, settings.key),
            load_pairs(test_files, settings.bands, True, settings.key),
            f"train files: {', '.join(map(os.path.basename, train_files))}; "
            f"test files: {', '.join(map(os.path.basename, test_files))}")


def random_crop(pair, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random size x size crop with a random flip/rotation, as (3, s, s) and (C, s, s) tensors."""
    model_input, target = pair
    top, left, turn, flip = draw_window(*target.shape[:2], size, rng)
    window = (slice(top, top + size), slice(left, left + size))
    return oriented(model_input[window], turn, flip), oriented(target[window], turn, flip)


def as_source(pairs):
    """A crop source (`synthetic_sets`): a list of (input, target) pairs is wrapped, a source kept."""
    return PairSet(pairs) if isinstance(pairs, list) else pairs


def skip_path(settings: DownstreamSettings, task=None) -> str:
    """The skip path beside the network body: `settings.skip`, else the model's override for the task
    (`downstream_models.SKIP_OVERRIDES`), else the task's default."""
    task = task or make_task(settings)
    return settings.skip or SKIP_OVERRIDES.get(settings.model, {}).get(task.name) or task.path


def make_model(settings: DownstreamSettings, bands: int, task=None):
    task = task or make_task(settings)
    return build_model(settings.model, task.in_channels(bands), bands, skip_path(settings, task), settings.width,
                       settings.blocks)


class Curve:
    """Test PSNR every `every` steps, counted across pre-training and fine-tuning: [[step, psnr], ...]
    (step 0 is the untrained model)."""

    def __init__(self, every: int | None, test_pairs, device, settings: DownstreamSettings):
        self.every, self.device = every, device
        self.inputs = held_out_inputs(test_pairs, settings) if every else []
        self.points: list[list[float]] = []
        self.step = 0

    def record(self, model) -> None:
        model.eval()
        self.points.append([self.step, score(model, self.inputs, self.device, ("psnr",))["psnr"]])
        model.train()

    def advance(self, model, last: bool) -> None:
        """One training step done; record when it is a multiple of `every` or the very last."""
        self.step += 1
        if self.every and (self.step % self.every == 0 or last):
            self.record(model)


def train_arm(train_pairs, synthetic_pairs, settings: DownstreamSettings, seed: int, device,
              progress: bool = True, curve: Curve | None = None):
    """Train one model; `synthetic_pairs` None (or empty) gives the real-only arm. Either set may be a list
    of (input, target) pairs or a crop source of `synthetic_sets`. `curve`: records the test PSNR."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    train_pairs = as_source(train_pairs)
    synthetic_pairs = as_source(synthetic_pairs) if synthetic_pairs is not None else None
    bands = train_pairs.bands
    task = make_task(settings)
    check_crop(task, settings.crop)
    model = make_model(settings, bands, task).to(device)
    noise_gen = torch.Generator().manual_seed(seed * 7919 + 11)
    if settings.protocol not in PROTOCOLS:
        raise UserError(f"downstream protocol {settings.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    pretrain = settings.protocol == "pretrain" and synthetic_pairs is not None and len(synthetic_pairs) > 0
    pretrain_steps = (settings.steps if settings.pretrain_steps is None else settings.pretrain_steps) if pretrain else 0
    if curve is not None and curve.every:
        curve.record(model)
    if pretrain:
        _fit(model, task, synthetic_pairs, None, 0.0, pretrain_steps, settings, rng, noise_gen, device,
             f"seed {seed} pretrain", progress, curve, last=settings.steps == 0)
        synthetic_pairs = None
    use_synthetic = synthetic_pairs is not None and len(synthetic_pairs) > 0 and settings.synthetic_fraction > 0
    _fit(model, task, train_pairs, synthetic_pairs if use_synthetic else None, settings.synthetic_fraction,
         settings.steps, settings, rng, noise_gen, device, f"seed {seed} {'real+syn' if use_synthetic else 'real'}",
         progress, curve, last=True, lr_scale=settings.finetune_lr_scale if pretrain else 1.0)
    return model.eval()


def _fit(model, task, train_pairs, synthetic_pairs, synthetic_fraction: float, steps: int,
         settings: DownstreamSettings, rng: np.random.Generator, noise_gen: torch.Generator, device, label: str,
         progress: bool, curve: Curve | None = None, last: bool = True, lr_scale: float = 1.0) -> None:
    """`steps` Adam steps with a cosine schedule of their own (from lr x `lr_scale`); each crop from
    `synthetic_pairs` with probability `synthetic_fraction`, else from `train_pairs` (crop sources)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=(settings.lr or default_lr(settings.model)) * lr_scale,
                                 eps=settings.adam_eps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    model.train()
    bar = tqdm(range(steps), desc=label, disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        inputs, targets = [], []
        for _ in range(settings.batch):
            pool = synthetic_pairs if synthetic_pairs and rng.random() < synthetic_fraction else train_pairs
            x, y = pool.crop(int(rng.integers(0, len(pool))), settings.crop, rng)
            inputs.append(x)
            targets.append(y)
        x, y = torch.stack(inputs), torch.stack(targets)
        x = task.make_input(y, x, noise_gen)  # denoise: the target with noise; sr4: blurred, decimated, upsampled
        x, y = x.to(device), y.to(device)
        loss = F.l1_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if curve is not None:
            curve.advance(model, last and step == steps - 1)


def held_out_inputs(test_pairs, settings: DownstreamSettings | None = None):
    """[(network input (1, in, h, w), target (h, w, C))] per held-out image: the task's input from the
    whole image (sr4: trimmed to multiples of 4), deterministic (seed 0), the same for every arm and seed."""
    task = make_task(settings or DownstreamSettings())
    noise_gen = torch.Generator().manual_seed(0)
    out = []
    for model_input, target in test_pairs:
        h, w = trimmed_size(*target.shape[:2], task.multiple)
        target, model_input = target[:h, :w], model_input[:h, :w]
        clean = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)))[None]
        three = torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1)))[None]
        out.append((task.make_input(clean, three, noise_gen), target))
    return out


METRIC_FUNCTIONS = {"psnr": psnr, "ssim": ssim, "sam": sam, "mrae": mrae}


@torch.no_grad()
def score(model, inputs, device, metrics=METRICS) -> dict[str, float]:
    """Mean over (input, target) of `held_out_inputs` of each metric; `model` None scores the input itself."""
    results = {m: [] for m in metrics}
    for x, target in inputs:
        out = x if model is None else model(x.to(device))
        pred = out[0].permute(1, 2, 0).float().cpu().numpy()
        for m in metrics:
            results[m].append(METRIC_FUNCTIONS[m](target, pred))
    return {m: float(np.mean(v)) for m, v in results.items()}


def test_arm(model, test_pairs, device, settings: DownstreamSettings | None = None, metrics=METRICS
             ) -> dict[str, float]:
    """Mean over held-out images of PSNR, SSIM, SAM (core.metrics) and MRAE (or the named `metrics`);
    inputs from `held_out_inputs` (denoising: the same noise, seed 0, for every arm and seed)."""
    return score(model, held_out_inputs(test_pairs, settings), device, metrics)


def input_scores(test_pairs, settings: DownstreamSettings) -> dict[str, float] | None:
    """The scores of the task's input taken as the answer (denoise: the noisy image; sr4: bicubic
    upsampling of the LR image); None for tasks whose input has other channels than the target (rgb2hsi)."""
    task = make_task(settings)
    if task.in_channels(test_pairs[0][1].shape[2]) != test_pairs[0][1].shape[2]:
        return None
    return score(None, held_out_inputs(test_pairs, settings), None)


# settings that decide the real-only arm: equal in two runs, equal real-only models (same seed, same data)
REAL_ONLY_SETTINGS = ("steps", "batch", "crop", "lr", "width", "blocks", "test_fraction", "bands", "key", "task",
                      "noise_sigma", "model", "blur_sigma", "skip", "grad_clip", "adam_eps")


def earlier_default(earlier: dict, key: str):
    """What a report written before a setting existed did (every such model was trained so)."""
    if key == "settings.skip":  # the cnn: a residual (identity) path for denoise, linear for rgb2hsi
        return "identity" if earlier.get("settings.task") == "denoise" else "linear"
    return {"settings.model": "cnn", "settings.blur_sigma": 2.0, "settings.adam_eps": 1e-8}.get(key)


def reusable_real_only(path: str, report: dict, seeds: list[int]) -> dict | None:
    """The real-only results of an earlier report.json when its real data, split and real-only settings
    equal `report`'s (so its real-only models are the ones this run would train), and it has the curves
    this run records; else None."""
    try:
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return None
    same = all(earlier.get(k) == report.get(k) for k in ("real_dir", "real_test_dir", "split"))
    same = same and all(earlier.get(f"settings.{k}", earlier_default(earlier, f"settings.{k}")) ==
                        report.get(f"settings.{k}") for k in REAL_ONLY_SETTINGS)
    if report.get("settings.eval_every"):
        same = same and earlier.get("settings.eval_every") == report["settings.eval_every"]
    if not same or any(f"real_only.seed{s}.psnr" not in earlier for s in seeds):
        return None
    return {k: v for k, v in earlier.items()
            if any(k.startswith(f"real_only.seed{s}.") or k in (f"timing.real_only.seed{s}_s", f"curve.real_only.seed{s}")
                   for s in seeds)}


def load_synthetic(synthetic_dir: str | None, abundance_dir: str | None, endmembers: str | None,
                   settings: DownstreamSettings, n_bands: int):
    """(crop source, description) of the synthetic set: HSI files (at most `synthetic_cap`, drawn with
    the first seed) or, with `abundance_dir` and `endmembers`, every abundance map rendered on the fly."""
    if abundance_dir is not None:
        if endmembers is None:
            raise UserError("an abundance set needs the unmixing checkpoint of its endmembers (--endmembers CKPT)")
        if settings.synthetic_norm not in SYNTHETIC_NORMS:
            raise UserError(f"synthetic normalisation {settings.synthetic_norm!r}: expected one of "
                            f"{', '.join(SYNTHETIC_NORMS)}")
        source = load_abundance_set(abundance_dir, endmembers, settings.bands, settings.endmember_mode,
                                    settings.simplex, settings.synthetic_norm)
        where = os.path.abspath(abundance_dir)
        text = (f"{len(source)} abundance maps rendered on the fly (endmembers of {endmembers}, "
                f"{settings.endmember_mode}, {'simplex' if settings.simplex else 'no simplex'})")
    else:
        files = hsi_files(synthetic_dir, "synthetic")
        if len(files) > settings.synthetic_cap:
            pick = np.random.default_rng([settings.seeds[0], 9]).choice(len(files), settings.synthetic_cap,
                                                                        replace=False)
            files = [files[i] for i in sorted(pick)]
        source = PairSet(load_pairs(files, settings.bands, False, settings.key, settings.synthetic_norm))
        where, text = os.path.abspath(synthetic_dir), f"{len(source)} synthetic HSI files"
    if source.bands != n_bands:
        raise UserError(f"{endmembers if abundance_dir is not None else files[0]}: {source.bands} bands, "
                        f"but the real set has {n_bands}")
    return source, where, text


def run_downstream(real_dir: str, synthetic_dir: str | None, out_dir: str, settings: DownstreamSettings,
                   device: torch.device, overwrite: bool = False, progress: bool = True,
                   reuse_real_only: str | None = None, abundance_dir: str | None = None,
                   endmembers: str | None = None, real_test_dir: str | None = None) -> dict:
    """Train both arms for every seed, test on held-out real data, write report.json and summary.md.
    The synthetic set is the HSI folder `synthetic_dir`, or the abundance folder `abundance_dir` rendered
    with the endmembers of the unmixing checkpoint `endmembers`.
    `reuse_real_only`: an earlier report.json whose real-only arm is taken over when it was trained on
    the same real data with the same settings (several synthetic sets against one real-only arm).
    `real_test_dir`: test on these files (another scene) and train on every file of `real_dir`."""
    log = get_logger()
    check_out_dir(out_dir, overwrite)
    started = time.time()
    task = make_task(settings)
    check_crop(task, settings.crop)
    settings.width = default_width(settings.model) if settings.width is None else settings.width
    settings.skip = skip_path(settings, task)
    settings.lr = default_lr(settings.model) if settings.lr is None else settings.lr
    real_files = hsi_files(real_dir, "real")
    first, wavelengths = read_cube(real_files[0], settings.key)
    settings.bands = resolve_bands(settings.bands, first.shape[2], wavelengths) if settings.bands is not None \
        else default_bands(first.shape[2])
    test_files = None
    if real_test_dir is not None:
        test_files = hsi_files(real_test_dir, "real test")
        shared = {os.path.realpath(p) for p in test_files} & {os.path.realpath(p) for p in real_files}
        if shared:
            raise UserError(f"{sorted(shared)[0]}: in both --real and --real-test (a model is never tested on a file "
                            "it trained on)")
        test_bands = read_cube(test_files[0], settings.key)[0].shape[2]
        if test_bands != first.shape[2]:
            raise UserError(f"{test_files[0]}: {test_bands} bands, but the real training set has {first.shape[2]}")
    train_pairs, test_pairs, split = split_real(real_files, settings, test_files=test_files)
    synthetic, synthetic_where, synthetic_text = load_synthetic(synthetic_dir, abundance_dir, endmembers, settings,
                                                                first.shape[2])
    log.info("downstream %s, model %s (width %d, %s skip path): %s; %s; bands %s; seeds %s", task.describe(),
             settings.model, settings.width, settings.skip, split, synthetic_text, settings.bands, settings.seeds)
    report = {"real_dir": os.path.abspath(real_dir),
              **({"real_test_dir": os.path.abspath(real_test_dir)} if real_test_dir else {}), "synthetic_dir": synthetic_where, "split": split,
              "task_description": task.describe(), "synthetic_set": synthetic_text, "n_synthetic_files": len(synthetic), "n_test_images": len(test_pairs)}
    if abundance_dir is not None:
        report["endmembers"] = os.path.abspath(endmembers)
    report.update({f"settings.{k}": (v if not isinstance(v, list) else ",".join(map(str, v)))
                   for k, v in asdict(settings).items()})
    baseline = input_scores(test_pairs, settings)
    if baseline:
        report.update({f"input.{m}": v for m, v in baseline.items()})
    reused = reusable_real_only(reuse_real_only, report, settings.seeds) if reuse_real_only else None
    if reused:
        report.update(reused)
        report["real_only_from"] = os.path.abspath(reuse_real_only)
        log.info("real-only arm taken from %s (same real data and settings)", reuse_real_only)
    elif reuse_real_only:
        log.info("%s: other real data or settings; the real-only arm is trained here", reuse_real_only)
    for seed in settings.seeds:
        for arm in ARMS:
            if reused and arm == "real_only":
                continue
            t = time.time()
            curve = Curve(settings.eval_every, test_pairs, device, settings)
            model = train_arm(train_pairs, synthetic if arm == "real_plus_synthetic" else None,
                              settings, seed, device, progress, curve)
            scores = test_arm(model, test_pairs, device, settings)
            report.update({f"{arm}.seed{seed}.{m}": v for m, v in scores.items()})
            if settings.eval_every:
                report[f"curve.{arm}.seed{seed}"] = curve.points
            report[f"timing.{arm}.seed{seed}_s"] = time.time() - t
            log.info("seed %d %s: PSNR %.2f dB, SAM %.2f deg, MRAE %.4f (%.0f s)", seed, arm, scores["psnr"],
                     scores["sam"], scores["mrae"], time.time() - t)
    report.update(summarise(report, settings.seeds))
    report["timing.total_s"] = time.time() - started
    write_json(report, out_dir)
    write_markdown(downstream_summary(report, settings.seeds), out_dir)
    downstream_bars(report, os.path.join(out_dir, "plots", "downstream.png"))
    if settings.eval_every:
        downstream_curves(report, os.path.join(out_dir, "plots", "curves.png"))
    return report


def summarise(report: dict, seeds: list[int]) -> dict:
    """Mean and standard deviation over seeds per arm and metric, and the per-seed difference b - a."""
    out = {}
    for m in METRICS:
        for arm in ARMS:
            values = np.array([report[f"{arm}.seed{s}.{m}"] for s in seeds])
            out[f"{arm}.{m}_mean"], out[f"{arm}.{m}_std"] = float(values.mean()), float(values.std())
        delta = np.array([report[f"real_plus_synthetic.seed{s}.{m}"] - report[f"real_only.seed{s}.{m}"] for s in seeds])
        out[f"delta.{m}_mean"], out[f"delta.{m}_std"] = float(delta.mean()), float(delta.std())
    return out


def downstream_summary(report: dict, seeds: list[int]) -> list[str]:
    task = report.get("task_description", "RGB-to-HSI reconstruction")
    lines = [f"# Downstream report: {task} trained with and without synthetic HSIs", "",
             f"Real: `{report['real_dir']}` ({report['split']}). Synthetic: `{report['synthetic_dir']}` "
             f"({report.get('synthetic_set', str(report['n_synthetic_files']) + ' files')}). "
             f"Seeds: {', '.join(map(str, seeds))}; mean +/- std over seeds.", "",
             f"Model: {report.get('settings.model', 'cnn')} (width {report.get('settings.width')}, "
             f"{report.get('settings.skip')} skip path). "
             f"Protocol: {report.get('settings.protocol', 'mix')} (synthetic files normalised: "
             f"{report.get('settings.synthetic_norm', 'as_is')}).", "",
             "| arm | PSNR (dB) | SSIM | SAM (deg) | MRAE |", "|---|---|---|---|---|"]
    for arm in ARMS + ("delta",):
        cells = [f"{report[f'{arm}.{m}_mean']:.4f} +/- {report[f'{arm}.{m}_std']:.4f}" for m in METRICS]
        label = "difference (b - a)" if arm == "delta" else arm
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "input.psnr" in report:
        lines.append("| the task's input as the answer | " + " | ".join(f"{report[f'input.{m}']:.4f}" for m in METRICS)
                     + " |")
    plots = "`plots/downstream.png`" + (", `plots/curves.png` (test PSNR vs step)" if report.get("settings.eval_every")
                                        else "")
    lines += ["", "Higher PSNR/SSIM and lower SAM/MRAE are better; a positive PSNR difference means the synthetic "
                  "data helped.", "", f"Total time: {report['timing.total_s']:.0f} s. Plots: {plots}."]
    return lines
