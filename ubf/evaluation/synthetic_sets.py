"""Where the downstream crops come from: HSI pairs in memory, or HSIs rendered on the fly from abundance maps.

Both sources answer `len(source)` and `source.crop(index, size, rng)` -> (three bands (3, s, s), target
(C, s, s)) float32 tensors, a random window with a random rotation and flip; the random numbers are
drawn in the same order for both (top, left, turn, flip), so a source can replace another.

`AbundanceSet` keeps only the abundance maps (float32, and `Bright` when a file has it) and renders a
crop when it is drawn, exactly as `Synthesis.py` renders the whole file (`pipeline.synthesis`:
`load_endmembers`, `prepare_endmembers`, `synthesize` with or without the simplex projection), times
the per-pixel brightness. Each file is then normalised as a synthetic HSI file would be
(`data.hsi_dataset.prepare_pair`: the target min-max scaled by the file's rendered minimum and
maximum, the three input bands min-max scaled together by theirs); those extremes are computed once
at load, rendering each file a block of rows at a time.
"""
import os

import numpy as np
import torch

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.data.bands import select_bands
from ubf.data.hsi_dataset import list_mat_files
from ubf.data.limits import human_bytes
from ubf.data.matio import mat_keys, read_mat
from ubf.data.normalize import minmax
from ubf.pipeline.synthesis import check_abundance_file, load_endmembers, prepare_endmembers, synthesize

RENDER_ROWS = 64  # rows rendered at a time when measuring a file's extremes (bounds memory: 64 x W x C)


def draw_window(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, bool]:
    """(top, left, quarter turns, flip) of a random size x size window of a height x width image."""
    if height < size or width < size:
        raise UserError(f"a {height} x {width} image is smaller than the downstream crop {size}")
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return top, left, int(rng.integers(0, 4)), bool(rng.integers(0, 2))


def oriented(array: np.ndarray, turn: int, flip: bool) -> torch.Tensor:
    """(h, w, c) array -> (c, h, w) tensor, rotated by `turn` quarter turns and flipped left-right if asked."""
    t = torch.rot90(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), turn, dims=(1, 2))
    return t.flip(2) if flip else t


class PairSet:
    """(input (H, W, 3), target (H, W, C)) pairs held in memory (real files, HSI synthetic sets)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        self.pairs = pairs
        self.bands = pairs[0][1].shape[2] if pairs else 0

    def __len__(self) -> int:
        return len(self.pairs)

    def crop(self, index: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        model_input, target = self.pairs[index]
        top, left, turn, flip = draw_window(*target.shape[:2], size, rng)
        window = (slice(top, top + size), slice(left, left + size))
        return oriented(model_input[window], turn, flip), oriented(target[window], turn, flip)


class AbundanceSet:
    """Abundance maps rendered on the fly into normalised (three bands, HSI) crops."""

    def __init__(self, paths: list[str], abundances: list[np.ndarray], brightness: list[np.ndarray | None],
                 endmembers: np.ndarray, band_indices, simplex: bool, normalise_target: bool = True):
        self.paths, self.abundances, self.brightness = paths, abundances, brightness
        self.normalise_target = normalise_target  # False: `synthetic_norm="as_is"`, the target as rendered
        self.endmembers, self.band_indices, self.simplex = endmembers, list(band_indices), simplex
        self.bands = endmembers.shape[0]
        self.extremes = [self._extremes(i) for i in range(len(paths))]

    def __len__(self) -> int:
        return len(self.abundances)

    def render(self, index: int, rows=slice(None), cols=slice(None)) -> np.ndarray:
        """The raw synthetic HSI (h, w, C) of a window of file `index`, as Synthesis.py renders it."""
        _, hsi = synthesize(self.abundances[index][rows, cols], self.endmembers, self.simplex)
        bright = self.brightness[index]
        return hsi if bright is None else hsi * bright[rows, cols, None]

    def _extremes(self, index: int) -> tuple[float, float, float, float]:
        """(min, max) of the whole rendered file and (min, max) of its three input bands."""
        lo = hi = lo3 = hi3 = None
        for start in range(0, self.abundances[index].shape[0], RENDER_ROWS):
            hsi = self.render(index, slice(start, start + RENDER_ROWS))
            if not np.all(np.isfinite(hsi)):
                raise UserError(f"{self.paths[index]}: the rendered HSI comes out NaN/Inf")
            three = hsi[..., self.band_indices]
            values = (float(hsi.min()), float(hsi.max()), float(three.min()), float(three.max()))
            lo, hi = (values[0], values[1]) if lo is None else (min(lo, values[0]), max(hi, values[1]))
            lo3, hi3 = (values[2], values[3]) if lo3 is None else (min(lo3, values[2]), max(hi3, values[3]))
        return lo, hi, lo3, hi3

    def pair(self, index: int, rows=slice(None), cols=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(three bands (h, w, 3), target (h, w, C)) of a window, normalised by the whole file's extremes."""
        hsi = self.render(index, rows, cols)
        lo, hi, lo3, hi3 = self.extremes[index]
        target = minmax(hsi, lo, hi) if self.normalise_target else hsi.astype(np.float32)
        return minmax(select_bands(hsi, self.band_indices), lo3, hi3), target

    def crop(self, index: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, turn, flip = draw_window(*self.abundances[index].shape[:2], size, rng)
        model_input, target = self.pair(index, slice(top, top + size), slice(left, left + size))
        return oriented(model_input, turn, flip), oriented(target, turn, flip)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.abundances) + sum(b.nbytes for b in self.brightness if b is not None)


