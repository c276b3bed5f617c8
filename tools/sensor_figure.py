"""The README's target-sensor picture: one real HSI rendered into a multispectral sensor's bands.

    python tools/sensor_figure.py --hsi ../shared/data/paper/chikusei/block_118.mat \
        --sensor sentinel2a-msi:B2,B3,B4,B5 --out docs/images/sensor_rendering.png

Left: the sensor's response curves over the HSI's wavelength range, with three pixels' spectra and the
band values they render to (drawn at each band's centre). Right: the HSI's band-composite preview next
to the rendered bands shown as an image (red, green, blue = the sensor's B4, B3, B2 when present).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ubf.data.bands import chikusei_wavelengths  # noqa: E402
from ubf.data.cubes import read_cube  # noqa: E402
from ubf.data.normalize import minmax  # noqa: E402
from ubf.data.sensors import load_sensor, render_cube, render_matrix  # noqa: E402


def stretch(image: np.ndarray) -> np.ndarray:
    """2-98 % stretch per channel, for display only."""
    lo, hi = np.percentile(image, 2, axis=(0, 1)), np.percentile(image, 98, axis=(0, 1))
    return np.clip((image - lo) / np.maximum(hi - lo, 1e-12), 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hsi", required=True, help="an HSI file (.mat, ENVI or TIFF)")
    parser.add_argument("--sensor", default="sentinel2a-msi:B2,B3,B4,B5", help="preset or file, as Synthesis.py")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    cube, wavelengths = read_cube(args.hsi)
    if wavelengths is None:  # the authors' Chikusei crops store none: the 59-band subset's
        wavelengths = chikusei_wavelengths()
    cube = minmax(cube)
    sensor = load_sensor(args.sensor, wavelengths)
    matrix, coverage = render_matrix(sensor, wavelengths, log_coverage=False)
    rendered = render_cube(cube, matrix)

    fig, (curves_ax, image_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    grid = np.linspace(wavelengths.min(), wavelengths.max(), 600)
    response = sensor.response(grid)
    for name, curve, share in zip(sensor.band_names, response, coverage):
        curves_ax.fill_between(grid, 0, curve / curve.max(), alpha=0.15)
        curves_ax.plot(grid, curve / curve.max(), lw=1, label=f"{name} ({100 * min(share, 1):.0f} % inside)")
    rng = np.random.default_rng(0)
    flat, flat_rendered = cube.reshape(-1, cube.shape[2]), rendered.reshape(-1, rendered.shape[2])
    centers = sensor.band_centers()
    for index in rng.choice(len(flat), size=3, replace=False):
        line, = curves_ax.plot(wavelengths, flat[index], color="k", lw=0.8, alpha=0.7)
        curves_ax.plot(centers, flat_rendered[index], "o", color=line.get_color(), ms=4)
    curves_ax.set_xlabel("wavelength (nm)")
    curves_ax.set_ylabel("relative response / reflectance (min-max)")
    curves_ax.set_title(f"{sensor.name}: responses, 3 pixels and their band values (dots)", fontsize=9)
    curves_ax.legend(fontsize=7, loc="upper left")

    order = [sensor.band_names.index(b) for b in ("B4", "B3", "B2") if b in sensor.band_names]
    order = order if len(order) == 3 else list(range(3))
    nearest = [int(np.argmin(np.abs(wavelengths - w))) for w in (640, 550, 460)]
    side_by_side = np.concatenate([stretch(cube[:, :, nearest]), np.ones((cube.shape[0], 4, 3)),
                                   stretch(rendered[:, :, order])], axis=1)
    image_ax.imshow(side_by_side)
    image_ax.set_title(f"HSI bands near 640/550/460 nm | rendered {'/'.join(sensor.band_names[i] for i in order)}",
                       fontsize=9)
    image_ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
