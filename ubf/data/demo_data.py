"""Built-in demo data: synthetic HSI scenes mixed from real USGS spectra, and "external" RGB images.

Nothing is downloaded. Every scene is a linear mixture `Y = (A @ S) * illumination + noise` of a few
real reflectance spectra `S` (USGS splib07, `data.spectral_library`) resampled to the 59-band Chikusei
grid (about 399-698 nm), with smooth random abundance fields `A` (softmax of smoothed Gaussian noise)
and a gently varying illumination. The "external" RGB images are rendered from scenes with other
spatial statistics (field parcels, blobs, stripes) through bands 53 / 33 / 14 (R, G, B), the way the
paper's RGB key is made, so the unmixing encoder meets new spatial content in familiar colours.

    python -m data.demo_data --out experiments/demo/data

writes `hsi/{train,val,test}/scene_*.mat` (`Y` H x W x 59 float32, `RGB`, `wavelengths`, and the true
`Abu`), `rgb/<style>_*.png` and `demo_data.json` (what was made, with the seed).
"""
import argparse
import json
import os

import numpy as np
from scipy.ndimage import gaussian_filter

from ubf.core.color import hsi_to_rgb
from ubf.core.errors import UserError, cli_main
from ubf.core.previews import save_png, to_uint8
from ubf.data.bands import BAND_PRESETS, chikusei_wavelengths
from ubf.data.matio import write_mat
from ubf.data.spectral_library import TABLE_PATH, material_names, resample_spectra

DEFAULT_MATERIALS = ("green_vegetation", "dry_grass", "rangeland_soil", "seawater", "kaolinite_muscovite_clay")
EXTERNAL_STYLES = ("fields", "blobs", "stripes")
RGB_BANDS = BAND_PRESETS["chikusei-rgb"]  # [53, 33, 14]: R, G, B of the 59-band grid


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) Gaussian noise smoothed by `sigma` pixels (periodic), rescaled to zero mean, unit std."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (field - field.mean()) / max(field.std(), 1e-12)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def smooth_abundances(rng: np.random.Generator, size: int, k: int, sharpness: float = 3.0) -> np.ndarray:
    """(H, W, K) abundances on the simplex: softmax over K smooth random fields (scene statistics)."""
    sigma = size / 10.0
    logits = np.stack([smooth_field(rng, (size, size), sigma) for _ in range(k)], axis=-1)
    return softmax(sharpness * logits)


def _labels_to_abundances(labels: np.ndarray, mixtures: np.ndarray, blur: float) -> np.ndarray:
    """Regions (H, W) of integer labels, each with a mixture (K,), slightly blurred at the edges."""
    abundances = mixtures[labels]
    abundances = np.stack([gaussian_filter(abundances[..., j], blur, mode="nearest")
                           for j in range(abundances.shape[-1])], axis=-1)
    return abundances / abundances.sum(-1, keepdims=True)