def read_brightness(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The optional per-pixel brightness `Bright` (H, W) of an abundance file, float32; None when absent."""
    if not path.lower().endswith(".mat") or "Bright" not in mat_keys(path):
        return None
    bright = np.asarray(read_mat(path, ["Bright"])["Bright"], dtype=np.float32)
    if bright.ndim == 3 and bright.shape[2] == 1:
        bright = bright[..., 0]
    if bright.shape != tuple(shape):
        raise UserError(f"{path}: 'Bright' has shape {bright.shape}, the abundances are {shape[0]} x {shape[1]}")
    if not np.all(np.isfinite(bright)):
        raise UserError(f"{path}: 'Bright' contains NaN/Inf values")
    return bright


def load_abundance_set(folder: str, ckpt: str, band_indices, endmember_mode: str = "minmax",
                       simplex: bool = False, synthetic_norm: str = "minmax") -> AbundanceSet:
    """Every abundance file of `folder` (`Abu`, or `SR` in [-1, 1] read as Synthesis.py reads it) with the
    endmembers of the unmixing checkpoint `ckpt` prepared as `Synthesis.py --endmembers MODE` does;
    `synthetic_norm="as_is"` leaves the targets as rendered (the inputs are min-max scaled either way)."""
    files = list_mat_files(folder)
    if not files:
        raise UserError(f"{folder}: no .mat abundance files found")
    raw, _, _ = load_endmembers(ckpt)
    endmembers = prepare_endmembers(raw, endmember_mode)
    bands, k = endmembers.shape
    if max(band_indices) >= bands:
        raise UserError(f"{ckpt}: {bands} bands, but the input bands are {list(band_indices)}")
    abundances, brightness = [], []
    for path in files:
        maps = np.ascontiguousarray(check_abundance_file(path, k, ckpt), dtype=np.float32)
        abundances.append(maps)
        brightness.append(read_brightness(path, maps.shape[:2]))
    source = AbundanceSet(files, abundances, brightness, endmembers, band_indices, simplex,
                          normalise_target=synthetic_norm == "minmax")
    with_bright = sum(b is not None for b in brightness)
    get_logger().info("abundance set %s: %d maps (%d with Bright), K = %d, %d bands, endmembers %s, %s; "
                      "%s of maps in memory", os.path.abspath(folder), len(files), with_bright, k, bands,
                      endmember_mode, "simplex" if simplex else "no simplex", human_bytes(source.nbytes()))
    return source
