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
"""
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.core.metrics import mrae, psnr, sam, ssim
from ubf.data.bands import BAND_PRESETS, evenly_spread_bands, resolve_bands, select_bands
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.cubes import read_cube
from ubf.data.normalize import minmax
from ubf.evaluation.plots import downstream_bars
from ubf.evaluation.report import check_out_dir, write_json, write_markdown
from ubf.evaluation.sampling import hsi_files

ARMS = ("real_only", "real_plus_synthetic")
METRICS = ("psnr", "ssim", "sam", "mrae")


@dataclass
class DownstreamSettings:
    """The CPU preset: 3 seeds x 2 arms of 1000 steps on 32 x 32 crops take a few minutes on 2 cores."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 1000
    batch: int = 8
    crop: int = 32
    lr: float = 2e-3
    width: int = 32
    blocks: int = 2
    synthetic_fraction: float = 0.5
    test_fraction: float = 0.5
    bands: list[int] | str | None = None
    synthetic_cap: int = 256
    key: str | None = None
    task: str = "rgb2hsi"  # or "denoise": HSI + Gaussian noise (noise_sigma) -> HSI, a spatial task
    noise_sigma: float = 0.1
    synthetic_norm: str = "minmax"  # or "as_is": synthetic targets unscaled (see the module docstring)
    protocol: str = "mix"           # or "pretrain": synthetic only for pretrain_steps, then real for steps
    pretrain_steps: int | None = None  # None: the same as steps


class SpectralReconstructionNet(nn.Module):
    """(N, 3, H, W) -> (N, C, H, W): a per-pixel linear map plus a residual convolutional body.

    The linear path alone is the least-squares baseline of the design notes (37 dB on Chikusei); the
    body adds spatial context.
    """

    def __init__(self, bands: int, width: int = 32, blocks: int = 2, in_channels: int = 3, residual: bool = False):
        super().__init__()
        self.residual = residual  # denoising: the input plus a learned correction (starts as the identity)
        self.linear = nn.Conv2d(in_channels, bands, 1)
        if residual:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(width, bands, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x) + self.body(x)
        return x + out if self.residual else out


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


def split_real(files: list[str], settings: DownstreamSettings, seed: int = 0):
    """(train pairs, test pairs, description): held-out files, or the right part of a single file."""
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
    height, width = target.shape[:2]
    if height < size or width < size:
        raise UserError(f"a {height} x {width} image is smaller than the downstream crop {size}")
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    turn, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    out = []
    for array in (model_input, target):
        t = torch.from_numpy(np.ascontiguousarray(array[top:top + size, left:left + size].transpose(2, 0, 1)))
        t = torch.rot90(t, turn, dims=(1, 2))
        out.append(t.flip(2) if flip else t)
    return out[0], out[1]


