"""Matplotlib figures people look at (PNG only, Agg backend: no display needed).

Image grids and abundance strips are `core.previews`' job; this module draws charts. Every axis names
its quantity and unit: wavelength in nm on x (band index when the data records no wavelengths), and on y
the value the pipeline works in. Every reader takes an HSI's values as reflectance (integers as
reflectance x 10000, ENVI's reflectance scale factor applied) and stage 1 min-max normalises each file to
[0, 1], so spectra are unitless normalised reflectance (`value_label` says which scaling).
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


SCALINGS = {
    "per_file": "min-max normalised per file",       # stage 1's input scaling; raw endmembers are on it
    "global_minmax": "endmembers rescaled to [0, 1]",  # Synthesis.py --endmembers minmax (the reference's)
    "as_stored": "as stored",
}


def value_label(scaling: str = "per_file", quantity: str = "reflectance") -> str:
    """The y-axis label of a spectrum, on two lines: quantity and unit, then its scaling, e.g.
    'reflectance (unitless)' / 'min-max normalised per file'."""
    return f"{quantity} (unitless)\n{SCALINGS[scaling]}"


def plot_spectra(path: str, endmembers: np.ndarray, synthetic_mean: np.ndarray, synthetic_std: np.ndarray,
                 wavelengths=None, real_mean=None, real_std=None, title: str = "",
                 labels: tuple[str, str] = ("synthetic", "real training"), y_label: str | None = None) -> None:
    """Two panels: the (C, K) endmembers; mean +/- std of synthetic (and real) pixel spectra, all (C,).

    `y_label`: the value axis of both panels (default `value_label()`: normalised reflectance)."""
    y_label = y_label or value_label()
    n_bands, k = endmembers.shape
    x, x_label = spectral_axis(n_bands, wavelengths)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colours = plt.get_cmap("tab10")
    for j in range(k):
        left.plot(x, endmembers[:, j], color=colours(j % 10), label=f"endmember {j + 1}")
    left.set_title(f"endmembers (K = {k})")
    left.set_xlabel(x_label)
    left.set_ylabel(y_label)
    left.legend(fontsize=8)
    series = [(synthetic_mean, synthetic_std, labels[0], "tab:blue")]
    if real_mean is not None:
        series.append((real_mean, real_std, labels[1], "tab:orange"))
    for mean, std, label, colour in series:
        right.plot(x, mean, color=colour, label=f"{label} mean")
        right.fill_between(x, mean - std, mean + std, color=colour, alpha=0.25, label=f"{label} +/- 1 std")
    right.set_title("pixel spectra")
    right.set_xlabel(x_label)
    right.set_ylabel(y_label)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
