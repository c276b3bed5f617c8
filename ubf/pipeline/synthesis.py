"""Stage 3: sampled abundances x learned endmembers -> synthetic HSIs, RGB previews and figures.

For every sampled abundance map `A` (H, W, K) and the unmixing decoder's endmember matrix `E` (C, K),
the synthetic cube is `HSI[h, w] = E @ A[h, w]`. Two choices change the spectra:

- endmembers: `minmax` (default, the reference) rescales the whole matrix to [0, 1] by its global
  minimum and maximum (stretches every spectrum by the same factor and shifts it); `raw` uses the
  decoder weights as trained (the scale of the min-max normalised training cubes).
- simplex: by default (the reference) the sampler's values are used as they are, `(SR + 1) / 2`;
  `simplex=True` projects each pixel onto the probability simplex (abundances >= 0, summing to 1),
  so every synthetic spectrum is a convex mixture of the endmembers.

Defaults are the `faithful` profile; `improved` (ubf/core/profiles.py) picks best.pth, `raw` and the simplex.
Outputs under `out_dir`: `HSI/<name>.mat` (`HSI`, `Abu`, `End` as (C, K, 1, 1) like the reference, or
(C, K) with `end_layout="matrix"`, `wavelengths` when known), `RGB/<name>.png`, `contact_sheet.png`,
`spectra.png` and `synthesis.json`. `layout="reference"` names the cubes as the reference does,
`0000.mat ...` in `os.listdir` order of the abundance folder, holding `HSI`, `Abu` and `End` only.

One run writes into an output folder at a time (`core.runlock`); hidden temporary files of a killed run
are removed when the next one starts. Every input is checked (readable, finite, K, its `class`) and every
synthetic cube is checked finite before it is written, so no NaN file is ever recorded as finished.
"""
import copy
import glob
import json
import os
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.color import default_rgb_bands, check_rgb_bands, hsi_to_rgb
from ubf.core.errors import UserError
from ubf.core.fs import atomic_output, flat_name, refuse_links_below, remove_stale_temp_files, require_folder
from ubf.core.logs import get_logger
from ubf.core.profiles import load_profiled_config
from ubf.core.previews import grid, save_png, to_uint8
from ubf.core.runlock import RunLock
from ubf.core.validate import FLOAT_POSITIVE, Number, check_value
from ubf.core.simplex import project_to_simplex
from ubf.core.version import provenance
from ubf.data.cubes import FORMATS, OUTPUT_FILES, provenance_description, write_cube
from ubf.data.hsi_dataset import list_mat_files
from ubf.data.matio import mat_keys, read_array, read_hsi, read_mat
from ubf.data.normalize import minmax
from ubf.pipeline.plots import plot_spectra, value_label
from ubf.pipeline.reference_checkpoints import load_unmixing_checkpoint
from ubf.pipeline.unmixing_infer import newest_unmixing_checkpoint
from ubf.pipeline.variability import apply_variability, measure_strength

DEFAULT_DDPM_ROOT = os.path.join("experiments", "ddpm")
DEFAULT_OUT = os.path.join("experiments", "Synthesis")
MAX_CONTACT_IMAGES = 64
ABUNDANCE_HINT = ("--abundances must hold sampled abundance files (the mat_results folder of "
                  "`python Diffusion.py -p val`) or abundance files of `python Unmixing.py infer`")


# Settings of `Synthesis.py` that a profile or a config file may set (defaults: the reference's behaviour).
SYNTHESIS_DEFAULTS = {
    "checkpoint": "latest",          # which file of the newest unmixing run: "latest" (final epoch) or "best"
    "endmembers": "minmax",          # "minmax" (the reference's global min-max) or "raw"
    "simplex": False,                # False: (SR + 1) / 2 as sampled (the reference); True: projected
    "end_layout": "conv",            # "conv": End stored (C, K, 1, 1) as the reference; "matrix": (C, K)
    "rgb": "bands",
    "rgb_bands": None,
    "layout": "project",             # "project": <sample name>.mat (+ class, wavelengths); "reference": 0000.mat ...
}


