"""Spatially disjoint train/val/test splits for dataset preparation.

The rule (documented in docs/datasets.md):

* **by region** (single scenes: Chikusei, the unmixing benchmarks). The scene is cut into a grid of
  `H // region` x `W // region` rectangles (edges shared out evenly, so every rectangle is at least
  `region` pixels on a side). A seeded shuffle deals the rectangles to the splits in proportion to
  the fractions (largest remainder, at least one each). Crops (`size`, `stride`) are taken only
  inside one rectangle, centred in it, so two splits never share a pixel.
* **by file** (collections of separate images: ARAD, Harvard, HSRS-SC, RGB folders). Whole files
  are dealt to the splits by the same seeded shuffle of the sorted file list.

Both are deterministic for a given seed and input (NumPy `default_rng`).
"""
import math
import zlib
from dataclasses import dataclass

import numpy as np

from ubf.core.errors import UserError


@dataclass
class Crop:
    """One planned output: a window of a source file, its split and class."""
    output: str   # path relative to the output folder, '/'-separated
    source: str   # absolute path of the source file
    source_rel: str  # source path relative to --src, as recorded in the manifest
    row: int
    col: int
    height: int
    width: int
    split: str
    label: str = ""


SPLIT_NAMES = ("train", "val", "test")
# The reference code's folder names (dataset/trains, dataset/evals, dataset/tests).
SPLIT_FOLDERS = {"train": "trains", "val": "evals", "test": "tests"}


def parse_split(text: str) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' (or 'test', meaning test=1; or ratios 'train=3,val=1') -> fractions summing
    to 1, in split order. Fractions that do not sum to 1 are refused."""
    fractions = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in SPLIT_NAMES:
            raise UserError(f"--split: unknown split '{name}' in '{text}' (known: {', '.join(SPLIT_NAMES)})")
        if name in fractions:
            raise UserError(f"--split: '{name}' given twice in '{text}'")
        try:
            fraction = float(value) if value else 1.0
        except ValueError:
            raise UserError(f"--split: '{part}' is not NAME=FRACTION") from None
        if not math.isfinite(fraction) or fraction < 0:
            raise UserError(f"--split: fraction of '{name}' must be >= 0, got {value}")
        if fraction > 0:
            fractions[name] = fraction
    total = sum(fractions.values())
    if total <= 0:
        raise UserError(f"--split: '{text}' names no split with a positive fraction")
    # whole numbers are ratios ("train=3,val=1"); fractions must add up, so a typo is not rescaled silently
    if not all(float(v).is_integer() for v in fractions.values()) and abs(total - 1.0) > 1e-6:
        raise UserError(f"--split: the fractions in '{text}' sum to {total:g}, not 1 "
                        "(give fractions that sum to 1, or whole-number ratios such as train=8,val=1,test=1)")
    return {name: fractions[name] / total for name in SPLIT_NAMES if name in fractions}


def allocate(count: int, fractions: dict[str, float], what: str = "items") -> dict[str, int]:
    """Share `count` items among the splits: proportional (largest remainder), at least one per split."""
    names = list(fractions)
    if count < len(names):
        raise UserError(f"{count} {what} cannot fill the {len(names)} splits {', '.join(names)}")
    ideal = np.array([fractions[n] * count for n in names])
    counts = np.maximum(1, np.floor(ideal)).astype(int)
    while counts.sum() > count:  # the minimum of one took items from elsewhere
        excess = np.where(counts > 1, counts - ideal, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    while counts.sum() < count:
        counts[int(np.argmax(ideal - counts))] += 1
    return dict(zip(names, counts.tolist()))


def assign(keys: list[str], fractions: dict[str, float], seed: int, what: str = "items",
           salt: str = "") -> dict[str, str]:
    """Deal `keys` to splits: a seeded shuffle of the sorted keys, cut in split order.

    `salt` (e.g. a file name) gives each scene its own shuffle under one seed.
    """
    ordered = sorted(keys)
    counts = allocate(len(ordered), fractions, what)
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    out, start = {}, 0
    for name, n in counts.items():
        for key in shuffled[start:start + n]:
            out[key] = name
        start += n
    return out


def region_grid(height: int, width: int, region: int) -> list[tuple[int, int, int, int]]:
    """Disjoint rectangles (r0, r1, c0, c1) covering the image, each at least `region` on a side.

    A side shorter than `region` gives one rectangle along it.
    """
    rows = np.linspace(0, height, max(1, height // region) + 1).round().astype(int)
    cols = np.linspace(0, width, max(1, width // region) + 1).round().astype(int)
    return [(int(rows[i]), int(rows[i + 1]), int(cols[j]), int(cols[j + 1]))
            for i in range(len(rows) - 1) for j in range(len(cols) - 1)]


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of crops of `size` every `stride` in `length`, the block of them centred."""
    if length < size:
        return []
    n = (length - size) // stride + 1
    margin = (length - size - (n - 1) * stride) // 2
    return [margin + k * stride for k in range(n)]


def crop_windows(r0: int, r1: int, c0: int, c1: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the size x size crops inside the rectangle [r0, r1) x [c0, c1)."""
    return [(r0 + r, c0 + c) for r in _starts(r1 - r0, size, stride) for c in _starts(c1 - c0, size, stride)]


def valid_windows(windows: list[tuple[int, int]], valid: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Keep the windows whose size x size block of the (H, W) boolean `valid` mask is all True."""
    bad = np.pad(np.cumsum(np.cumsum(~valid, axis=0), axis=1), ((1, 0), (1, 0)))
    keep = []
    for r, c in windows:
        count = bad[r + size, c + size] - bad[r, c + size] - bad[r + size, c] + bad[r, c]
        if count == 0:
            keep.append((r, c))
    return keep
