"""Run the trained encoder over external RGB (or HSI) collections and write abundance maps.

By default each image goes through the encoder whole, as in the reference (and with no tile overlap
computed twice: 1.6x less work than 256 tiles with 32 overlap on a 600 x 600 image). With `tile` > 0,
or for images above 2048 x 2048 pixels, `tile_infer` runs overlapping tiles whose outputs are blended
with weights that fall linearly to the tile borders, so seams vanish and memory stays bounded by the
tile size. The blend is a convex combination of simplex outputs, so blended abundances still sum to one.

Interruptions: each output is written under a hidden temporary name, recorded in `manifest.jsonl`
and only then renamed into place (an ENVI output's `.img` before its `.hdr`), so whatever moment a run
is killed at (Ctrl-C, kill -9), every output in the folder is finished and listed, and a plain rerun
finishes the rest: files on disk are never redone, a recorded file that never got its name is redone,
stale temporary files are removed and a torn last manifest line is dropped. One run writes into a folder at a time (`core.runlock`;
the processes of one torchrun job share the folder).

Channel order: the network's input channel i sees the image colour matching the wavelength rank of
band `band_indices[i]` (longest: red, shortest: blue; `image_channel_order`). A network trained on
bands 53/33/14 gets R, G, B as Pillow reads them; one trained on 7/17/27 (the reference's rising
order) gets B, G, R, as the reference's `cv2.imread` feeds it.
"""
import glob
import hashlib
import json
import os
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.core.fs import TEMP_MARK, ensure_folder, flat_name, refuse_links_below, remove_stale_temp_files
from ubf.core.logs import get_logger
from ubf.core.runlock import RunLock
from ubf.core.signals import die_with_parent
from ubf.core.validate import INT_NONNEGATIVE, INT_POSITIVE, check_value
from ubf.core.version import provenance
from ubf.core.previews import abundance_preview, save_png
from ubf.data.cubes import (FORMATS, OUTPUT_FILES, list_cube_files, provenance_description, raster_georef,
                             read_scene, write_cube)
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.images import list_images, read_rgb
from ubf.data.matio import read_mat, write_mat
from ubf.data.normalize import minmax
from ubf.models.unmixing import UnmixingAutoencoder, build_unmixing_model
from ubf.pipeline.reference_checkpoints import load_unmixing_checkpoint
from ubf.pipeline.class_labels import scene_class
from ubf.pipeline.unmixing_color import match_moments