def load_synthesis_settings(path: str | None = None, profile: str | None = None,
                            overrides: dict | None = None) -> dict:
    """Defaults -> profile -> JSON file (optional) -> flags, checked; records the profile."""
    cfg = load_profiled_config(path, copy.deepcopy(SYNTHESIS_DEFAULTS), "synthesis", profile, overrides)
    choices = {"checkpoint": ("latest", "best"), "endmembers": ("raw", "minmax"), "end_layout": ("conv", "matrix"),
               "rgb": ("bands", "cie"), "simplex": (True, False), "layout": ("project", "reference")}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise UserError(f"{path or 'synthesis settings'}: '{key}' is {cfg[key]!r}, expected one of "
                            f"{', '.join(map(str, allowed))}")
    return cfg


@dataclass
class SynthesisOptions:
    endmembers: str = "minmax"       # "minmax" (the reference) or "raw"
    simplex: bool = False            # project sampled abundances onto the simplex (False: the reference)
    checkpoint: str = "latest"       # newest run's latest.pth (the reference) or best.pth, when no ckpt is given
    end_layout: str = "conv"         # End stored (C, K, 1, 1) as the reference, or "matrix": (C, K)
    profile: str = "faithful"        # recorded in synthesis.json (the settings above are what it resolved to)
    rgb: str = "bands"               # "bands" or "cie"
    rgb_bands: list | None = None    # three band indices (R, G, B); None: nearest 640/550/460 nm
    real: str | None = None          # folder of real HSIs for the spectra figure; None: the checkpoint's data.train
    overwrite: bool = False
    max_real_pixels: int = 20000
    seed: int = 0                    # which real pixels are drawn for the figure
    format: str = "mat"              # "mat", "mat73" (HDF5), "envi" (.hdr + .img) or "tiff" (multi-band GeoTIFF)
    sensor: str | None = None        # render into a target sensor's bands (ubf/data/sensors.py): preset or file
    variability: float | str | None = None  # ELMM scaling fields (ubf/pipeline/variability.py): strength or "auto"
    variability_scale: float = 16.0  # smoothness of the scaling fields, in pixels
    layout: str = "project"          # "reference": 0000.mat ... in os.listdir order with HSI, Abu, End only


def _newest(paths: list[str]) -> str | None:
    return max(paths, key=os.path.getmtime) if paths else None


def newest_abundance_dir(root: str = DEFAULT_DDPM_ROOT) -> str:
    """The most recently written `<root>/*/mat_results` folder that holds .mat files."""
    candidates = [d for d in glob.glob(os.path.join(root, "*", "mat_results"))
                  if os.path.isdir(d) and list_mat_files(d)]
    found = _newest(candidates)
    if found is None:
        raise UserError(f"no sampled abundances under {os.path.join(root, '*', 'mat_results')}; "
                        "run `python Diffusion.py -p val ...` first or pass --abundances DIR")
    return found


