"""Hyperspectral cubes in the formats the field opens: MATLAB .mat, ENVI (.hdr + .img) and multi-band TIFF.

`read_cube(path)` gives (H, W, C) float32 and the wavelengths (nm) when the file records them, for any
of the three; `list_cube_files(folder)` finds them (an ENVI cube is listed by its .hdr). Writers:
`write_envi` (BSQ float32 with wavelengths and band names in the header) and `write_tiff` (one
multi-band page, float32, via `tifffile`, which is optional: without it `--format tiff` says so). TIFFs
are read with `tifffile` when it is installed (compiled decoders, about 80x faster on LZW) and with the
built-in reader of ubf/data/tiff.py otherwise.
"""
import json
import os
import re

import numpy as np

from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder
from ubf.data.envi import open_envi
from ubf.data.matio import read_hsi, write_mat
from ubf.data.tiff import TIFF_EXTENSIONS, read_tiff_cube, read_tiff_pages

CUBE_EXTENSIONS = (".mat", ".hdr") + TIFF_EXTENSIONS
FORMATS = {"mat": ".mat", "envi": ".hdr", "tiff": ".tif"}


def list_cube_files(folder: str) -> list[str]:
    """Sorted .mat, ENVI .hdr and .tif/.tiff files under `folder` (recursive); a missing folder is an error."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files
                  if f.lower().endswith(CUBE_EXTENSIONS) and not f.startswith(".")]
    return sorted(found)


def _checked(path: str, cube: np.ndarray) -> np.ndarray:
    if cube.ndim == 2:
        cube = cube[..., None]
    if cube.ndim != 3:
        raise UserError(f"{path}: image of shape {cube.shape}, expected H x W x C")
    cube = np.asarray(cube, dtype=np.float32)
    if not np.all(np.isfinite(cube)):
        bad = int(cube.size - np.count_nonzero(np.isfinite(cube)))
        raise UserError(f"{path}: {bad} NaN/Inf values")
    return cube


def _tiff_with_tifffile(path: str):
    """(H, W, C) array and the metadata dict tifffile wrote (or None); None when tifffile is missing."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            metadata = tif.shaped_metadata[0] if tif.shaped_metadata else None
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise UserError(f"{path}: unreadable TIFF ({err})") from None
    if array.ndim == 3 and not axes.endswith("S"):  # bands first (planar samples or one band per page)
        array = array.transpose(1, 2, 0)
    return array, metadata


def _tiff_description(path: str) -> dict | None:
    """The JSON ImageDescription our writer (tifffile) stores, read with the built-in parser."""
    pages = read_tiff_pages(path)
    text = pages[0].get(270) if pages else None
    if text is None:
        return None
    try:
        value = json.loads(bytes(text).rstrip(b"\0").decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _wavelengths(values, n_bands: int) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64).ravel()
    return values if values.size == n_bands and np.all(np.isfinite(values)) else None