def load_unmixing_model(path: str, device: torch.device) -> tuple[UnmixingAutoencoder, dict]:
    """The autoencoder of an unmixing checkpoint, in eval mode on `device`, and the checkpoint dict."""
    state = load_unmixing_checkpoint(path)  # ours, or the reference's {"epoch", "model"}
    model = build_unmixing_model(state["config"]["model"], state.get("in_channels", 3), state["out_bands"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # the shapes were checked on loading: what is left is e.g. a dtype
        raise UserError(f"{path}: the weights cannot be loaded ({str(err).splitlines()[0][:120]})") from None
    return model.to(device).eval(), state


def blend_window(height: int, width: int, overlap: int) -> torch.Tensor:
    """(height, width) weights rising linearly over `overlap` pixels from each border (never zero)."""
    def ramp(n: int) -> torch.Tensor:
        position = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(position + 1, n - position)
        return (edge / max(overlap, 1)).clamp(max=1.0)
    return torch.outer(ramp(height), ramp(width))


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


WHOLE_IMAGE_MAX_PIXELS = 2048 * 2048  # tile 0 runs larger images in tiles of FALLBACK_TILE (memory)
FALLBACK_TILE = 1024


@torch.inference_mode()
def tile_infer(model: UnmixingAutoencoder, image: torch.Tensor, device: torch.device, tile: int = 0,
               overlap: int = 32, tile_batch: int = 1, channels_last: bool = False) -> torch.Tensor:
    """(3, H, W) input -> (K [+1], H, W) abundances (and the brightness factor last, for a model with
    brightness: `UnmixingAutoencoder.maps`) on the CPU: the whole image at once (`tile` 0, the
    reference's way; above WHOLE_IMAGE_MAX_PIXELS in tiles of FALLBACK_TILE), else tile by tile.

    All tiles share one shape, so `tile_batch` of them can go through the network together;
    `channels_last` switches the memory format. Both are speed options (docs/benchmarks.md): they pay
    for narrow networks such as the demo's and not for the paper's.
    """
    _, height, width = image.shape

    def run(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return model.maps(batch).float().cpu()

    if tile == 0:
        if height * width <= WHOLE_IMAGE_MAX_PIXELS:
            return run(image[None])[0]
        get_logger().info("a %d x %d image is larger than %d pixels: inferred in tiles of %d (set --tile to choose)",
                          height, width, WHOLE_IMAGE_MAX_PIXELS, FALLBACK_TILE)
        tile, overlap = FALLBACK_TILE, min(max(overlap, 1), FALLBACK_TILE // 4)
    if height <= tile and width <= tile:
        return run(image[None])[0]
    total = torch.zeros(model.map_channels, height, width)
    weight_sum = torch.zeros(height, width)
    corners = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    weights = blend_window(min(tile, height), min(tile, width), overlap)
    for first in range(0, len(corners), max(1, tile_batch)):
        group = corners[first:first + max(1, tile_batch)]
        patches = torch.stack([image[:, top:top + tile, left:left + tile] for top, left in group])
        for (top, left), abundances in zip(group, run(patches)):
            total[:, top:top + tile, left:left + tile] += abundances * weights
            weight_sum[top:top + tile, left:left + tile] += weights
    return total / weight_sum


def newest_unmixing_checkpoint(root: str = "experiments/unmixing", prefer: str = "latest") -> str:
    """`checkpoint/latest.pth` (the final epoch, as the reference; `prefer="best"`: best.pth), else the
    other one, of the most recently updated run under `root`."""
    if prefer not in ("latest", "best"):
        raise UserError(f"checkpoint choice {prefer!r}: expected latest or best")
    order = (f"{prefer}.pth", "best.pth" if prefer == "latest" else "latest.pth")
    found = []
    for run in glob.glob(os.path.join(root, "*")):
        for name in order:
            path = os.path.join(run, "checkpoint", name)
            if os.path.isfile(path):
                found.append(path)
                break
    if os.path.isdir(os.path.join(root, "checkpoint")):  # `root` is itself a run folder
        found += [os.path.join(root, "checkpoint", n) for n in order
                  if os.path.isfile(os.path.join(root, "checkpoint", n))][:1]
    if not found:
        raise UserError(f"no unmixing checkpoint under {os.path.join(root, '*', 'checkpoint')}; "
                        "run `python Unmixing.py train ...` first or pass --ckpt FILE")
    return max(found, key=os.path.getmtime)


def image_channel_order(band_indices) -> list[int]:
    """Which channel of an R, G, B image feeds each input channel of the network.

    Bands are ranked by index (= by wavelength): the longest of the three takes red, the middle green,
    the shortest blue. [53, 33, 14] -> [0, 1, 2] (R, G, B); [7, 17, 27] -> [2, 1, 0] (B, G, R: what the
    reference's OpenCV reading gives the network it trains on those bands). None (no bands known): as read.
    """
    if band_indices is None:
        return [0, 1, 2]
    bands = [int(b) for b in band_indices]
    longest_first = sorted(range(len(bands)), key=lambda i: -bands[i])  # stable: ties keep their order
    order = [0] * len(bands)
    for colour, channel in enumerate(longest_first):
        order[channel] = colour
    return order


def load_input(path: str, kind: str, band_indices, key: str | None, n_bands: int, moments=None,
               input_norm: str = "bands"):
    """(model input (H, W, 3), ground truth to store) for one RGB image or HSI file.

    An RGB image reaches the network in `image_channel_order(band_indices)`; its ground truth is the
    image as read (R, G, B). `moments` (the training inputs' per-channel mean and std) moves the
    image's colour statistics onto the training composites' before the encoder sees it
    (`infer.color_match: "moments"`). An HSI file gives its bands as training did (`input_norm`).
    """
    if kind == "rgb":
        image = minmax(read_rgb(path))
        model_input = np.ascontiguousarray(image[..., image_channel_order(band_indices)])
        if moments is not None:
            return match_moments(model_input, tuple(moments)), image
        return model_input, image
    scene = read_scene(path, key, n_bands)
    cube = scene.cube
    if cube.shape[2] != n_bands:
        raise UserError(f"{path}: {cube.shape[2]} bands, but this checkpoint was trained on {n_bands}")
    model_input, target = prepare_pair(cube, band_indices, input_norm)
    return model_input, target


class DecodedInputs(Dataset):
    """Decoded inputs for a DataLoader, so that workers read the next images while the network runs.

    Item i is (model input (3, H, W) tensor, ground truth (H, W, C)), or the UserError that reading
    it raised (returned, not raised, so one bad file does not stop the loader)."""

    def __init__(self, pending: list[tuple[str, str]], band_indices, key: str | None, n_bands: int, moments=None,
                 input_norm: str = "bands"):
        self.pending, self.band_indices, self.key, self.n_bands = pending, band_indices, key, n_bands
        self.moments, self.input_norm = moments, input_norm

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, index: int):
        kind, path = self.pending[index]
        try:
            model_input, ground_truth = load_input(path, kind, self.band_indices, self.key, self.n_bands,
                                                   self.moments, self.input_norm)
        except UserError as err:
            return err
        except (zlib.error, ValueError, OSError, EOFError) as err:  # a damaged file the reader did not name:
            what = "zlib.error" if isinstance(err, zlib.error) else type(err).__name__  # fails alone, not the batch
            reason = str(err).splitlines()[0][:100] if str(err) else ""
            return UserError(f"{path}: not readable ({what}: {reason})")
        return torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1))), ground_truth


