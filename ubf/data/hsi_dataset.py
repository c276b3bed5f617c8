"""HSI crop dataset for training the unmixing network: (3-band input, full cube target) pairs.

Each file is min-max normalised to [0, 1] on its own (as the reference). The input is three bands of
the file, by default rescaled together to [0, 1] (`input_norm="bands"`, what the `RGB` key of the
authors' crops holds and what per-image min-max does to an RGB photo at inference time), or taken
from the normalised cube as they are (`input_norm="cube"`). Random crops and the 8 flips/rotations
are optional; their randomness comes from (seed, epoch, index), so a resumed run sees the same data.

Items are (input, target, valid): `valid` (1, h, w) is 1 where the pixel is data and 0 where the file
declares no-data (ENVI `data ignore value`, GeoTIFF GDAL_NODATA; see ubf/data/cubes.py, which fills
those pixels with band means so the min-max is that of the valid pixels); the training loss and the
validation/test metrics leave the zeros out.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ubf.core.errors import UserError
from ubf.core.fs import require_folder
from ubf.core.logs import get_logger
from ubf.data.bands import chikusei_wavelengths, resolve_bands, select_bands
from ubf.data.cubes import list_cube_files, read_scene
from ubf.data.normalize import minmax


def list_mat_files(folder: str) -> list[str]:
    """Sorted .mat files under `folder` (recursive); a missing folder is a user error."""
    require_folder(folder, "folder of .mat files")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".mat") and not f.startswith(".")]
    return sorted(found)


def dihedral(array: np.ndarray, index: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W, ...) array (index 0 is the identity)."""
    out = np.rot90(array, k=index % 4, axes=(0, 1))
    if index >= 4:
        out = out[:, ::-1]
    return out.copy()  # a fresh C-order array: positive strides even for 1-pixel sides (torch refuses negative ones)


