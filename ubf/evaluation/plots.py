"""Distribution pictures of the generation report and the downstream pictures (matplotlib, Agg backend, PNG files).

- `angle_histogram`: spectral angle of every sampled synthetic pixel to its nearest real spectrum,
  one curve per set (synthetic and baselines);
- `mean_spectra`: mean spectrum +/- one standard deviation per set;
- `band_density`: for each set, the density of values per band (band on x, value on y, log colour);
- `downstream_bars`, `downstream_curves`: the downstream report's arms (bars of mean +/- std; test
  PSNR in dB against the training step).

Values are unitless normalised reflectance (see `pipeline.plots`): the real set min-max
normalised per file unless the report says `real_as_is`, the synthetic set as its files store it.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ubf.pipeline.plots import save_figure, spectral_axis  # noqa: E402

VALUE_LABEL = "normalised reflectance (unitless)"


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def angle_histogram(angles: dict[str, torch.Tensor], path: str, bins: int = 60) -> str:
    """Histogram (density) of angles in degrees, one step curve per named set."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    values = {name: _numpy(a) for name, a in angles.items() if len(a)}
    top = max((float(np.percentile(v, 99.5)) for v in values.values()), default=1.0)
    edges = np.linspace(0.0, max(top, 1e-3), bins + 1)
    for name, v in values.items():
        ax.hist(np.clip(v, 0, edges[-1]), bins=edges, density=True, histtype="step", linewidth=1.5,
                label=f"{name} (median {np.median(v):.2f} deg)")
    ax.set_xlabel("spectral angle to the nearest real spectrum (degrees)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("How far synthetic spectra are from real ones")
    return save_figure(fig, path, tight=True)


def mean_spectra(pixels: dict[str, torch.Tensor], path: str, wavelengths=None, y_label: str = VALUE_LABEL) -> str:
    """Mean +/- std spectrum of each set's (N, C) pixels."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, p in pixels.items():
        p = _numpy(p).astype(np.float64)
        x, label = spectral_axis(p.shape[1], wavelengths)
        mean, std = p.mean(0), p.std(0)
        line, = ax.plot(x, mean, label=name, linewidth=1.5)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=8)
    ax.set_title("Mean spectrum +/- std")
    return save_figure(fig, path, tight=True)


def band_density(pixels: dict[str, torch.Tensor], path: str, wavelengths=None, bins: int = 64,
                 y_label: str = VALUE_LABEL) -> str:
    """Side-by-side 2-D histograms: band on x, value on y, log10 density colour (with a colourbar); common range."""
    arrays = {name: _numpy(p).astype(np.float64) for name, p in pixels.items()}
    lo = min(float(np.percentile(a, 0.1)) for a in arrays.values())
    hi = max(float(np.percentile(a, 99.9)) for a in arrays.values())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig, axes = plt.subplots(1, len(arrays), figsize=(4.2 * len(arrays), 3.6), squeeze=False)
    for ax, (name, a) in zip(axes[0], arrays.items()):
        x, label = spectral_axis(a.shape[1], wavelengths)
        density = np.stack([np.histogram(np.clip(a[:, b], lo, hi), bins=edges, density=True)[0]
                            for b in range(a.shape[1])], axis=1)
        shown = ax.imshow(np.log10(density + 1e-3), origin="lower", aspect="auto", cmap="magma",
                          extent=(x[0], x[-1], lo, hi))
        ax.set_title(name)
        ax.set_xlabel(label)
        ax.set_ylabel(y_label)
        fig.colorbar(shown, ax=ax, fraction=0.046, label="log10 density")
    fig.suptitle("Value density per band (log10)")
    return save_figure(fig, path, tight=True)


def downstream_bars(report: dict, path: str, arms=("real_only", "real_plus_synthetic"),
                    metrics=(("psnr", "PSNR (dB)"), ("sam", "SAM (deg)"), ("mrae", "MRAE"))) -> str:
    """Per metric, one bar per arm: mean over seeds with the standard deviation as error bar."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        means = [report[f"{arm}.{key}_mean"] for arm in arms]
        stds = [report[f"{arm}.{key}_std"] for arm in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=4, color=["tab:gray", "tab:green"][:len(arms)])
        ax.set_xticks(range(len(arms)), [a.replace("_", " ") for a in arms], fontsize=8)
        ax.set_title(title)
        low = min(m - s for m, s in zip(means, stds))
        high = max(m + s for m, s in zip(means, stds))
        pad = max((high - low) * 0.5, 1e-6)
        ax.set_ylim(low - pad, high + pad)
    fig.suptitle("Held-out real test: trained on real only vs real + synthetic")
    return save_figure(fig, path, tight=True)


def reconstruction_examples(examples: list[tuple[str, np.ndarray, np.ndarray]], band_indices, path: str) -> str:
    """One row per (name, ground truth (H, W, C), reconstruction (H, W, C)): both as 3-band colour
    (the input bands, common min-max), and the per-pixel spectral angle map in degrees."""
    from ubf.core.metrics import spectral_angles
    fig, axes = plt.subplots(len(examples), 3, figsize=(9.6, 3.2 * len(examples)), squeeze=False)
    for row, (name, gt, pred) in zip(axes, examples):
        colour_gt, colour_pred = gt[..., list(band_indices)], pred[..., list(band_indices)]
        lo, hi = float(colour_gt.min()), float(colour_gt.max())
        scale = lambda a: np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        angles = spectral_angles(gt.reshape(-1, gt.shape[2]), pred.reshape(-1, pred.shape[2])).numpy()
        row[0].imshow(scale(colour_gt))
        row[0].set_title(f"{name}: ground truth", fontsize=8)
        row[1].imshow(scale(colour_pred))
        row[1].set_title("reconstruction", fontsize=8)
        shown = row[2].imshow(angles.reshape(gt.shape[:2]), cmap="viridis")
        row[2].set_title("spectral angle (deg)", fontsize=8)
        fig.colorbar(shown, ax=row[2], fraction=0.046)
        for ax in row:
            ax.axis("off")
    return save_figure(fig, path, tight=True)


def downstream_curves(report: dict, path: str, arms=("real_only", "real_plus_synthetic")) -> str:
    """Test PSNR (dB) against the training step, one line per arm and seed (`curve.<arm>.seed<s>`),
    the real-only arm bold; a dotted line where pre-training ends (protocol pretrain)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = {"real_only": "black", "real_plus_synthetic": "tab:green"}
    values = []
    for arm in arms:
        keys = sorted(k for k in report if k.startswith(f"curve.{arm}.seed") and report[k])
        for index, key in enumerate(keys):
            points = np.asarray(report[key], dtype=np.float64)
            values.append(points[:, 1])
            ax.plot(points[:, 0], points[:, 1], color=colours.get(arm), linewidth=2.4 if arm == "real_only" else 1.2,
                    alpha=0.9, label=arm.replace("_", " ") if index == 0 else None)
    if report.get("settings.protocol") == "pretrain" and any(k.startswith("curve.real_plus_synthetic") for k in report):
        pretrain = report.get("settings.pretrain_steps") or report.get("settings.steps")
        ax.axvline(pretrain, color="tab:green", linestyle=":", linewidth=1, label="end of pre-training")
    if values:  # a rare divergent step (far below the rest) must not flatten every curve
        values = np.concatenate(values)
        low, high = float(np.percentile(values, 3)), float(values.max())
        ax.set_ylim(low - 0.1 * max(high - low, 0.1), high + 0.05 * max(high - low, 0.1))
    ax.set_xlabel("training step")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Convergence on the held-out real test: {report.get('task_description', 'downstream')}", fontsize=9)
    return save_figure(fig, path, tight=True)