def check_workers(workers: int, what: str = "--workers") -> int:
    """Loader processes this machine can start: at most 4 per CPU core (and 8 on any machine). Each is a
    whole Python process with torch loaded; thousands of them exhaust memory and process slots."""
    limit = max(8, 4 * (os.cpu_count() or 1))
    if workers > limit:
        raise UserError(f"{what} {workers}: more loader processes than this machine can run usefully "
                        f"({os.cpu_count()} CPU cores; at most {limit})")
    return workers


def decoded_inputs(pending: list[tuple[str, str]], band_indices, key, n_bands: int, workers: int, moments=None,
                   input_norm: str = "bands"):
    """Iterate `DecodedInputs` in order; `workers` processes decode ahead (0: in this process).

    The workers end with this process even when it is killed outright (`die_with_parent`)."""
    dataset = DecodedInputs(pending, band_indices, key, n_bands, moments, input_norm)
    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    return iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2,
                           collate_fn=as_decoded, worker_init_fn=die_with_parent))


def as_decoded(item):
    """The DataLoader's hook for unbatched items: keep them as they are (numpy stays numpy)."""
    return item


def process_share(items: list) -> list:
    """This process's share of the inputs under `torchrun` (every WORLD_SIZE-th, from RANK), else all."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    return items[int(os.environ.get("RANK", 0))::world] if world > 1 else items


ABUNDANCE_NODATA = -1.0  # raster outputs: abundances lie in [0, 1], so -1 marks the input's no-data pixels


def write_abundances(out_path: str, fmt: str, variables: dict, kind: str, path: str, ckpt: str, key, n_bands: int):
    """One input's outputs as `fmt`; a raster gets the input's georeferencing and no-data (same grid)."""
    base = out_path[:-len(FORMATS[fmt])]
    if fmt == "mat":
        write_mat(out_path, variables)
        return out_path
    if fmt == "mat73":
        return write_cube(base, fmt, variables)
    abu, nodata = variables["Abu"], None
    if kind == "hsi":  # read again for its grid and no-data mask (only for raster outputs)
        scene = read_scene(path, key, n_bands)
        georef = scene.georef
        if scene.valid is not None:
            abu = np.where(scene.valid[..., None], abu, np.float32(ABUNDANCE_NODATA))
            nodata = ABUNDANCE_NODATA
    else:
        georef = raster_georef(path)
    names = [f"endmember {k + 1}" for k in range(abu.shape[2])]
    if "Bright" in variables:  # the brightness factor as one more band of the raster
        bright = variables["Bright"][..., None] if nodata is None else np.where(
            scene.valid[..., None], variables["Bright"][..., None], np.float32(ABUNDANCE_NODATA))
        abu, names = np.concatenate([abu, bright.astype(np.float32)], axis=2), names + ["brightness"]
    return write_cube(base, fmt, {"Abu": abu}, band_names=names, raster_key="Abu", nodata=nodata, georef=georef,
                      description=provenance_description(f"abundances (K = {abu.shape[2]}) of {os.path.basename(path)} "
                                             f"by the unmixing checkpoint {os.path.basename(ckpt)}"))


def collect_inputs(rgb_dirs, hsi_dirs) -> list[tuple[str, str, str]]:
    """(kind, path, root) for every image of every folder; an empty folder is an error."""
    items = []
    for kind, folders, lister in (("rgb", rgb_dirs, list_images), ("hsi", hsi_dirs, list_cube_files)):
        for folder in folders or []:
            found = lister(folder)
            if not found:
                raise UserError(f"{folder}: no {'images' if kind == 'rgb' else 'HSI files (.mat, ENVI .hdr, .tif)'} found")
            items += [(kind, path, folder) for path in found]
    return items


def output_stems(items, done: dict, out_dir: str, layout: str = "project") -> dict[str, str]:
    """A distinct output stem per input path: its flat name, or that name plus a hash of the input's path.

    Inputs finished before keep the name the manifest gives them; the flat name goes to the first
    input that claims it, and a later input with the same flat name (another folder holding the same
    file name) gets `<name>__<8 hex digits of its absolute path>` so nothing is overwritten. A name is
    never hidden: leading dots (a class folder `.x`) become `_`, or stage 2 would skip the file.
    `layout="reference"`: the reference's names instead, 0000, 0001, ... in `os.listdir` order
    (`listdir_order`), numbering on after the largest number the manifest already holds.
    """
    taken = {os.path.splitext(os.path.basename(entry["output"]))[0]: source for source, entry in done.items()
             if os.path.dirname(os.path.abspath(entry["output"])) == os.path.abspath(out_dir)}
    stems = {}
    for _, path, root in items:
        absolute = os.path.abspath(path)
        entry = done.get(absolute)
        if entry is not None and taken.get(os.path.splitext(os.path.basename(entry["output"]))[0]) == absolute:
            stems[path] = os.path.splitext(os.path.basename(entry["output"]))[0]
    if layout == "reference":
        number = 1 + max((int(stem) for stem in taken if stem.isdigit()), default=-1)
        for _, path, root in listdir_order(items):
            if path not in stems:
                while f"{number:04d}" in taken:
                    number += 1
                stems[path] = f"{number:04d}"
                taken[stems[path]] = os.path.abspath(path)
        return stems
    for _, path, root in items:
        if path in stems:
            continue
        absolute = os.path.abspath(path)
        stem = flat_name(path, root)
        if stem.startswith("."):
            stem = "_" * (len(stem) - len(stem.lstrip("."))) + stem.lstrip(".")
        if taken.get(stem, absolute) != absolute:
            stem = f"{stem}__{hashlib.sha1(os.fsencode(absolute)).hexdigest()[:8]}"
        taken[stem] = absolute
        stems[path] = stem
    return stems


def listdir_order(items):
    """`items` (kind, path, root) in the order the reference numbers them: `os.listdir` order of each
    folder (its RGBDataset lists `os.listdir(image_dir)`), folders as `os.walk` meets them."""
    position = {}
    for root in dict.fromkeys(root for _, _, root in items):
        for folder, dirs, files in os.walk(root):
            for name in files:
                position.setdefault(os.path.join(folder, name), len(position))
    return sorted(items, key=lambda item: position.get(item[1], len(position)))


def check_tiling(tile: int, overlap: int, tile_batch: int = 1) -> None:
    """Tile settings that give a correct blend: tile 0 (whole image) or >= 1 with 0 <= overlap < tile."""
    check_value(tile, INT_NONNEGATIVE, "tile")
    check_value(overlap, INT_NONNEGATIVE, "overlap")
    check_value(tile_batch, INT_POSITIVE, "tile batch")
    if tile and overlap >= tile:
        raise UserError(f"overlap {overlap} must be smaller than tile {tile}")


def read_manifest(path: str) -> dict:
    """{input path: entry} of `manifest.jsonl`. A line that is not a whole JSON entry (what a crash or a
    full disk leaves mid-line) is skipped with a warning: its input was never published (outputs get
    their names only after their line is complete) and is simply done again."""
    if not os.path.isfile(path):
        return {}
    entries = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
                source, _ = str(entry["input"]), str(entry["output"])
            except (ValueError, KeyError, TypeError):
                get_logger().warning("%s: line %d is not a complete entry (left by a crash?); ignored, its input "
                                     "is done again", path, number)
                continue
            entries[source] = entry
    return entries


def append_entry(manifest_path: str, entry: dict) -> None:
    """Add one line to the manifest, after a newline if a torn line ends the file (the torn one stays ignored)."""
    line = json.dumps(entry) + "\n"
    with open(manifest_path, "ab") as f:
        if f.tell() > 0:
            with open(manifest_path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    line = "\n" + line
        f.write(line.encode("utf-8"))  # one write: processes appending at once never split a line


def publish(tmp: str, path: str) -> None:
    """Give a finished temporary output its name (after the manifest has its entry)."""
    os.replace(tmp, path)


def staged_path(path: str) -> str:
    """The hidden temporary name an output is written under until the manifest records it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TEMP_MARK}{os.getpid()}{os.path.splitext(name)[1]}")


