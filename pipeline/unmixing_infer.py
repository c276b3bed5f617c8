"""Run the trained encoder over external RGB (or HSI) collections and write abundance maps.

Large images go through `tile_infer`: overlapping tiles whose outputs are blended with weights that
fall linearly to the tile borders, so seams vanish and memory stays bounded by the tile size. The
blend is a convex combination of softmax outputs, so blended abundances still sum to one.
"""
import glob
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import load_checkpoint
from core.errors import UserError
from core.fs import ensure_folder, flat_name
from core.logs import get_logger
from core.previews import abundance_strip, save_png
from data.hsi_dataset import list_mat_files, prepare_pair
from data.images import list_images, read_rgb
from data.matio import read_hsi, write_mat
from data.normalize import minmax
from models.unmixing import UnmixingAutoencoder, build_unmixing_model
from pipeline.unmixing_color import match_moments


def load_unmixing_model(path: str, device: torch.device) -> tuple[UnmixingAutoencoder, dict]:
    """The autoencoder of an unmixing checkpoint, in eval mode on `device`, and the checkpoint dict."""
    state = load_checkpoint(path, "unmixing")
    model = build_unmixing_model(state["config"]["model"], state.get("in_channels", 3), state["out_bands"])
    model.load_state_dict(state["model"])
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


@torch.inference_mode()
def tile_infer(model: UnmixingAutoencoder, image: torch.Tensor, device: torch.device, tile: int = 256,
               overlap: int = 32, tile_batch: int = 1, channels_last: bool = False) -> torch.Tensor:
    """(3, H, W) input -> (K, H, W) abundances on the CPU, computed tile by tile.

    All tiles share one shape, so `tile_batch` of them can go through the network together;
    `channels_last` switches the memory format. Both are speed options (docs/benchmarks.md): they pay
    for narrow networks such as the demo's and not for the paper's.
    """
    _, height, width = image.shape

    def run(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return model.abundances(batch).float().cpu()

    if height <= tile and width <= tile:
        return run(image[None])[0]
    total = torch.zeros(model.num_endmembers, height, width)
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


def newest_unmixing_checkpoint(root: str = "experiments/unmixing") -> str:
    """`checkpoint/best.pth` (else `latest.pth`) of the most recently updated run under `root`."""
    found = []
    for run in glob.glob(os.path.join(root, "*")):
        for name in ("best.pth", "latest.pth"):
            path = os.path.join(run, "checkpoint", name)
            if os.path.isfile(path):
                found.append(path)
                break
    if os.path.isdir(os.path.join(root, "checkpoint")):  # `root` is itself a run folder
        found += [os.path.join(root, "checkpoint", n) for n in ("best.pth", "latest.pth")
                  if os.path.isfile(os.path.join(root, "checkpoint", n))][:1]
    if not found:
        raise UserError(f"no unmixing checkpoint under {os.path.join(root, '*', 'checkpoint')}; "
                        "run `python Unmixing.py train ...` first or pass --ckpt FILE")
    return max(found, key=os.path.getmtime)


def load_input(path: str, kind: str, band_indices, key: str | None, n_bands: int, moments=None):
    """(model input (H, W, 3), ground truth to store) for one RGB image or HSI file.

    `moments` (the training inputs' per-channel mean and std) moves an RGB image's colour statistics
    onto the training composites' before the encoder sees it (`infer.color_match: "moments"`).
    """
    if kind == "rgb":
        image = minmax(read_rgb(path))
        if moments is not None:
            return match_moments(image, tuple(moments)), image
        return image, image
    cube, _ = read_hsi(path, key)
    if cube.shape[2] != n_bands:
        raise UserError(f"{path}: {cube.shape[2]} bands, but this checkpoint was trained on {n_bands}")
    model_input, target = prepare_pair(cube, band_indices)
    return model_input, target


def collect_inputs(rgb_dirs, hsi_dirs) -> list[tuple[str, str, str]]:
    """(kind, path, root) for every image of every folder; an empty folder is an error."""
    items = []
    for kind, folders, lister in (("rgb", rgb_dirs, list_images), ("hsi", hsi_dirs, list_mat_files)):
        for folder in folders or []:
            found = lister(folder)
            if not found:
                raise UserError(f"{folder}: no {'images' if kind == 'rgb' else '.mat files'} found")
            items += [(kind, path, folder) for path in found]
    return items


def read_manifest(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {entry["input"]: entry for entry in map(json.loads, filter(str.strip, f))}


def infer_folders(ckpt: str, rgb_dirs, hsi_dirs, out_dir: str, device: torch.device, tile: int = 256,
                  overlap: int = 32, overwrite: bool = False, key: str | None = None,
                  save_reconstruction: bool = True, tile_batch: int = 1, channels_last: bool = False,
                  color_match: str = "none") -> dict:
    """Write `<out>/<name>.mat` (Abu, GT, Y) and `<out>/previews/<name>.png` for every input.

    Returns {"written": [...], "skipped": [...], "failed": [(path, message)]}. Unreadable inputs are
    reported and skipped; the others go on. Finished inputs listed in the manifest are skipped unless
    `overwrite`.
    """
    log = get_logger()
    model, state = load_unmixing_model(ckpt, device)
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
    items = collect_inputs(rgb_dirs, hsi_dirs)
    ensure_folder(out_dir)
    manifest_path = os.path.join(out_dir, "manifest.jsonl")
    done = read_manifest(manifest_path)
    endmembers = model.endmembers().detach().float().cpu()
    result = {"written": [], "skipped": [], "failed": []}
    log.info("inferring abundances of %d images with %s (K=%d, %d bands) into %s", len(items), ckpt,
             model.num_endmembers, model.out_bands, out_dir)
    for kind, path, root in tqdm(items, desc="infer", dynamic_ncols=True):
        name = flat_name(path, root)
        mat_path = os.path.join(out_dir, name + ".mat")
        absolute = os.path.abspath(path)
        if not overwrite and absolute in done and os.path.isfile(mat_path):
            result["skipped"].append(path)
            continue
        if not overwrite and os.path.exists(mat_path) and absolute not in done:
            result["failed"].append((path, f"{mat_path} exists and is not from this manifest (use --overwrite)"))
            continue
        try:
            model_input, ground_truth = load_input(path, kind, state["band_indices"], key, model.out_bands, moments)
            image = torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1)))
            abundances = tile_infer(model, image, device, tile, overlap, tile_batch, channels_last)
            abu = abundances.permute(1, 2, 0).numpy().astype(np.float32)
            variables = {"Abu": abu, "GT": ground_truth.astype(np.float32)}
            if save_reconstruction:
                variables["Y"] = np.clip(abu @ endmembers.numpy().T, 0.0, 1.0).astype(np.float32)
            write_mat(mat_path, variables)
            save_png(abundance_strip(abu), os.path.join(out_dir, "previews", name + ".png"))
        except UserError as err:
            log.error("%s", err)
            result["failed"].append((path, str(err)))
            continue
        entry = {"input": absolute, "output": os.path.abspath(mat_path), "kind": kind, "shape": list(abu.shape),
                 "checkpoint": os.path.abspath(ckpt)}
        with open(manifest_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        done[absolute] = entry
        result["written"].append(mat_path)
    return result
