"""Matplotlib figures people look at (PNG only, Agg backend: no display needed).

Image grids and abundance strips are `core.previews`' job; this module draws charts.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ubf.core.fs import atomic_output  # noqa: E402


def save_figure(figure, path: str, tight: bool = False) -> str:
    """Write a figure as PNG atomically (temp file + rename), close it, return `path`."""
    try:
        with atomic_output(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    finally:
        plt.close(figure)
    return path


def spectral_axis(n_bands: int, wavelengths=None) -> tuple[np.ndarray, str]:
    """x values and label for per-band plots: wavelengths (nm) when there is one per band, else band index."""
    if wavelengths is not None and len(wavelengths) == n_bands:
        return np.asarray(wavelengths, dtype=np.float64), "wavelength (nm)"
    return np.arange(n_bands), "band index"


def plot_spectra(path: str, endmembers: np.ndarray, synthetic_mean: np.ndarray, synthetic_std: np.ndarray,
                 wavelengths=None, real_mean=None, real_std=None, title: str = "",
                 labels: tuple[str, str] = ("synthetic", "real training")) -> None:
    """Two panels: the (C, K) endmembers; mean +/- std of synthetic (and real) pixel spectra, all (C,)."""
    n_bands, k = endmembers.shape
    x, x_label = spectral_axis(n_bands, wavelengths)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colours = plt.get_cmap("tab10")
    for j in range(k):
        left.plot(x, endmembers[:, j], color=colours(j % 10), label=f"endmember {j + 1}")
    left.set_title(f"endmembers (K = {k})")
    left.set_xlabel(x_label)
    left.set_ylabel("value")
    left.legend(fontsize=8)
    series = [(synthetic_mean, synthetic_std, labels[0], "tab:blue")]
    if real_mean is not None:
        series.append((real_mean, real_std, labels[1], "tab:orange"))
    for mean, std, label, colour in series:
        right.plot(x, mean, color=colour, label=f"{label} mean")
        right.fill_between(x, mean - std, mean + std, color=colour, alpha=0.25, label=f"{label} +/- 1 std")
    right.set_title("pixel spectra")
    right.set_xlabel(x_label)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
