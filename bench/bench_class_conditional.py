"""Class-conditional generation at CPU scale: labelled tiles, per-class scores and a picture grid.

    python bench/bench_class_conditional.py tiles --data ../shared/data --out DIR/rgb
    python bench/bench_class_conditional.py score --real DIR/abu --set cond=RUN/mat_results ... --out DIR/report

`tiles` cuts the real RGB images of ../shared/data into 64 px tiles in one folder per scene type
(`farmland`: the AID tiles; `landsat`: the Landsat 7 scene; `natural`: the photos), the layout of
AID / NWPU-RESISC45 that `Unmixing.py infer` reads classes from.

`score` compares sets of abundance maps (.mat with `Abu` and `class`) with the real inferred maps of
each class. Every map (its central S x S crop, S the sample size) is described by 20 numbers: per
endmember its mean, standard deviation, mean absolute gradient and the share of pixels where it
dominates. Per class it prints the Fréchet distance (FD) of a set's maps of that class (for an
unconditional set, every n-th map, n the number of classes, so all sets are scored on as many maps)
to the real maps of that class (on all 20 numbers, and on the K means alone: the composition), the FD between two halves of
the real maps (what a perfect generator would score at that size), the FD of all real maps to
that class (what a perfect unconditional generator would score), and the share of a set's maps
that a nearest-class-mean classifier fitted on the real maps assigns to the class they were asked
for. It also writes `grid.png`: one row per class, the real maps then each set's samples, each
endmember drawn in its own colour (red, green, blue, yellow, cyan) mixed by abundance.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.core.previews import grid, save_png, to_uint8  # noqa: E402
from ubf.data.images import list_images, read_rgb  # noqa: E402
from ubf.data.matio import read_mat  # noqa: E402
from ubf.evaluation.frechet import frechet_distance, real_floor  # noqa: E402

SCENES = {"farmland": ("paper", "aid"), "landsat": ("rgb", "remote"), "natural": ("rgb", "natural")}


def make_tiles(data: str, out: str, size: int = 64, per_image: int = 20, seed: int = 0) -> dict:
    """Write `<out>/<scene>/<image>_<n>.png` tiles; returns {scene: count}."""
    rng = np.random.default_rng(seed)
    counts = {}
    for scene, parts in SCENES.items():
        folder = os.path.join(out, scene)
        os.makedirs(folder, exist_ok=True)
        counts[scene] = 0
        images = list_images(os.path.join(data, *parts))
        # the single Landsat scene gives all its tiles of that class; photos and AID tiles a share each
        take = per_image if len(images) > 1 else 4 * per_image
        for path in images:
            image = (read_rgb(path) * 255 + 0.5).astype(np.uint8)
            height, width = image.shape[:2]
            corners = [(r, c) for r in range(0, height - size + 1, size // 2) for c in range(0, width - size + 1, size // 2)]
            for n, i in enumerate(rng.permutation(len(corners))[:take]):
                r, c = corners[i]
                stem = os.path.splitext(os.path.basename(path))[0]
                Image.fromarray(image[r:r + size, c:c + size]).save(os.path.join(folder, f"{stem}_{n:03d}.png"))
                counts[scene] += 1
    return counts


def centre_crop(abu: np.ndarray, size: int) -> np.ndarray:
    top, left = (abu.shape[0] - size) // 2, (abu.shape[1] - size) // 2
    return abu[top:top + size, left:left + size]


def describe(abu: np.ndarray) -> np.ndarray:
    """(H, W, K) abundances -> (4K,) mean, std, mean |gradient| and dominant share per endmember."""
    grad = np.abs(np.diff(abu, axis=0)).mean((0, 1)) + np.abs(np.diff(abu, axis=1)).mean((0, 1))
    dominant = np.bincount(abu.argmax(-1).ravel(), minlength=abu.shape[-1]) / abu[..., 0].size
    return np.concatenate([abu.mean((0, 1)), abu.std((0, 1)), grad, dominant])


def load_set(folder: str, size: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    maps, classes = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.mat"))):
        contents = read_mat(path, ["Abu", "class"])
        abu = np.asarray(contents["Abu"], dtype=np.float32)
        maps.append(centre_crop(abu, size) if size else abu)
        classes.append(str(contents["class"][0]) if "class" in contents else "")
    return maps, classes


# one colour per endmember; a pixel is the abundance-weighted mix of them
PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.2, 0.9], [0.95, 0.85, 0.1], [0.1, 0.8, 0.9]])


def composite(abu: np.ndarray, scale: int = 2) -> np.ndarray:
    """(H, W, K <= 5) abundances as an RGB picture (uint8): each endmember a colour, mixed by abundance."""
    rgb = to_uint8(abu @ PALETTE[:abu.shape[-1]])
    return np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))


def labelled(sheet: np.ndarray, classes: list[str], columns: list[str], per_row: int, row_height: int,
             margin: int = 72, header: int = 16, gap: int = 6) -> np.ndarray:
    """The grid with class names on the left and the name of each block of `per_row` columns on top."""
    canvas = Image.new("RGB", (sheet.shape[1] + margin, sheet.shape[0] + header), "white")
    canvas.paste(Image.fromarray(sheet), (margin, header))
    draw = ImageDraw.Draw(canvas)
    tile = (sheet.shape[1] + 2) // (per_row * len(columns))
    for i, name in enumerate(columns):
        draw.text((margin + i * per_row * tile + 2, 2), name, fill="black")
    for i, name in enumerate(classes):
        draw.text((4, header + i * (row_height + gap) + row_height // 2 - 5), name, fill="black")
    return np.asarray(canvas)


def score(real_dir: str, sets: dict[str, str], out: str, per_row: int = 6) -> dict:
    samples = {name: load_set(folder) for name, folder in sets.items()}
    size = next(iter(samples.values()))[0][0].shape[0]
    real_maps, real_classes = load_set(real_dir, size)
    classes = sorted(set(real_classes))
    real_features = np.stack([describe(a) for a in real_maps])
    real_labels = np.array(real_classes)
    k = real_maps[0].shape[-1]
    mean, std = real_features.mean(0), real_features.std(0) + 1e-8
    centroids = np.stack([((real_features[real_labels == c] - mean) / std).mean(0) for c in classes])

    def classify(features: np.ndarray) -> np.ndarray:
        distances = (((features - mean) / std)[:, None, :] - centroids[None]) ** 2
        return np.array(classes)[distances.sum(-1).argmin(1)]

    report = {"sample_size": size, "classes": {}}
    rows = []
    rng = np.random.default_rng(0)
    for index, c in enumerate(classes):
        real_c = real_features[real_labels == c]
        entry = {"real_maps": int(len(real_c)), "FD_real_floor": real_floor(real_c)["FD_real_floor"],
                 "FD_composition_real_floor": real_floor(real_c[:, :k])["FD_real_floor"],
                 "FD_composition_real_all_classes": frechet_distance(real_features[:, :k], real_c[:, :k]),
                 # a perfect unconditional generator draws the mixture of all classes
                 "FD_real_all_classes": frechet_distance(real_features, real_c),
                 "real_classified_right": float((classify(real_c) == c).mean())}
        picture = [composite(real_maps[i]) for i in rng.permutation(np.flatnonzero(real_labels == c))[:per_row]]
        for name, (maps, labels) in samples.items():
            # an unlabelled (unconditional) set: a disjoint share per class, as many maps as a labelled set has
            chosen = [a for a, label in zip(maps, labels) if label == c] if any(labels) else maps[index::len(classes)]
            features = np.stack([describe(a) for a in chosen])
            entry[f"FD_{name}"] = frechet_distance(features, real_c)
            # composition only (the K mean abundances): blind to pixel noise and texture
            entry[f"FD_composition_{name}"] = frechet_distance(features[:, :k], real_c[:, :k])
            entry[f"n_{name}"] = len(chosen)
            # for an unconditional set: the share of its maps that happen to look like class c
            entry[f"classified_right_{name}"] = float((classify(features) == c).mean())
            picture += [composite(a) for a in chosen[:per_row]]
        report["classes"][c] = entry
        rows.append(grid(picture, columns=len(picture)))
    os.makedirs(out, exist_ok=True)
    save_png(labelled(grid(rows, columns=1, gap=6), classes, ["real"] + list(sets), per_row, rows[0].shape[0]),
             os.path.join(out, "grid.png"))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiles = sub.add_parser("tiles")
    tiles.add_argument("--data", default=os.path.join("..", "shared", "data"))
    tiles.add_argument("--out", required=True)
    scoring = sub.add_parser("score")
    scoring.add_argument("--real", required=True, help="folder of the real inferred abundance maps (with class)")
    scoring.add_argument("--set", action="append", required=True, metavar="NAME=FOLDER", help="sample sets")
    scoring.add_argument("--out", required=True)
    scoring.add_argument("--per-row", type=int, default=6, help="maps of each set shown per class in grid.png")
    args = parser.parse_args(argv)
    if args.command == "tiles":
        print(json.dumps(make_tiles(args.data, args.out)))
        return
    report = score(args.real, dict(s.split("=", 1) for s in args.set), args.out, args.per_row)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
