"""Small PNG pictures people look at: abundance maps side by side, image grids.

Charts (spectra, histograms, curves) are matplotlib's job elsewhere; this module only arranges
arrays as images and writes them with Pillow.
"""

import numpy as np
from PIL import Image

from ubf.core.fs import atomic_output


def to_uint8(image: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Clip to [lo, hi] and scale to 0..255."""
    scaled = (np.asarray(image, dtype=np.float32) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def abundance_strip(abundance: np.ndarray, gap: int = 2) -> np.ndarray:
    """(H, W, K) abundances in [0, 1] -> one (H, K*W + gaps) greyscale uint8 strip, one map per endmember."""
    height, width, k = abundance.shape
    strip = np.full((height, k * width + (k - 1) * gap), 255, dtype=np.uint8)
    for i in range(k):
        strip[:, i * (width + gap):i * (width + gap) + width] = to_uint8(abundance[..., i])
    return strip


def grid(images: list[np.ndarray], columns: int, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized uint8 images ((H, W) or (H, W, 3)) into one contact sheet."""
    if not images:
        raise ValueError("no images to tile")
    first = images[0]
    height, width = first.shape[:2]
    channels = () if first.ndim == 2 else (first.shape[2],)
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap) + channels,
                    fill, dtype=np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        sheet[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return sheet


def save_png(image: np.ndarray, path: str) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, creating the folder, atomically."""
    with atomic_output(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp)