def class_name_of(path: str) -> str:
    """`scene_class` as text that any file can store: bytes that are not UTF-8 become \\xNN escapes."""
    name = scene_class(path)
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def checked(variables: dict, path: str) -> dict:
    """Refuse, before anything is written, arrays that are NaN/Inf (a broken checkpoint or input)."""
    for key, value in variables.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            what = {"Abu": "the abundances", "Y": "the reconstruction Y", "GT": "the input"}.get(key, key)
            raise UserError(f"{path}: {what} came out NaN/Inf; nothing written (a broken checkpoint, e.g. NaN "
                            "weights?)")
    return variables


def output_files(path: str, fmt: str) -> list[str]:
    """The files one output of `fmt` consists of, `path` (the one that marks it finished) last: an ENVI
    output's `.img` before its `.hdr`, so a published header always has its data."""
    base, main = path[:-len(FORMATS[fmt])], FORMATS[fmt]
    return [base + suffix for suffix in OUTPUT_FILES[fmt] if suffix != main] + [path]


def restore_preview(mat_path: str, preview: str, fmt: str = "mat") -> None:
    """Draw a finished file's preview again when a kill came between publishing the output and its PNG."""
    if os.path.isfile(preview) or not os.path.isfile(mat_path):
        return
    try:
        abu = read_mat(mat_path, ["Abu"])["Abu"] if fmt in ("mat", "mat73") else read_scene(mat_path).cube
        save_png(abundance_preview(np.asarray(abu, dtype=np.float32), os.path.basename(mat_path)), preview)
    except UserError as err:
        get_logger().warning("%s; its preview is not drawn again", err)


