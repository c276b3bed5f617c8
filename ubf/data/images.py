"""Image-folder reading with Pillow, and the (Geo)TIFFs Pillow cannot open: any size, greyscale, RGBA, 16-bit.

Scaling is by the type's range, the same for every format: 8-bit / 255, 16-bit / 65535 (PNG, TIFF,
GeoTIFF alike), other integers by their type's maximum, floats as stored. TIFFs that Pillow cannot
identify (16-bit 3- and 4-band GeoTIFFs as rasterio and GDAL write them, tiled or compressed ones) are
read through ubf/data/cubes.py (tifffile, or the built-in decoder); of 4 bands the 4th (alpha or NIR)
is dropped with a log line.
"""
import logging
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ubf.core.errors import UserError
from ubf.core.fs import require_folder
from ubf.data.cubes import open_raster
from ubf.data.tiff import tiff_layout

log = logging.getLogger("hsisyn")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")


def list_images(folder: str, recursive: bool = True) -> list[str]:
    """Sorted image paths under `folder`; a missing folder is a user error, an empty one returns []."""
    require_folder(folder, "image folder")
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scale_by_type(array: np.ndarray) -> np.ndarray:
    """float32 in the file's own scale divided by its type's maximum (floats as they are)."""
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    return array.astype(np.float32) / float(np.iinfo(array.dtype).max)


def _tiff_rgb(path: str) -> np.ndarray:
    """A TIFF Pillow cannot open, as (H, W, 3) scaled by its type: 1 band repeated, 3 kept, a 4th dropped."""
    source = open_raster(path)
    if source is None:
        raise UserError(f"{path}: unreadable image (not a TIFF)")
    array = np.asarray(source.array)
    bands = array.shape[2]
    if bands == 1:
        array = np.repeat(array, 3, axis=2)
    elif bands == 4:
        log.info("%s: 4-band image; the 4th band (alpha or NIR) is dropped, bands 1-3 are read as R, G, B", path)
        array = array[..., :3]
    elif bands != 3:
        raise UserError(f"{path}: a {bands}-band TIFF is not an RGB image (expected 1, 3 or 4 bands); "
                        "read it as a hyperspectral cube (--hsi)")
    return scale_by_type(array)


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) float32 in the file's own scale divided by its type's maximum (8-bit: /255, 16-bit: /65535).

    Greyscale is repeated to three channels; alpha is dropped. Channel order is R, G, B.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32) / (65535.0 if mode.startswith("I;16") else max(1.0, float(np.asarray(image).max())))
                array = np.repeat(array[..., None], 3, axis=2)
            elif mode == "F":
                array = np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=2)
            else:
                raw = np.asarray(image)
                if raw.dtype == np.uint16:
                    array = raw.astype(np.float32) / 65535.0
                else:
                    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                if array.ndim == 2:
                    array = np.repeat(array[..., None], 3, axis=2)
                array = array[..., :3]
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if not path.lower().endswith(_TIFF):
            raise UserError(f"{path}: unreadable image ({str(err).splitlines()[0][:100]})") from None
        array = _tiff_rgb(path)
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: image contains NaN/Inf values")
    return np.ascontiguousarray(array, dtype=np.float32)


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header (Pillow, or the TIFF's own tags)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
        return height, width
    except (UnidentifiedImageError, OSError) as err:
        if not path.lower().endswith(_TIFF):
            raise UserError(f"{path}: unreadable image ({str(err).splitlines()[0][:100]})") from None
    layout = tiff_layout(path)
    return layout.height, layout.width


def open_image(path: str) -> Image.Image:
    """A Pillow image of anything `read_rgb` reads; TIFFs Pillow cannot open become 8-bit RGB (x 255, rounded)."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        if not path.lower().endswith(_TIFF):
            raise UserError(f"{path}: unreadable image ({str(err).splitlines()[0][:100]})") from None
    array = read_rgb(path)
    return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8), "RGB")
