"""Image-folder reading with Pillow: any size, greyscale, RGBA and 16-bit handled."""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ubf.core.errors import UserError
from ubf.core.fs import require_folder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


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
        raise UserError(f"{path}: unreadable image ({str(err).splitlines()[0][:100]})") from None
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: image contains NaN/Inf values")
    return np.ascontiguousarray(array, dtype=np.float32)
