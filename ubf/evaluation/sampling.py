"""Read a folder of HSIs once, file by file, and keep seeded, capped samples of it.

A report on hundreds of 256 x 256 x C cubes must not hold them all. One pass over a set keeps:
- `pixels`: up to `pixel_cap` spectra (N, C), an equal share from every file, for F_p, precision and
  recall and the distribution plots;
- `patches`: up to `patch_cap` non-overlapping `patch_size` squares (M, C, p, p) for the feature network;
- `blocks`: up to `block_cap` `block_size` squares at random offsets (P, C, b, b), the D_b queries
  (when images are kept, blocks come from those images only, so the real set scored against itself
  finds every block);
- `images`: up to `image_cap` whole cubes (C, H, W), the D_b references (real side only);
- physical statistics of every file (all pixels, streamed).
Every file draws from its own generator seeded by (seed, file index), so samples do not depend on
which other files are present.

Real files are min-max normalised per file to [0, 1] (`data.normalize.minmax`, as the training crops
are); synthetic files are taken as they are.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.data.cubes import list_cube_files, read_cube
from ubf.data.matio import read_mat
from ubf.data.normalize import minmax
from ubf.evaluation.physical import PhysicalStats


@dataclass
class Caps:
    """How much of a set is kept; see the module docstring."""
    pixel_cap: int = 20000
    patch_cap: int = 4000
    patch_size: int = 8
    block_cap: int = 64
    block_size: int = 16
    image_cap: int = 32
    seed: int = 0


@dataclass
class SetSample:
    """What one pass over a set keeps (tensors on the CPU, float32)."""
    name: str
    files: list[str]
    bands: int
    wavelengths: np.ndarray | None
    pixels: torch.Tensor
    patches: torch.Tensor
    blocks: torch.Tensor
    images: list[torch.Tensor] = field(default_factory=list)
    physical: dict = field(default_factory=dict)
    n_pixels_total: int = 0


# a source yields (path or label, cube (H, W, C) float32, extras dict with optional "Abu", "End")
Source = Iterable[tuple[str, np.ndarray, dict]]


def hsi_files(folder: str, role: str) -> list[str]:
    """Sorted HSI files (.mat, ENVI .hdr, .tif) of a set; none is a user error naming the role (real / synthetic)."""
    files = list_cube_files(folder)
    if not files:
        raise UserError(f"{folder}: no HSI files (.mat, ENVI .hdr, .tif) for the {role} set")
    return files


def read_folder(files: list[str], normalise: bool, key: str | None = None) -> Source:
    """Yield (path, cube, extras) file by file; real sets are min-max normalised, synthetic ones not."""
    for path in files:
        cube, _ = read_cube(path, key)
        extras = read_mat(path, ["Abu", "End"]) if not normalise and path.lower().endswith(".mat") else {}
        yield path, (minmax(cube) if normalise else cube), extras


def first_wavelengths(path: str, key: str | None = None) -> tuple[int, np.ndarray | None]:
    cube, wavelengths = read_cube(path, key)
    return cube.shape[2], wavelengths


def _share(cap: int, n_files: int) -> int:
    return max(1, math.ceil(cap / max(n_files, 1))) if cap > 0 else 0


def _grid_patches(cube: np.ndarray, size: int, take: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `take` random cells of the non-overlapping size x size grid, (n, C, size, size)."""
    rows, cols = cube.shape[0] // size, cube.shape[1] // size
    if rows * cols == 0 or take == 0:
        return np.zeros((0, cube.shape[2], size, size), np.float32)
    cells = rng.choice(rows * cols, min(take, rows * cols), replace=False)
    out = [cube[r * size:(r + 1) * size, c * size:(c + 1) * size] for r, c in zip(cells // cols, cells % cols)]
    return np.stack(out).transpose(0, 3, 1, 2)


def _random_blocks(cube: np.ndarray, size: int, take: int, rng: np.random.Generator) -> np.ndarray:
    """`take` size x size squares at random offsets, (n, C, size, size)."""
    height, width = cube.shape[:2]
    if height < size or width < size or take == 0:
        return np.zeros((0, cube.shape[2], size, size), np.float32)
    tops = rng.integers(0, height - size + 1, take)
    lefts = rng.integers(0, width - size + 1, take)
    return np.stack([cube[t:t + size, l:l + size] for t, l in zip(tops, lefts)]).transpose(0, 3, 1, 2)


def collect(name: str, source: Source, n_files: int, caps: Caps, keep_images: bool,
            label_files: list[str] | None = None, progress: bool = True) -> SetSample:
    """One pass over `source` (n_files items) keeping the capped samples of `caps`."""
    pixel_share = _share(caps.pixel_cap, n_files)
    patch_share = _share(caps.patch_cap, n_files)
    chosen_images = set()
    if keep_images and caps.image_cap > 0:
        order = np.random.default_rng([caps.seed, 999]).permutation(n_files)
        chosen_images = set(order[:caps.image_cap].tolist())
    block_share = _share(caps.block_cap, len(chosen_images) if keep_images else n_files)
    pixels, patches, blocks, images, files = [], [], [], [], []
    physical = PhysicalStats()
    bands, total = None, 0
    for index, (path, cube, extras) in enumerate(tqdm(source, total=n_files, desc=f"read {name}",
                                                       disable=not progress, dynamic_ncols=True, leave=False)):
        if bands is None:
            bands = cube.shape[2]
        elif cube.shape[2] != bands:
            raise UserError(f"{path}: {cube.shape[2]} bands, but the first file of the {name} set has {bands}")
        rng = np.random.default_rng([caps.seed, index])
        flat = cube.reshape(-1, bands)
        total += flat.shape[0]
        pixels.append(flat[rng.choice(flat.shape[0], min(pixel_share, flat.shape[0]), replace=False)])
        patches.append(_grid_patches(cube, caps.patch_size, patch_share, rng))
        if index in chosen_images or not keep_images:
            blocks.append(_random_blocks(cube, caps.block_size, block_share, rng))
        if index in chosen_images:
            images.append(torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1), dtype=np.float32)))
        physical.add(cube, extras.get("Abu"), extras.get("End"))
        files.append(path)
    if bands is None:
        raise UserError(f"the {name} set is empty")
    if not blocks:
        blocks = [np.zeros((0, bands, caps.block_size, caps.block_size), np.float32)]
    as_tensor = lambda parts, cap: capped(torch.from_numpy(np.concatenate(parts).astype(np.float32)), cap, caps.seed)
    return SetSample(name=name, files=label_files or files, bands=bands, wavelengths=None,
                     pixels=as_tensor(pixels, caps.pixel_cap), patches=as_tensor(patches, caps.patch_cap),
                     blocks=as_tensor(blocks, caps.block_cap), images=images, physical=physical.result(),
                     n_pixels_total=total)


def capped(x: torch.Tensor, cap: int, seed: int) -> torch.Tensor:
    """At most `cap` rows of x, a seeded random subset when there are more."""
    if x.shape[0] <= cap:
        return x
    generator = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=generator)[:cap]]


def collect_folder(name: str, folder: str, normalise: bool, caps: Caps, keep_images: bool,
                   key: str | None = None, progress: bool = True) -> SetSample:
    """`collect` over the .mat files of a folder, with the wavelengths of its first file."""
    files = hsi_files(folder, name)
    sample = collect(name, read_folder(files, normalise, key), len(files), caps, keep_images, progress=progress)
    sample.wavelengths = first_wavelengths(files[0], key)[1]
    return sample


def cubes_of(arrays: list[np.ndarray], label: str, extras: Callable[[int], dict] | None = None) -> Source:
    """A source over in-memory (H, W, C) cubes (baselines, tests)."""
    for i, cube in enumerate(arrays):
        yield f"{label}[{i}]", cube, (extras(i) if extras else {})