def load_endmembers(path: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(C, K) float32 decoder weight, wavelengths (C,) or None, and the checkpoint dict."""
    state = load_unmixing_checkpoint(path, for_model=False)  # ours, or the reference's {"epoch", "model"}
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state["model"].items()}
    if "decoder.weight" not in weights:
        raise UserError(f"{path}: no 'decoder.weight' in the model (not an unmixing autoencoder?)")
    weight = weights["decoder.weight"].detach().float().cpu()
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise UserError(f"{path}: decoder.weight has shape {tuple(weight.shape)}, expected (C, K, 1, 1)")
    endmembers = weight[:, :, 0, 0].numpy().astype(np.float32)
    if not np.all(np.isfinite(endmembers)):
        raise UserError(f"{path}: the endmembers (decoder weights) contain NaN/Inf values")
    wavelengths = state.get("wavelengths")
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
        if wavelengths.size != endmembers.shape[0]:
            get_logger().warning("%s: %d wavelengths for %d bands; ignoring them", path, wavelengths.size,
                                 endmembers.shape[0])
            wavelengths = None
    return endmembers, wavelengths, state


def prepare_endmembers(endmembers: np.ndarray, mode: str) -> np.ndarray:
    """`raw`: as trained; `minmax`: (E - min E) / (max E - min E) over the whole matrix (the reference's)."""
    if mode == "raw":
        return endmembers.astype(np.float32)
    if mode == "minmax":
        return minmax(endmembers)
    raise UserError(f"--endmembers {mode}: expected raw or minmax")


def read_sampled_abundances(path: str) -> np.ndarray:
    """(H, W, K) float32 abundances: the sampler's raw `SR` mapped from [-1, 1] to [0, 1], else `Abu`.

    `SR` comes first because it is what the sampler produced: the stored `Abu` may already be
    projected, and `--no-simplex` must be able to show the unprojected values.
    """
    key, array = read_array(path, ("SR", "Abu"), hint=ABUNDANCE_HINT)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise UserError(f"{path}: '{key}' has shape {array.shape}, expected H x W x K")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: '{key}' contains NaN/Inf values")
    return (array + 1.0) / 2.0 if key == "SR" else array


def sample_class(path: str) -> str | None:
    """The scene class a class-conditional sample was drawn for (its `class` variable), else None;
    the synthetic HSI keeps it so a labelled dataset stays labelled."""
    if not path.endswith(".mat") or "class" not in mat_keys(path):
        return None
    value = np.asarray(read_mat(path, ["class"]).get("class", np.array([]))).ravel()
    return str(value[0]).strip() if value.size and value.dtype.kind == "U" else None


def check_abundance_file(path: str, k: int, ckpt: str) -> np.ndarray:
    """The (H, W, K) abundances of one file, refused when unreadable, non-finite or of another K."""
    try:
        abundances = read_sampled_abundances(path)
    except (zlib.error, ValueError, OSError, EOFError) as err:  # a damaged file the reader did not name
        what = "zlib.error" if isinstance(err, zlib.error) else type(err).__name__
        reason = str(err).splitlines()[0][:100] if str(err) else ""
        raise UserError(f"{path}: not a readable .mat file ({what}: {reason})") from None
    if abundances.shape[2] != k:
        raise UserError(f"{path}: abundances have K = {abundances.shape[2]} endmembers, but {ckpt} has K = {k}")
    return abundances


def read_brightness(path: str, shape) -> np.ndarray | None:
    """The per-pixel brightness factor `Bright` (H, W) of an abundance file (stage 1's cone head, or a
    stage-2 sample of a model with brightness), or None when the file has none (brightness one)."""
    if not path.endswith(".mat") or "Bright" not in mat_keys(path):
        return None
    bright = np.asarray(read_mat(path, ["Bright"])["Bright"], dtype=np.float32)
    if bright.shape != tuple(shape):
        raise UserError(f"{path}: 'Bright' has shape {bright.shape}, the abundances {tuple(shape)}")
    if not np.all(np.isfinite(bright)) or bright.min() < 0:
        raise UserError(f"{path}: 'Bright' holds negative or NaN/Inf values")
    return bright


def synthesize(abundances: np.ndarray, endmembers: np.ndarray, simplex: bool,
               device: torch.device = torch.device("cpu"),
               brightness: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, K) abundances, (C, K) endmembers [, (H, W) brightness] -> (abundances used (H, W, K),
    HSI (H, W, C)), float32: HSI = brightness * E a (brightness one when None)."""
    a = torch.from_numpy(np.ascontiguousarray(abundances, dtype=np.float32)).to(device)
    e = torch.from_numpy(np.ascontiguousarray(endmembers, dtype=np.float32)).to(device)
    if simplex:
        a = project_to_simplex(a, dim=-1)
    hsi = a @ e.T
    if brightness is not None:
        hsi = hsi * torch.from_numpy(np.ascontiguousarray(brightness, dtype=np.float32)).to(device)[..., None]
    return a.cpu().numpy(), hsi.cpu().numpy()


# Above this std of log scale the "mean-one" fields are no longer near mean one on a finite map (64 x 64,
# scale 16: mean 0.94 at 1, 0.60 at 2, 0.19 at 3, 1.3e-3 at 5) and underflow to exactly 0 in float32 from
# about 14 (every factor at 20): `--variability 50` gave all-zero HSIs.
MAX_VARIABILITY = 3.0
STRENGTH_RULE = Number(low=0, high=MAX_VARIABILITY)


def variability_strength(options: SynthesisOptions, endmembers: np.ndarray, state: dict) -> float:
    """The strength of the ELMM scaling fields: 0 (off), the given number, or measured on the training HSIs."""
    if options.variability in (None, 0, "0", "off"):
        return 0.0
    if str(options.variability) != "auto":
        try:
            strength = float(options.variability)
        except (TypeError, ValueError):
            raise UserError(f"--variability {options.variability}: expected auto or a number in [0, "
                            f"{MAX_VARIABILITY:g}]") from None
        return check_value(strength, STRENGTH_RULE, f"--variability {options.variability}:")
    data = state.get("config", {}).get("data", {})
    folder = options.real or data.get("train")
    strength = measure_strength(folder, endmembers, None if options.real else data.get("key"), seed=options.seed)
    if strength > MAX_VARIABILITY:
        raise UserError(f"--variability auto: the training HSIs' log brightness spreads by {strength:.3g} around the "
                        f"endmembers, above the {MAX_VARIABILITY:g} the scaling fields can model; pass a number")
    return strength


def check_variability_scale(scale, maps: list[tuple[int, int]]) -> float:
    """The fields' smoothness: a finite number of pixels > 0, at most the largest side of the maps (a wider
    Gaussian only makes the wrapped fields constant, and costs time and memory in proportion: 1e9 allocated
    a kernel of 8e9 taps)."""
    scale = check_value(scale, FLOAT_POSITIVE, "--variability-scale")
    side = max((max(h, w) for h, w in maps), default=0)
    if side and scale > side:
        raise UserError(f"--variability-scale {scale:g}: larger than the abundance maps ({side} pixels at most); "
                        "choose a smoothness of at most their side")
    return scale


def render_endmembers(endmembers: np.ndarray, wavelengths, sensor_spec: str, ckpt: str):
    """(endmembers in the sensor's bands (B, K), band centres (B,), the (B, C) matrix, band names)."""
    from ubf.data.sensors import load_sensor, render_matrix
    if wavelengths is None:
        raise UserError(f"--sensor: {ckpt} records no wavelengths, so its bands cannot be matched to a sensor")
    sensor = load_sensor(sensor_spec, wavelengths)
    matrix, _ = render_matrix(sensor, wavelengths)
    get_logger().info("rendering into %s: %s", sensor.name, ", ".join(sensor.band_names))
    return (matrix @ endmembers).astype(np.float32), sensor.band_centers(), matrix, list(sensor.band_names), \
        sensor.band_fwhm()


def real_pixel_spectra(folder: str, n_bands: int, key: str | None, max_pixels: int, seed: int, render=None):
    """(N, C) pixels of real HSI files, each file min-max normalised as unmixing training does; None if unusable.

    `render`: a (C', C) sensor matrix that takes the real C-band pixels into the synthetic files' bands.
    """
    log = get_logger()
    if not folder or not os.path.isdir(folder):
        log.warning("real training spectra not shown: folder %s not found (pass --real DIR)", folder)
        return None
    files = list_mat_files(folder)[:50]
    rng = np.random.default_rng(seed)
    per_file = max(1, max_pixels // max(1, len(files)))
    pixels = []
    for path in files:
        native_bands = n_bands if render is None else render.shape[1]
        try:
            cube, _ = read_hsi(path, key, native_bands)
        except UserError as err:  # the figure is a side show: a bad real file must not undo the synthesis
            log.warning("%s; left out of the spectra figure", err)
            continue
        if cube.shape[2] != native_bands:
            log.warning("%s: %d bands, the endmembers have %d; left out of the spectra figure",
                        path, cube.shape[2], n_bands)
            continue
        flat = minmax(cube).reshape(-1, cube.shape[2])
        if render is not None:
            flat = flat @ render.T
        pixels.append(flat[rng.choice(len(flat), size=min(per_file, len(flat)), replace=False)])
    return np.concatenate(pixels) if pixels else None


def _check_targets(paths: list[str], overwrite: bool) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise UserError(f"{existing[0]}: exists already ({len(existing)} output files would be replaced); "
                        "use --overwrite or another --out")


PREVIEW_PERCENTILES = (0.5, 99.5)
PREVIEW_FILES = 16


def preview_indices(count: int) -> set[int]:
    """Up to PREVIEW_FILES evenly spread indices of `count` files: the cubes `preview_range` looks at."""
    return set(np.linspace(0, count - 1, min(PREVIEW_FILES, count)).round().astype(int).tolist())


def preview_range(abundances: list[np.ndarray], rgb_endmembers: np.ndarray, simplex: bool,
                  device=None) -> tuple[float, float]:
    """Black and white of the `bands` previews: the 0.5th and 99.5th percentiles of the three preview
    bands over the synthetic cubes of `abundances` (up to 16 of the set, `preview_indices`; one range
    for the set keeps the images comparable). The endmembers' own range, used before, bounds every
    mixture but is far wider than the data when the endmembers lie outside it (the improved stage 1's
    do), and made every preview grey."""
    values = [synthesize(a, rgb_endmembers, simplex, device or torch.device("cpu"))[1].ravel() for a in abundances]
    low, high = np.percentile(np.concatenate(values), PREVIEW_PERCENTILES)
    if not high > low:  # a constant set: the endmembers' extremes, which always hold it
        low, high = float(rgb_endmembers.min()), float(rgb_endmembers.max())
    return float(low), float(max(high, low + 1e-12))


def contact_sheet(previews: list[np.ndarray], min_size: int = 128) -> np.ndarray:
    """Tile (H, W, 3) uint8 previews, padded to a common size and enlarged (nearest) to >= min_size px."""
    height = max(p.shape[0] for p in previews)
    width = max(p.shape[1] for p in previews)
    factor = max(1, -(-min_size // max(height, width)))
    tiles = []
    for image in previews:
        padded = np.full((height, width, 3), 255, dtype=np.uint8)
        padded[:image.shape[0], :image.shape[1]] = image
        tiles.append(padded.repeat(factor, axis=0).repeat(factor, axis=1))
    columns = min(8, int(np.ceil(np.sqrt(len(tiles)))))
    return grid(tiles, columns, gap=2 * factor)


OPTION_RULES = {"seed": Number(integer=True, low=0), "max_real_pixels": Number(integer=True, low=1),
                "variability_scale": FLOAT_POSITIVE}


def check_options(options: SynthesisOptions) -> None:
    """Values that `--set` can give any type: numbers in range, choices among their names (one line each)."""
    for name, rule in OPTION_RULES.items():
        setattr(options, name, check_value(getattr(options, name), rule, f"--set {name}:"))
    for name, allowed in (("layout", ("project", "reference")), ("format", FORMATS), ("rgb", ("bands", "cie")),
                          ("endmembers", ("raw", "minmax")), ("end_layout", ("conv", "matrix"))):
        if getattr(options, name) not in allowed:
            raise UserError(f"--{name.replace('_', '-')} {getattr(options, name)!r}: expected one of "
                            f"{', '.join(allowed)}")
    if not isinstance(options.simplex, bool):
        raise UserError(f"--set simplex: expected true or false, got {options.simplex!r}")


def run_synthesis(abundance_dir: str | None, ckpt: str | None, out_dir: str = DEFAULT_OUT,
                  device: torch.device = torch.device("cpu"), options: SynthesisOptions | None = None) -> dict:
    """Synthesize one HSI per sampled abundance file; returns a summary (also written to synthesis.json).

    The output folder is locked for the run (a second writer is refused in one line)."""
    with RunLock(out_dir, "Synthesis.py"):
        refuse_links_below(out_dir, [os.path.join(out_dir, "HSI"), os.path.join(out_dir, "RGB")])
        for folder in (out_dir, os.path.join(out_dir, "HSI"), os.path.join(out_dir, "RGB")):
            for stale in remove_stale_temp_files(folder):
                get_logger().info("removed %s, left by an earlier run that was killed while writing", stale)
        return _run_synthesis(abundance_dir, ckpt, out_dir, device, options or SynthesisOptions())


def _run_synthesis(abundance_dir: str | None, ckpt: str | None, out_dir: str, device: torch.device,
                   options: SynthesisOptions) -> dict:
    log = get_logger()
    check_options(options)
    if options.rgb not in ("bands", "cie"):
        raise UserError(f"--rgb {options.rgb}: expected bands or cie")
    abundance_dir = abundance_dir or newest_abundance_dir()
    ckpt = ckpt or newest_unmixing_checkpoint(prefer=options.checkpoint)
    log.info("sampled abundances: %s", abundance_dir)
    log.info("unmixing checkpoint: %s", ckpt)
    require_folder(abundance_dir, "abundance folder")
    files = list_mat_files(abundance_dir)
    if not files:
        raise UserError(f"{abundance_dir}: no .mat abundance files found")

    raw_endmembers, wavelengths, state = load_endmembers(ckpt)
    strength = variability_strength(options, raw_endmembers, state)
    endmembers = prepare_endmembers(raw_endmembers, options.endmembers)
    sensor_matrix, sensor_bands, fwhm = None, None, None
    if options.sensor:  # rendering is linear: rendering the endmembers renders every synthetic pixel
        endmembers, wavelengths, sensor_matrix, sensor_bands, fwhm = render_endmembers(endmembers, wavelengths,
                                                                                        options.sensor, ckpt)
    n_bands, k = endmembers.shape
    rgb_bands = (check_rgb_bands(options.rgb_bands, n_bands) if options.rgb_bands is not None
                 else default_rgb_bands(n_bands, wavelengths))
    if options.rgb == "cie":
        if wavelengths is None:
            raise UserError(f"--rgb cie: {ckpt} records no wavelengths; use --rgb bands")
        value_range = (min(0.0, float(endmembers.min())), float(endmembers.max()))
        hsi_to_rgb(np.zeros((1, 1, n_bands)), wavelengths, "cie")  # coverage check before any work
    else:
        value_range = None  # from the synthetic cubes themselves, once the inputs are checked (below)

    if options.layout == "reference":  # the reference's HSSampledata lists os.listdir; outputs str(i).zfill(4)
        listed = [os.path.join(abundance_dir, n) for n in os.listdir(abundance_dir)]
        files = sorted(files, key=lambda p: listed.index(p) if p in listed else len(listed))
        stems = [f"{i:04d}" for i in range(len(files))]
    else:
        stems = [flat_name(p, abundance_dir) for p in files]
    hsi_dir, rgb_dir = os.path.join(out_dir, "HSI"), os.path.join(out_dir, "RGB")
    summary_path = os.path.join(out_dir, "synthesis.json")
    contact_path, spectra_path = os.path.join(out_dir, "contact_sheet.png"), os.path.join(out_dir, "spectra.png")
    if options.format not in FORMATS:
        raise UserError(f"--format {options.format}: expected one of {', '.join(FORMATS)}")
    band_names = sensor_bands or (None if wavelengths is None else [f"{w:.1f} nm" for w in wavelengths])
    extensions = OUTPUT_FILES[options.format]
    targets = [os.path.join(hsi_dir, s + e) for s in stems for e in extensions] + [os.path.join(rgb_dir, s + ".png") for s in stems]
    _check_targets(targets + [contact_path, spectra_path, summary_path], options.overwrite)

    # every input is checked before the first output is written: a bad file later on leaves nothing half done
    # (the cubes the preview range is taken from are kept from this pass: no second read)
    picks = preview_indices(len(files)) if value_range is None else set()
    picked, labels, sizes = [], [], []
    for index, path in enumerate(tqdm(files, desc="checking abundances", unit="file", leave=False)):
        abundances = check_abundance_file(path, k, ckpt)
        read_brightness(path, abundances.shape[:2])  # checked before anything is written
        labels.append(sample_class(path))
        sizes.append(abundances.shape[:2])
        if index in picks:
            picked.append(abundances)
    if strength:
        check_variability_scale(options.variability_scale, sizes)
    if value_range is None:
        value_range = preview_range(picked, endmembers[rgb_bands], options.simplex, device)
    total, total_sq, count, previews = np.zeros(n_bands), np.zeros(n_bands), 0, []
    variability_rng = np.random.default_rng([options.seed, 1])
    reference_layout = options.layout == "reference"
    for path, stem, label in zip(tqdm(files, desc="synthesis", unit="file"), stems, labels):
        abundances = check_abundance_file(path, k, ckpt)
        brightness = read_brightness(path, abundances.shape[:2])
        abundances, hsi = synthesize(abundances, endmembers, options.simplex, device, brightness)
        end = endmembers[:, :, None, None] if options.end_layout == "conv" else endmembers
        variables = {"HSI": hsi, "Abu": abundances, "End": end}
        if brightness is not None:
            variables["Bright"] = brightness
        if label and not reference_layout:
            variables["class"] = label
        if strength:
            hsi, factors = apply_variability(abundances, endmembers, strength, options.variability_scale,
                                             variability_rng)
            if brightness is not None:
                hsi = (hsi * brightness[..., None]).astype(np.float32)
            variables.update(HSI=hsi, Scale=factors)
        if not np.all(np.isfinite(hsi)):
            raise UserError(f"{path}: the synthetic HSI came out NaN/Inf; nothing written for it")
        if wavelengths is not None and not reference_layout:
            variables["wavelengths"] = wavelengths
        write_cube(os.path.join(hsi_dir, stem), options.format, variables, wavelengths, band_names,
                   overwrite=options.overwrite, raster_key="HSI", fwhm=fwhm,
                   description=provenance_description(f"synthetic HSI from sampled abundances {os.path.basename(path)} and the "
                                          f"endmembers of {os.path.basename(ckpt)}"))
        rgb = to_uint8(hsi_to_rgb(hsi, wavelengths, options.rgb, rgb_bands, value_range))
        save_png(rgb, os.path.join(rgb_dir, stem + ".png"))
        if len(previews) < MAX_CONTACT_IMAGES:
            previews.append(rgb)
        flat = hsi.reshape(-1, n_bands).astype(np.float64)
        total, total_sq, count = total + flat.sum(0), total_sq + (flat ** 2).sum(0), count + len(flat)

    save_png(contact_sheet(previews), contact_path)

    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    real_folder = options.real or state.get("config", {}).get("data", {}).get("train")
    real_key = None if options.real else state.get("config", {}).get("data", {}).get("key")
    real = real_pixel_spectra(real_folder, n_bands, real_key, options.max_real_pixels, options.seed, sensor_matrix)
    plot_spectra(spectra_path, endmembers, mean, std, wavelengths,
                 None if real is None else real.mean(0), None if real is None else real.std(0),
                 title=f"{len(files)} synthetic HSIs, endmembers {options.endmembers}, "
                       f"{'simplex' if options.simplex else 'no simplex'}",
                 labels=("synthetic", "real training, min-max per file"),
                 y_label=value_label("global_minmax" if options.endmembers == "minmax" else "per_file"))

    summary = {
        "abundances": os.path.abspath(abundance_dir), "checkpoint": os.path.abspath(ckpt),
        "out": os.path.abspath(out_dir), "files": len(files), "bands": n_bands, "endmembers": k,
        "wavelengths_known": wavelengths is not None, "rgb_bands": rgb_bands if options.rgb == "bands" else None,
        "real_spectra": None if real is None else os.path.abspath(real_folder),
        "options": asdict(options), "variability_strength": strength, "hsi_dir": os.path.abspath(hsi_dir), "rgb_dir": os.path.abspath(rgb_dir),
        "contact_sheet": os.path.abspath(contact_path), "spectra": os.path.abspath(spectra_path),
        "software": provenance(),
    }
    with atomic_output(summary_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    log.info("wrote %d synthetic HSIs to %s, previews to %s", len(files), hsi_dir, rgb_dir)
    log.info("contact sheet: %s; spectra: %s", contact_path, spectra_path)
    return summary