def read_tiff(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    found = _tiff_with_tifffile(path)
    if found is None:
        array, metadata = read_tiff_cube(path), _tiff_description(path)
    else:
        array, metadata = found
    cube = _checked(path, array)
    return cube, _wavelengths((metadata or {}).get("wavelengths"), cube.shape[2])


def read_envi(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    array, wavelengths, factor = open_envi(path)
    cube = np.array(array, dtype=np.float32)  # copy out of the memory map
    if factor:
        cube /= np.float32(factor)  # ENVI's reflectance scale factor: stored value = reflectance x factor
    return _checked(path, cube), wavelengths


def read_cube(path: str, key: str | None = None, expected_bands: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) float32 and wavelengths (C,) in nm or None, from .mat (`key` or Y/HSI/...), ENVI or TIFF.

    `expected_bands` (the band count the caller needs, if known) settles a .mat cube's axis order.
    """
    lower = path.lower()
    if lower.endswith(TIFF_EXTENSIONS):
        return read_tiff(path)
    if lower.endswith((".hdr", ".img")) or (not lower.endswith(".mat") and os.path.isfile(path + ".hdr")):
        return read_envi(path)
    return read_hsi(path, key, expected_bands)


def _atomic_write(path: str, write) -> None:
    ensure_folder(os.path.dirname(os.path.abspath(path)))
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"{path}: could not write ({err.strerror or err})") from None


def _check_new(paths: list[str], overwrite: bool) -> None:
    for path in paths:
        if not overwrite and os.path.exists(path):
            raise UserError(f"{path}: exists already (use --overwrite to replace it)")


def _clean_name(name: str) -> str:
    return re.sub(r"[{},\n]", " ", str(name)).strip()


def write_envi(path: str, cube: np.ndarray, wavelengths=None, band_names=None, description: str = "",
               overwrite: bool = True) -> tuple[str, str]:
    """Write (H, W, C) as ENVI BSQ float32: `<base>.img` and `<base>.hdr`; returns (header, data) paths."""
    base = path[:-4] if path.lower().endswith((".hdr", ".img")) else path
    header_path, data_path = base + ".hdr", base + ".img"
    _check_new([header_path, data_path], overwrite)
    cube = np.asarray(cube, dtype="<f4")
    lines, samples, bands = cube.shape
    fields = [("description", "{" + _clean_name(description or "synthetic HSI") + "}"),
              ("samples", samples), ("lines", lines), ("bands", bands), ("header offset", 0),
              ("file type", "ENVI Standard"), ("data type", 4), ("interleave", "bsq"), ("byte order", 0)]
    if band_names is not None:
        fields.append(("band names", "{" + ", ".join(_clean_name(n) for n in band_names) + "}"))
    if wavelengths is not None:
        fields += [("wavelength units", "Nanometers"),
                   ("wavelength", "{" + ", ".join(f"{float(w):.4f}" for w in wavelengths) + "}")]
    text = "ENVI\n" + "".join(f"{key} = {value}\n" for key, value in fields)
    _atomic_write(data_path, lambda tmp: np.ascontiguousarray(cube.transpose(2, 0, 1)).tofile(tmp))

    def write_header(tmp):
        with open(tmp, "w", encoding="ascii", errors="replace") as f:
            f.write(text)

    _atomic_write(header_path, write_header)
    return header_path, data_path


def write_tiff(path: str, cube: np.ndarray, wavelengths=None, band_names=None, overwrite: bool = True) -> str:
    """Write (H, W, C) as one float32 multi-band TIFF page (pixel-interleaved) via `tifffile`.

    Wavelengths and band names go into the JSON ImageDescription (read back by `read_cube`) and into
    GDAL's metadata tag, so GDAL/QGIS show each band's name and wavelength.
    """
    try:
        import tifffile
    except ImportError:
        raise UserError(f"{path}: --format tiff needs the tifffile package (pip install tifffile); "
                        "use --format envi or mat without it") from None
    _check_new([path], overwrite)
    cube = np.asarray(cube, dtype=np.float32)
    names = [str(n) for n in band_names] if band_names is not None else [f"band {i + 1}" for i in range(cube.shape[2])]
    metadata = {"band_names": names}
    if wavelengths is not None:
        metadata["wavelengths"] = [float(w) for w in wavelengths]
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    if wavelengths is not None:
        items += "".join(f'<Item name="wavelength" sample="{i}">{float(w):.4f}</Item>' for i, w in enumerate(wavelengths))
    gdal = f"<GDALMetadata>{items}</GDALMetadata>"
    _atomic_write(path, lambda tmp: tifffile.imwrite(tmp, cube, photometric="minisblack", planarconfig="contig",
                                                     metadata=metadata, extratags=[(42112, "s", 0, gdal, True)]))
    return path


def write_cube(path_base: str, fmt: str, variables: dict, wavelengths=None, band_names=None,
               overwrite: bool = True) -> str:
    """Write a synthetic HSI as `fmt` (mat: all `variables`; envi/tiff: `variables['HSI']`); returns the path."""
    if fmt == "mat":
        write_mat(path_base + ".mat", variables, overwrite=overwrite)
        return path_base + ".mat"
    if fmt == "envi":
        return write_envi(path_base + ".hdr", variables["HSI"], wavelengths, band_names, overwrite=overwrite)[0]
    if fmt == "tiff":
        return write_tiff(path_base + ".tif", variables["HSI"], wavelengths, band_names, overwrite=overwrite)
    raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