LAYOUTS = ("project", "reference")


def infer_folders(ckpt: str, rgb_dirs, hsi_dirs, out_dir: str, device: torch.device, tile: int = 0,
                  overlap: int = 32, overwrite: bool = False, key: str | None = None,
                  save_reconstruction: bool = True, tile_batch: int = 1, channels_last: bool = True,
                  workers: int = 1, color_match: str = "none", fmt: str = "mat", layout: str = "project") -> dict:
    """Write `<out>/<name>.mat` (Abu, GT, Y, class) and `<out>/previews/<name>.png` for every input.

    `fmt`: "mat" (default, the reference's layout), "mat73" (the same keys in MATLAB v7.3 / HDF5), or a
    raster of the abundances `Abu` (H x W x K): "envi" (`<name>.hdr` + `.img`) or "tiff" (`<name>.tif`),
    carrying the georeferencing of a georeferenced input (same grid) and its no-data pixels.

    `class` (also in the manifest) is the name of the folder the image sits in: the scene class of
    collections organised as `<root>/<class>/<image>` (AID, NWPU-RESISC45). `color_match: "moments"`
    moves each RGB image's channel mean/std onto the training composites' (stored in the checkpoint).
    `layout="reference"` writes the reference's files: `0000.mat ...` numbered in `os.listdir` order,
    holding only `Abu`, `GT` (an RGB image's channels as OpenCV gives them: B, G, R) and `Y`.

    Returns {"written": [...], "skipped": [...], "failed": [(path, message)]}. Unreadable inputs are
    reported and skipped; the others go on. Finished inputs listed in the manifest are skipped unless
    `overwrite`. `workers` processes decode images ahead of the network. Under `torchrun` each
    process takes every WORLD_SIZE-th input and appends to the one shared manifest.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    check_tiling(tile, overlap, tile_batch)
    check_workers(workers)
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
    model, state = load_unmixing_model(ckpt, device)
    ensure_folder(out_dir)
    with RunLock(out_dir, "Unmixing.py infer"):
        return _infer_into(model, state, ckpt, rgb_dirs, hsi_dirs, out_dir, device, tile, overlap, overwrite, key,
                           save_reconstruction, tile_batch, channels_last, workers, color_match, fmt, layout)


def _infer_into(model, state, ckpt, rgb_dirs, hsi_dirs, out_dir, device, tile, overlap, overwrite, key,
                save_reconstruction, tile_batch, channels_last, workers, color_match, fmt, layout) -> dict:
    """`infer_folders` once the checkpoint is loaded and the output folder locked."""
    log = get_logger()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    moments = None
    if color_match == "moments":
        moments = state.get("input_moments")
        if moments is None:
            raise UserError(f"{ckpt}: no training colour statistics (input_moments) in this checkpoint; "
                            "retrain it or use --color-match none")
    elif color_match != "none":
        raise UserError(f"color_match must be 'none' or 'moments', got '{color_match}'")
    items = process_share(collect_inputs(rgb_dirs, hsi_dirs))
    refuse_links_below(out_dir, [os.path.join(out_dir, "previews")])
    for stale in remove_stale_temp_files(out_dir) + remove_stale_temp_files(os.path.join(out_dir, "previews")):
        log.info("removed %s, left by an earlier run that was killed while writing", stale)
    manifest_path = os.path.join(out_dir, "manifest.jsonl")
    done = read_manifest(manifest_path)
    stems = output_stems(items, done, out_dir, layout)
    endmembers = model.endmembers().detach().float().cpu()
    bands = state["band_indices"]
    input_norm = (state.get("config", {}).get("data", {}) or {}).get("input_norm", "bands")
    result = {"written": [], "skipped": [], "failed": []}
    log.info("inferring abundances of %d images with %s (K=%d, %d bands) into %s", len(items), ckpt,
             model.num_endmembers, model.out_bands, out_dir)
    if any(kind == "rgb" for kind, *_ in items) and image_channel_order(bands) != [0, 1, 2]:
        log.info("input bands %s: RGB images reach the network as %s (the colour matching each band's wavelength "
                 "rank; the reference's OpenCV reading gives B, G, R)", "/".join(map(str, bands)),
                 ", ".join("RGB"[c] for c in image_channel_order(bands)))
    pending = []
    for kind, path, root in items:
        name = stems[path]
        mat_path = os.path.join(out_dir, name + FORMATS[fmt])
        absolute = os.path.abspath(path)
        if not overwrite and absolute in done and os.path.isfile(mat_path):
            restore_preview(mat_path, os.path.join(out_dir, "previews", name + ".png"), fmt)
            result["skipped"].append(path)
            continue
        existing = [f for f in output_files(mat_path, fmt) if os.path.exists(f)]
        if not overwrite and absolute not in done and existing:
            result["failed"].append((path, f"{existing[-1]} exists and is not from this manifest (use --overwrite)"))
            continue
        pending.append((kind, path, name, mat_path, absolute))
    loaded = decoded_inputs([(kind, path) for kind, path, *_ in pending], bands, key, model.out_bands, workers,
                            moments, input_norm)
    for (kind, path, name, mat_path, absolute), decoded in tqdm(zip(pending, loaded), total=len(pending),
                                                                desc="infer", dynamic_ncols=True):
        preview = os.path.join(out_dir, "previews", name + ".png")
        # every file of the output under the hidden name of its main file (an ENVI pair shares one base)
        staged_main = staged_path(mat_path)
        finals = output_files(mat_path, fmt) + [preview]
        staged = output_files(staged_main, fmt) + [staged_path(preview)]
        try:
            if isinstance(decoded, UserError):
                raise decoded
            image, ground_truth = decoded
            maps = tile_infer(model, image, device, tile, overlap, tile_batch, channels_last)
            maps = maps.permute(1, 2, 0).numpy().astype(np.float32)
            abu, brightness = model.split_maps(maps, channel_axis=2)
            brightness = None if brightness is None else brightness[:, :, 0]
            if kind == "rgb" and layout == "reference":
                ground_truth = ground_truth[..., ::-1]  # cv2.imread's B, G, R, as the reference stores GT
            variables = {"Abu": abu, "GT": np.ascontiguousarray(ground_truth, dtype=np.float32)}
            if layout != "reference":
                variables["class"] = class_name_of(path)
            if brightness is not None:  # the per-pixel brightness factor (the cone head's sum): synthesis multiplies it
                variables["Bright"] = brightness
            if save_reconstruction:
                recon = abu @ endmembers.numpy().T
                if brightness is not None:
                    recon = recon * brightness[:, :, None]
                variables["Y"] = np.clip(recon, 0.0, 1.0).astype(np.float32)
            write_abundances(staged_main, fmt, checked(variables, path), kind, path, ckpt, key, model.out_bands)
            save_png(abundance_preview(abu, os.path.basename(mat_path)), staged[-1])
        except UserError as err:
            log.error("%s", err)
            result["failed"].append((path, str(err)))
            for tmp in staged:
                _remove_quietly(tmp)
            continue
        entry = {"input": absolute, "output": os.path.abspath(mat_path), "kind": kind, "shape": list(abu.shape),
                 "checkpoint": os.path.abspath(ckpt), "class": class_name_of(path), "software": provenance()}
        try:
            append_entry(manifest_path, entry)
        except OSError as err:  # the outputs so far are recorded; without a manifest nothing more can be
            for tmp in staged:
                _remove_quietly(tmp)
            raise UserError(f"{manifest_path}: could not write ({err.strerror or err}); {len(result['written'])} "
                            "files were written and recorded before this one") from None
        for tmp, final in zip(staged, finals):  # the data, then the file that marks it finished, then the preview
            publish(tmp, final)
        done[absolute] = entry
        result["written"].append(mat_path)
    return result


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
