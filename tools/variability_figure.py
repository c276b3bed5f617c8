"""The README's variability picture: one synthetic HSI without and with the ELMM scaling fields.

    python tools/variability_figure.py --plain experiments/Synthesis_plain --varied experiments/Synthesis_auto \
        --real ../shared/data/paper/chikusei --out docs/images/variability.png [--sample NAME]

Panels: the two RGB previews (same abundances), the log scaling field of the sample's dominant
endmember, and the distribution of pixel brightness (mean over bands) of the real HSIs (per-file
min-max, as training sees them) and of all synthetic HSIs of both folders.
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from ubf.data.cubes import list_cube_files, read_cube  # noqa: E402
from ubf.data.matio import read_mat  # noqa: E402
from ubf.data.normalize import minmax  # noqa: E402


def brightness(folder: str, normalise: bool) -> np.ndarray:
    values = []
    for path in list_cube_files(folder):
        cube, _ = read_cube(path)
        values.append((minmax(cube) if normalise else cube).mean(axis=2).ravel())
    return np.concatenate(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", required=True, help="Synthesis.py output folder without --variability")
    parser.add_argument("--varied", required=True, help="Synthesis.py output folder with --variability")
    parser.add_argument("--real", required=True, help="folder of real HSIs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sample", help="file stem to show (default: the first)")
    args = parser.parse_args()
    stems = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(args.varied, "HSI", "*.mat")))
    stem = args.sample or stems[0]
    varied = read_mat(os.path.join(args.varied, "HSI", stem + ".mat"))
    dominant = int(np.argmax(varied["Abu"].mean(axis=(0, 1))))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, folder, title in ((axes[0], args.plain, "linear mixing (default)"),
                              (axes[1], args.varied, "with --variability")):
        ax.imshow(Image.open(os.path.join(folder, "RGB", stem + ".png")))
        ax.set_title(title)
        ax.axis("off")
    image = axes[2].imshow(np.log(varied["Scale"][..., dominant]), cmap="RdBu_r")
    axes[2].set_title(f"log scale of endmember {dominant + 1}")
    axes[2].axis("off")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    bins = np.linspace(0, 1, 60)
    for folder, label, normalise in ((args.real, "real (min-max per file)", True),
                                     (os.path.join(args.plain, "HSI"), "synthetic", False),
                                     (os.path.join(args.varied, "HSI"), "synthetic + variability", False)):
        axes[3].hist(np.clip(brightness(folder, normalise), 0, 1), bins=bins, density=True, histtype="step", label=label)
    axes[3].set_xlabel("pixel brightness (mean over bands)")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