def field_parcels(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """(H, W, K) patchwork of rectangular parcels (split recursively), one mixture per parcel."""
    labels = np.zeros((size, size), dtype=np.int64)
    boxes, count = [(0, size, 0, size)], 0
    while boxes:
        top, bottom, left, right = boxes.pop()
        tall = bottom - top >= right - left
        span = (top, bottom) if tall else (left, right)
        length = span[1] - span[0]
        if length > size // 5 and (length > size // 2 or rng.random() < 0.8):
            cut = int(rng.integers(span[0] + length // 4, span[1] - length // 4 + 1))
            boxes += [(top, cut, left, right), (cut, bottom, left, right)] if tall else \
                     [(top, bottom, left, cut), (top, bottom, cut, right)]
        else:
            labels[top:bottom, left:right] = count
            count += 1
    mixtures = rng.dirichlet(np.full(k, 0.3), size=count)
    return _labels_to_abundances(labels, mixtures, blur=0.8)


def blobs(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """(H, W, K) random ellipses, each dominated by one material, over a mixed background."""
    labels = np.zeros((size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    n_blobs = int(rng.integers(4, 9))
    for index in range(1, n_blobs + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 12, size / 4, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        labels[(u / rx) ** 2 + (v / ry) ** 2 <= 1.0] = index
    mixtures = rng.dirichlet(np.full(k, 0.2), size=n_blobs + 1)
    mixtures[0] = rng.dirichlet(np.full(k, 2.0))
    return _labels_to_abundances(labels, mixtures, blur=1.5)


def stripes(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """(H, W, K) parallel bands at a random angle and period, cycling through a few mixtures."""
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(size / 10, size / 4)
    position = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    position += 0.3 * smooth_field(rng, (size, size), size / 8)  # wavy rather than ruled
    n_mixtures = int(rng.integers(2, 5))
    labels = np.floor(position).astype(np.int64) % n_mixtures
    mixtures = rng.dirichlet(np.full(k, 0.3), size=n_mixtures)
    return _labels_to_abundances(labels, mixtures, blur=1.0)


STYLE_GENERATORS = {"fields": field_parcels, "blobs": blobs, "stripes": stripes}


def render_scene(rng: np.random.Generator, abundances: np.ndarray, spectra: np.ndarray,
                 illumination: float = 0.15, noise: float = 0.003) -> np.ndarray:
    """(H, W, K) abundances x (K, C) spectra -> (H, W, C) float32 reflectance with smooth shading and noise."""
    size = abundances.shape[0]
    shading = np.clip(1.0 + illumination * smooth_field(rng, abundances.shape[:2], size / 4), 0.6, 1.4)
    noise_cube = noise * rng.standard_normal(abundances.shape[:2] + (spectra.shape[1],))
    cube = (abundances @ spectra) * shading[..., None] + noise_cube
    return np.clip(cube, 0.0, None).astype(np.float32)


def _check_free(paths: list[str], overwrite: bool) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise UserError(f"{existing[0]}: exists already ({len(existing)} demo files would be replaced; "
                        "use --overwrite or another --out)")


def make_demo_dataset(out_dir: str, seed: int = 0, size: int = 64, n_train: int = 6, n_val: int = 2,
                      n_test: int = 2, n_external: int = 12, external_size: int | None = None,
                      materials=DEFAULT_MATERIALS, overwrite: bool = False) -> dict:
    """Write the demo's HSI scenes and external RGB images under `out_dir`; return their folders.

    Returned dict: `train`, `val`, `test` (folders of .mat scenes), `rgb` (folder of PNGs),
    `materials`, `wavelengths` and `manifest` (path of demo_data.json).
    """
    materials = list(materials)
    if len(materials) < 2:
        raise UserError("the demo data needs at least two materials")
    if size < 8 or (external_size is not None and external_size < 8):
        raise UserError("demo images must be at least 8 x 8 pixels")
    external_size = external_size or size
    wavelengths = chikusei_wavelengths()
    spectra = resample_spectra(wavelengths, materials)  # (K, C)
    k = len(materials)
    splits = {"train": n_train, "val": n_val, "test": n_test}
    folders = {split: os.path.join(out_dir, "hsi", split) for split in splits}
    folders["rgb"] = os.path.join(out_dir, "rgb")
    scene_paths = [os.path.join(folders[s], f"scene_{i:03d}.mat") for s, n in splits.items() for i in range(n)]
    styles = [EXTERNAL_STYLES[i % len(EXTERNAL_STYLES)] for i in range(n_external)]
    rgb_paths = [os.path.join(folders["rgb"], f"{style}_{i:03d}.png") for i, style in enumerate(styles)]
    manifest_path = os.path.join(out_dir, "demo_data.json")
    _check_free(scene_paths + rgb_paths + [manifest_path], overwrite)

    # one generator per image, derived from (seed, kind, index): adding images never changes the others
    for index, path in enumerate(scene_paths):
        rng = np.random.default_rng([seed, 0, index])
        abundances = smooth_abundances(rng, size, k)
        cube = render_scene(rng, abundances, spectra)
        rgb = hsi_to_rgb(cube, mode="bands", rgb_bands=RGB_BANDS)
        write_mat(path, {"Y": cube, "RGB": rgb, "wavelengths": wavelengths, "Abu": abundances.astype(np.float32)})
    for index, (path, style) in enumerate(zip(rgb_paths, styles)):
        rng = np.random.default_rng([seed, 1, index])
        abundances = STYLE_GENERATORS[style](rng, external_size, k)
        cube = render_scene(rng, abundances, spectra)
        save_png(to_uint8(hsi_to_rgb(cube, mode="bands", rgb_bands=RGB_BANDS)), path)

    manifest = {
        "what": "synthetic demo data: linear mixtures of real USGS splib07 reflectance spectra",
        "spectral_library": os.path.relpath(TABLE_PATH, os.path.dirname(os.path.dirname(TABLE_PATH))),
        "materials": materials, "seed": seed, "size": size, "external_size": external_size,
        "counts": {**splits, "external": n_external}, "rgb_bands": RGB_BANDS,
        "wavelengths_nm": [round(float(w), 3) for w in wavelengths],
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return {**folders, "materials": materials, "wavelengths": wavelengths, "manifest": manifest_path}


@cli_main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the built-in synthetic demo data (no download).")
    parser.add_argument("--out", required=True, help="folder to write hsi/{train,val,test}/ and rgb/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="HSI scene height and width (pixels)")
    parser.add_argument("--external-size", type=int, default=None, help="RGB image size (default: --size)")
    parser.add_argument("--train", type=int, default=6, help="number of training scenes")
    parser.add_argument("--val", type=int, default=2)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--external", type=int, default=12, help="number of external RGB images")
    parser.add_argument("--materials", nargs="+", default=list(DEFAULT_MATERIALS),
                        help=f"library materials to mix (known: {', '.join(material_names())})")
    parser.add_argument("--overwrite", action="store_true", help="replace demo files already there")
    args = parser.parse_args(argv)
    made = make_demo_dataset(args.out, seed=args.seed, size=args.size, n_train=args.train, n_val=args.val,
                             n_test=args.test, n_external=args.external, external_size=args.external_size,
                             materials=args.materials, overwrite=args.overwrite)
    print(f"demo HSI scenes: {made['train']} {made['val']} {made['test']}")
    print(f"demo RGB images: {made['rgb']}")


if __name__ == "__main__":
    main()
