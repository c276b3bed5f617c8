"""RGB collections (AID, NWPU-RESISC45, Places, any image folder) -> size x size images in class folders.

The class of an image is the folder holding it, relative to --src (images directly in --src take the
folder's own name); the output keeps that folder: OUT/<class>/<name>.png. Modes:

* `resize` (default, the paper's "resize the images into 256 x 256"): the centred square of the
  image, resized (bicubic) to size x size; one output per image. An image that already is
  size x size in the output format is copied byte for byte.
* `crop`: the centred size x size window, no resampling; smaller images are skipped.
* `tiles`: every size x size window at --stride; smaller images are skipped.

Pixels stay 8-bit: Pillow converts greyscale, palette and RGBA to RGB; 16-bit and float images (and
16-bit 3-/4-band GeoTIFFs, which Pillow cannot open) go through `data.images.read_rgb` (divided by
their type's maximum) and are rounded to 8 bits.
"""
import logging
import os
import shutil

import numpy as np
from PIL import Image, UnidentifiedImageError
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.data.images import image_size, list_images, open_image, read_rgb
from ubf.data.prepare_hsi import output_stem
from ubf.data.splits import SPLIT_FOLDERS, Crop, assign, crop_windows

log = logging.getLogger("hsisyn")

MODES = ("resize", "crop", "tiles")
FORMATS = {"png": ("PNG", (".png",)), "jpg": ("JPEG", (".jpg", ".jpeg"))}
EIGHT_BIT_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr")


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header (Pillow, or the tags of a TIFF Pillow cannot open)."""
    return image_size(path)


def image_class(source_rel: str, src: str) -> str:
    """The folder holding the image relative to --src; the --src folder's name for top-level images."""
    folder = os.path.dirname(source_rel)
    return folder.replace(os.sep, "/") if folder else os.path.basename(os.path.abspath(src))


def plan_rgb(src: str, fractions: dict | None, seed: int, size: int, stride: int,
             mode: str = "resize", fmt: str = "png") -> list[Crop]:
    """Every output image, with the source window it comes from and its class (and split, if any)."""
    if mode not in MODES:
        raise UserError(f"--rgb-mode must be one of {', '.join(MODES)}, got '{mode}'")
    if not os.path.isdir(src):
        raise UserError(f"{src}: the rgb dataset needs a folder of images (jpg/jpeg/png/tif/tiff/bmp)")
    files = list_images(src, recursive=True)
    if not files:
        raise UserError(f"{src}: no jpg/jpeg/png/tif/tiff/bmp images found")
    planned, skipped = {}, 0  # relative path -> (path, [(row, col, side), ...])
    for path in tqdm(files, desc="scanning images", unit="image", disable=len(files) < 50):
        height, width = _image_size(path)
        if mode == "resize":
            side = min(height, width)
            windows = [((height - side) // 2, (width - side) // 2, side)]
        elif min(height, width) < size:
            windows = []
        elif mode == "crop":
            windows = [((height - size) // 2, (width - size) // 2, size)]
        else:
            windows = [(r, c, size) for r, c in crop_windows(0, height, 0, width, size, stride)]
        if windows:
            planned[os.path.relpath(path, src).replace(os.sep, "/")] = (path, windows)
        else:
            skipped += 1
    if skipped:
        log.warning("%d image(s) smaller than --size %d skipped (--rgb-mode %s)", skipped, size, mode)
    if not planned:
        raise UserError(f"{src}: no image is at least {size} x {size}; lower --size or use --rgb-mode resize")
    splits = assign(list(planned), fractions, seed, "images") if fractions else {}
    crops, seen = [], {}
    for rel, (path, windows) in sorted(planned.items()):
        label = image_class(rel, src)
        split = splits.get(rel, "")
        folder = (SPLIT_FOLDERS[split] + "/" if split else "") + label
        stem = output_stem(os.path.basename(rel))
        for r, c, side in windows:
            name = f"{stem}.{fmt}" if mode != "tiles" else f"{stem}_r{r:04d}_c{c:04d}.{fmt}"
            output = f"{folder}/{name}"
            if output in seen:
                raise UserError(f"{path} and {seen[output]} would both be written to {output}; rename one")
            seen[output] = path
            crops.append(Crop(output, os.path.abspath(path), rel, r, c, side, side, split, label))
    return crops


def _rgb8(path: str, image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB."""
    if image.mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    array = read_rgb(path)
    return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8), "RGB")


class RgbWriter:
    """Writes planned crops as PNG or JPEG (quality 95), atomically."""

    def __init__(self, mode: str, size: int, fmt: str):
        if fmt not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        self.mode, self.size, self.fmt = mode, size, fmt

    def write(self, crop: Crop, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
        pil_format, extensions = FORMATS[self.fmt]
        try:
            with open_image(crop.source) as image:
                untouched = (self.mode == "resize" and image.size == (self.size, self.size)
                             and image.mode == "RGB" and crop.source.lower().endswith(extensions))
                if untouched:
                    shutil.copyfile(crop.source, tmp)
                else:
                    image = _rgb8(crop.source, image)
                    box = (crop.col, crop.row, crop.col + crop.width, crop.row + crop.height)
                    if self.mode == "resize" and crop.height != self.size:
                        out = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
                    else:
                        out = image.crop(box)
                    out.save(tmp, pil_format, **({"quality": 95} if pil_format == "JPEG" else {}))
            os.replace(tmp, path)
        except (UnidentifiedImageError, OSError) as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise UserError(f"{crop.source}: could not convert to {path} ({str(err).splitlines()[0][:100]})") from None

    def close(self) -> None:
        pass