def train_arm(train_pairs, synthetic_pairs, settings: DownstreamSettings, seed: int, device,
              progress: bool = True) -> SpectralReconstructionNet:
    """Train one model; `synthetic_pairs` None (or empty) gives the real-only arm."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    bands = train_pairs[0][1].shape[2]
    denoise = settings.task == "denoise"
    model = SpectralReconstructionNet(bands, settings.width, settings.blocks, bands if denoise else 3,
                                      residual=denoise).to(device)
    noise_gen = torch.Generator().manual_seed(seed * 7919 + 11)
    if settings.protocol not in PROTOCOLS:
        raise UserError(f"downstream protocol {settings.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if settings.protocol == "pretrain" and synthetic_pairs:
        pretrain_steps = settings.steps if settings.pretrain_steps is None else settings.pretrain_steps
        _fit(model, synthetic_pairs, None, 0.0, pretrain_steps, settings, rng, noise_gen, device,
             f"seed {seed} pretrain", progress)
        synthetic_pairs = None
    use_synthetic = bool(synthetic_pairs) and settings.synthetic_fraction > 0
    _fit(model, train_pairs, synthetic_pairs if use_synthetic else None, settings.synthetic_fraction,
         settings.steps, settings, rng, noise_gen, device, f"seed {seed} {'real+syn' if use_synthetic else 'real'}",
         progress)
    return model.eval()


def _fit(model, train_pairs, synthetic_pairs, synthetic_fraction: float, steps: int, settings: DownstreamSettings,
         rng: np.random.Generator, noise_gen: torch.Generator, device, label: str, progress: bool) -> None:
    """`steps` Adam steps with a cosine schedule of their own; each crop from `synthetic_pairs` with
    probability `synthetic_fraction`, else from `train_pairs`."""
    denoise = settings.task == "denoise"
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    model.train()
    bar = tqdm(range(steps), desc=label, disable=not progress, dynamic_ncols=True, leave=False)
    for _ in bar:
        inputs, targets = [], []
        for _ in range(settings.batch):
            pool = synthetic_pairs if synthetic_pairs and rng.random() < synthetic_fraction else train_pairs
            x, y = random_crop(pool[int(rng.integers(0, len(pool)))], settings.crop, rng)
            inputs.append(x)
            targets.append(y)
        x, y = torch.stack(inputs), torch.stack(targets)
        if denoise:  # the input is the target with noise: only spatial context can beat the noise
            x = y + settings.noise_sigma * torch.randn(y.shape, generator=noise_gen)
        x, y = x.to(device), y.to(device)
        loss = F.l1_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")


@torch.no_grad()
def test_arm(model: SpectralReconstructionNet, test_pairs, device, settings: DownstreamSettings | None = None
             ) -> dict[str, float]:
    """Mean over held-out images of PSNR, SSIM, SAM (core.metrics) and MRAE (denoising: the same
    noise, seed 0, for every arm and seed)."""
    results = {m: [] for m in METRICS}
    noise_gen = torch.Generator().manual_seed(0)
    for model_input, target in test_pairs:
        if settings is not None and settings.task == "denoise":
            clean = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)))[None]
            x = (clean + settings.noise_sigma * torch.randn(clean.shape, generator=noise_gen)).to(device)
        else:
            x = torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1)))[None].to(device)
        pred = model(x)[0].permute(1, 2, 0).float().cpu().numpy()
        results["psnr"].append(psnr(target, pred))
        results["ssim"].append(ssim(target, pred))
        results["sam"].append(sam(target, pred))
        results["mrae"].append(mrae(target, pred))
    return {m: float(np.mean(v)) for m, v in results.items()}


# settings that decide the real-only arm: equal in two runs, equal real-only models (same seed, same data)
REAL_ONLY_SETTINGS = ("steps", "batch", "crop", "lr", "width", "blocks", "test_fraction", "bands", "key", "task",
                      "noise_sigma")


def reusable_real_only(path: str, report: dict, seeds: list[int]) -> dict | None:
    """The real-only results of an earlier report.json when its real data, split and real-only settings
    equal `report`'s (so its real-only models are the ones this run would train); else None."""
    try:
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return None
    same = all(earlier.get(k) == report.get(k) for k in ("real_dir", "split"))
    same = same and all(earlier.get(f"settings.{k}") == report.get(f"settings.{k}") for k in REAL_ONLY_SETTINGS)
    if not same or any(f"real_only.seed{s}.psnr" not in earlier for s in seeds):
        return None
    return {k: v for k, v in earlier.items()
            if any(k.startswith(f"real_only.seed{s}.") or k == f"timing.real_only.seed{s}_s" for s in seeds)}


