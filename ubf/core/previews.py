"""Small PNG pictures people look at: abundance maps side by side, image grids.

Charts (spectra, histograms, curves) are matplotlib's job elsewhere; this module only arranges
arrays as images and writes them with Pillow. `abundance_sheet` (and `abundance_preview` for one map
set) is what the stages write: the maps in grey (0 black, 1 white, the pixels exactly `to_uint8`),
a caption per row (the file name), the endmember index over each map and a colourbar.
"""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


FONT_SIZE = 11
MIN_MAP_SIZE = 48   # maps smaller than this are enlarged (nearest, an integer factor) so the labels fit
BAR_WIDTH = 10
MARGIN = 4
TITLE = "abundance per endmember (0 black, 1 white)"


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def colourbar(height: int, width: int = BAR_WIDTH) -> np.ndarray:
    """(height, width) uint8 ramp: 255 (abundance 1) in the top row down to 0 (abundance 0) in the bottom row."""
    return np.repeat(to_uint8(np.linspace(1.0, 0.0, height))[:, None], width, axis=1)


def abundance_sheet(rows: list[list[np.ndarray]], captions: list[str], title: str = TITLE,
                    gap: int = 2) -> np.ndarray:
    """Rows of (H, W, K) abundance maps in [0, 1] -> one captioned greyscale uint8 picture.

    Each row is a list of map sets (strips of K maps, side by side), under its caption (a file name);
    the endmember index 1..K stands over each map of the top row; a colourbar (1 at the top, 0 at the
    bottom) stands right of the first row. Maps below MIN_MAP_SIZE pixels are enlarged by an integer
    factor (nearest), so every map pixel is a block of equal `to_uint8` values.
    """
    if not rows or not any(rows):
        raise ValueError("no abundance maps to show")
    height, width, k = next(r for r in rows if r)[0].shape
    factor = max(1, math.ceil(MIN_MAP_SIZE / height))
    strips = [[abundance_strip(a, gap * factor).repeat(factor, 0).repeat(factor, 1) for a in row] for row in rows]
    bodies = [grid(row, columns=len(row), gap=4 * gap) if row else np.full((1, 1), 255, np.uint8) for row in strips]
    font = _font()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    line = _text_size(probe, "Ag0", font)[1] + 2 * MARGIN
    ticks = ("1", "0.5", "0")
    tick_width = max(_text_size(probe, t, font)[0] for t in ticks)
    body_width = max(b.shape[1] for b in bodies)
    texts = [title] + list(captions)
    text_width = max(_text_size(probe, t, font)[0] for t in texts if t) + 2 * MARGIN if any(texts) else 0
    bar_x = MARGIN + body_width + 3 * MARGIN
    canvas_width = max(bar_x + BAR_WIDTH + MARGIN + tick_width + MARGIN, text_width)
    top = (line if title else 0) + line  # the title line, then the endmember indices
    canvas_height = top + sum(line + b.shape[0] + MARGIN for b in bodies) + MARGIN
    canvas = Image.new("L", (canvas_width, canvas_height), 255)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, MARGIN), title, fill=0, font=font)
    map_width = width * factor
    for strip_index in range(len(strips[0])):  # endmember indices over each map of the top row
        x0 = MARGIN + strip_index * (strips[0][0].shape[1] + 4 * gap)
        for j in range(k):
            label = str(j + 1)
            centre = x0 + j * (map_width + gap * factor) + map_width // 2
            draw.text((centre - _text_size(draw, label, font)[0] // 2, top - line + MARGIN), label, fill=0, font=font)
    y = top
    for index, (body, caption) in enumerate(zip(bodies, list(captions) + [""] * len(bodies))):
        draw.text((MARGIN, y + MARGIN), caption, fill=0, font=font)
        y += line
        canvas.paste(Image.fromarray(body), (MARGIN, y))
        if index == 0:
            bar_height = body.shape[0]
            canvas.paste(Image.fromarray(colourbar(bar_height)), (bar_x, y))
            for tick, fraction in zip(ticks, (0.0, 0.5, 1.0)):
                ty = y + round(fraction * (bar_height - 1)) - _text_size(draw, tick, font)[1] // 2
                draw.text((bar_x + BAR_WIDTH + MARGIN, min(max(ty, y - MARGIN), y + bar_height - MARGIN)), tick,
                          fill=0, font=font)
        y += body.shape[0] + MARGIN
    return np.asarray(canvas)


def abundance_preview(abundance: np.ndarray, caption: str) -> np.ndarray:
    """One (H, W, K) abundance map set as a captioned picture (`abundance_sheet` with one row)."""
    return abundance_sheet([[abundance]], [caption])


def save_png(image: np.ndarray, path: str) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, creating the folder, atomically."""
    with atomic_output(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp)