def prepare_pair(cube: np.ndarray, band_indices, input_norm: str = "bands") -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) raw cube -> (input (H, W, 3), target (H, W, C)), both float32 in [0, 1]."""
    target = minmax(cube)
    if input_norm == "bands":
        model_input = minmax(select_bands(cube, band_indices))
    elif input_norm == "cube":
        model_input = select_bands(target, band_indices)
    else:
        raise UserError(f"data.input_norm must be 'bands' or 'cube', got '{input_norm}'")
    return model_input, target


class HSICropDataset(Dataset):
    """Items are (input (3, h, w), target (C, h, w)) float tensors."""

    def __init__(self, folder: str, bands=(53, 33, 14), key: str | None = None, crop_size: int | None = None,
                 augment: bool = False, samples_per_epoch: int | None = None, input_norm: str = "bands",
                 seed: int = 0, wavelengths=None, expected_bands: int | None = None, expected_from: str = "the run",
                 min_side: int = 1):
        self.folder = folder
        self.files = list_cube_files(folder)  # .mat, ENVI .hdr, .tif
        if not self.files:
            raise UserError(f"{folder}: no .mat HSI crops found")
        self.key, self.crop_size, self.augment = key, crop_size, augment
        self.input_norm, self.seed, self.epoch, self.min_side = input_norm, seed, 0, min_side
        self.samples_per_epoch = samples_per_epoch or len(self.files)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._valid: dict[str, np.ndarray | None] = {}
        # the band count to expect: given (a checkpoint's), else the config's wavelengths; it settles the axis order
        expected = expected_bands or wavelength_count(wavelengths)
        scene = read_scene(self.files[0], key, expected)
        first, self.wavelengths = scene.cube, scene.wavelengths
        self.n_bands = first.shape[2]
        if expected_bands is not None and self.n_bands != expected_bands:
            raise UserError(f"{self.files[0]}: {self.n_bands} bands, but {expected_from} has {expected_bands}")
        if self.wavelengths is None and wavelengths is not None:
            self.wavelengths = resolve_wavelengths(wavelengths, self.n_bands, self.files[0], strict=False)
        self.crop_size = fitted_crop_size(crop_size, first.shape[:2], self.files[0])
        self.band_indices = resolve_bands(bands, self.n_bands, self.wavelengths)
        self._cache[self.files[0]] = self._checked_pair(self.files[0], first)  # read once, not twice
        self._valid[self.files[0]] = scene.valid

    def load(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (input, target) of one file, cached."""
        if path not in self._cache:
            scene = read_scene(path, self.key, self.n_bands)
            self._cache[path] = self._checked_pair(path, scene.cube)
            self._valid[path] = scene.valid
        return self._cache[path]

    def valid_mask(self, path: str) -> np.ndarray | None:
        """(H, W) bool, False at the file's no-data pixels; None when every pixel is valid."""
        self.load(path)
        return self._valid[path]

    def _checked_pair(self, path: str, cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if min(cube.shape[:2]) < self.min_side:
            raise UserError(f"{path}: {cube.shape[0]} x {cube.shape[1]} pixels is too small to train on (at least "
                            f"{self.min_side} x {self.min_side}: the network's 3 x 3 convolutions need neighbours)")
        if cube.shape[2] != self.n_bands:
            raise UserError(f"{path}: {cube.shape[2]} bands, but {self.files[0]} has {self.n_bands}")
        if self.crop_size and min(cube.shape[:2]) < self.crop_size:
            raise UserError(f"{path}: {cube.shape[0]} x {cube.shape[1]} is smaller than the crop size {self.crop_size} "
                            f"(fitted to {self.files[0]}); set data.crop_size to at most {min(cube.shape[:2])}")
        return prepare_pair(cube, self.band_indices, self.input_norm)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        path = self.files[index % len(self.files)]
        model_input, target = self.load(path)
        valid = self._valid[path]
        valid = np.ones(target.shape[:2] + (1,), np.float32) if valid is None else valid[..., None].astype(np.float32)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.crop_size:
            height, width = target.shape[:2]
            top = int(rng.integers(0, height - self.crop_size + 1))
            left = int(rng.integers(0, width - self.crop_size + 1))
            window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
            model_input, target, valid = model_input[window], target[window], valid[window]
        if self.augment:
            which = int(rng.integers(0, 8))
            model_input, target, valid = dihedral(model_input, which), dihedral(target, which), dihedral(valid, which)
        return to_chw(model_input), to_chw(target), to_chw(valid)


def wavelength_count(spec) -> int | None:
    """How many bands a `data.wavelengths` spec describes (None: no spec or an unknown preset)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return {"chikusei-59": 59, "chikusei-128": 128}.get(spec)
    return int(np.asarray(spec).size) or None


def fitted_crop_size(crop_size: int | None, shape: tuple[int, int], where: str) -> int | None:
    """`crop_size`, shrunk with a note to the smaller side of a scene that is smaller than it.

    A crop as large as the scene is the whole scene (square scenes) or its largest square, so a small
    scene trains as it is instead of being refused.
    """
    if crop_size and min(shape) < crop_size:
        get_logger().warning("%s: %d x %d is smaller than data.crop_size %d; using %d x %d crops",
                             where, shape[0], shape[1], crop_size, min(shape), min(shape))
        return int(min(shape))
    return crop_size


def resolve_wavelengths(spec, n_bands: int, where: str, strict: bool = True) -> np.ndarray | None:
    """Wavelengths (nm) for files that store none: a list, or a preset name ("chikusei-59", "chikusei-128").

    With `strict=False` a count that does not match the file's bands is a warning and gives None: a
    config written for one sensor (the demo's "chikusei-59") still runs on another, and `--bands`
    (band indices) decides the input bands.
    """
    if isinstance(spec, str):
        presets = {"chikusei-59": chikusei_wavelengths(), "chikusei-128": chikusei_wavelengths(all_bands=True)}
        if spec not in presets:
            raise UserError(f"data.wavelengths: unknown preset '{spec}' (known: {', '.join(presets)})")
        values = presets[spec]
    else:
        values = np.asarray(spec, dtype=np.float64).ravel()
    if values.size != n_bands:
        message = f"data.wavelengths gives {values.size} wavelengths, but {where} has {n_bands} bands"
        if strict:
            raise UserError(message)
        get_logger().warning("%s: ignored (the band indices of data.bands / --bands decide)", message)
        return None
    return values


def to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy -> (C, H, W) float tensor."""
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), dtype=np.float32, order="C"))