def run_downstream(real_dir: str, synthetic_dir: str, out_dir: str, settings: DownstreamSettings,
                   device: torch.device, overwrite: bool = False, progress: bool = True,
                   reuse_real_only: str | None = None) -> dict:
    """Train both arms for every seed, test on held-out real data, write report.json and summary.md.
    `reuse_real_only`: an earlier report.json whose real-only arm is taken over when it was trained on
    the same real data with the same settings (several synthetic sets against one real-only arm)."""
    log = get_logger()
    check_out_dir(out_dir, overwrite)
    started = time.time()
    real_files = hsi_files(real_dir, "real")
    synthetic_files = hsi_files(synthetic_dir, "synthetic")
    first, wavelengths = read_cube(real_files[0], settings.key)
    settings.bands = resolve_bands(settings.bands, first.shape[2], wavelengths) if settings.bands is not None \
        else default_bands(first.shape[2])
    train_pairs, test_pairs, split = split_real(real_files, settings)
    if len(synthetic_files) > settings.synthetic_cap:
        pick = np.random.default_rng([settings.seeds[0], 9]).choice(len(synthetic_files), settings.synthetic_cap,
                                                                    replace=False)
        synthetic_files = [synthetic_files[i] for i in sorted(pick)]
    synthetic_pairs = load_pairs(synthetic_files, settings.bands, False, settings.key, settings.synthetic_norm)
    if synthetic_pairs[0][1].shape[2] != first.shape[2]:
        raise UserError(f"{synthetic_files[0]}: {synthetic_pairs[0][1].shape[2]} bands, "
                        f"but the real set has {first.shape[2]}")
    log.info("downstream: %s; %d synthetic files; bands %s; seeds %s", split, len(synthetic_pairs),
             settings.bands, settings.seeds)
    report = {"real_dir": os.path.abspath(real_dir), "synthetic_dir": os.path.abspath(synthetic_dir), "split": split,
              "n_synthetic_files": len(synthetic_pairs), "n_test_images": len(test_pairs)}
    report.update({f"settings.{k}": (v if not isinstance(v, list) else ",".join(map(str, v)))
                   for k, v in asdict(settings).items()})
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
            model = train_arm(train_pairs, synthetic_pairs if arm == "real_plus_synthetic" else None,
                              settings, seed, device, progress)
            scores = test_arm(model, test_pairs, device, settings)
            report.update({f"{arm}.seed{seed}.{m}": v for m, v in scores.items()})
            report[f"timing.{arm}.seed{seed}_s"] = time.time() - t
            log.info("seed %d %s: PSNR %.2f dB, SAM %.2f deg, MRAE %.4f (%.0f s)", seed, arm, scores["psnr"],
                     scores["sam"], scores["mrae"], time.time() - t)
    report.update(summarise(report, settings.seeds))
    report["timing.total_s"] = time.time() - started
    write_json(report, out_dir)
    write_markdown(downstream_summary(report, settings.seeds), out_dir)
    downstream_bars(report, os.path.join(out_dir, "plots", "downstream.png"))
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
    task = ("HSI denoising (sigma " + str(report.get("settings.noise_sigma")) + ")"
            if report.get("settings.task") == "denoise" else "RGB-to-HSI reconstruction")
    lines = [f"# Downstream report: {task} trained with and without synthetic HSIs", "",
             f"Real: `{report['real_dir']}` ({report['split']}). Synthetic: `{report['synthetic_dir']}` "
             f"({report['n_synthetic_files']} files). Seeds: {', '.join(map(str, seeds))}; "
             "mean +/- std over seeds.", "",
             f"Protocol: {report.get('settings.protocol', 'mix')} (synthetic files normalised: "
             f"{report.get('settings.synthetic_norm', 'as_is')}).", "",
             "| arm | PSNR (dB) | SSIM | SAM (deg) | MRAE |", "|---|---|---|---|---|"]
    for arm in ARMS + ("delta",):
        cells = [f"{report[f'{arm}.{m}_mean']:.4f} +/- {report[f'{arm}.{m}_std']:.4f}" for m in METRICS]
        label = "difference (b - a)" if arm == "delta" else arm
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Higher PSNR/SSIM and lower SAM/MRAE are better; a positive PSNR difference means the synthetic "
                  "data helped.", "", f"Total time: {report['timing.total_s']:.0f} s. Plot: `plots/downstream.png`."]
    return lines
