"""Readers and crop planning for the hyperspectral datasets of the paper.

Each dataset reader turns one downloaded file into a `Scene`: an (H, W, C) view read window by
window, with the band subset or spectral resampling the paper uses, the value scale made explicit,
and the wavelengths (nm) of the output bands. What a file holds is detected, not assumed: MATLAB v5
or v7.3 (HDF5, streamed through h5py), variable name, band axis first or last, integer or float
values; every detected layout is logged once.

| dataset | file | variable | output bands |
|---|---|---|---|
| chikusei | HyperspecVNIR_Chikusei_20140729.mat (or ENVI .hdr) | `chikusei` 2517 x 2335 x 128 | 59 (8-66) or 128 |
| hsrs-sc | class folders of 48-band TIFFs (or .mat) | 256 x 256 x 48, 382.5-1055.5 nm | 59, resampled onto Chikusei's |
| arad | ARAD_1K_*.mat (v7.3) | `cube` 482 x 512 x 31, `bands` | 31 (400-700 nm) |
| harvard | img*.mat (v5) | `ref` 1040 x 1392 x 31, `lbl` mask | 31 (420-720 nm) |
| unmixing-benchmark | samson.mat, jasperRidge2_R198.mat, ... | `Y` bands x pixels, `lines`, `cols` | all |
| scene | any ENVI, (Geo)TIFF or .mat scene, or a folder of them | the cube, its wavelengths | all good bands (bbl) |
"""
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.data.bands import CHIKUSEI_SUBSET, chikusei_wavelengths
from ubf.data.cubes import good_bands, invalid_pixels, list_cube_files, open_raster
from ubf.data.matio import (HSI_KEYS, LazyMatArray, find_key, is_v73, mat_keys, mat_shape, read_hsi, read_mat, read_wavelengths,
                         write_mat, write_mat73)
from ubf.data.splits import SPLIT_FOLDERS, Crop, assign, crop_windows, region_grid, valid_windows
from ubf.data.tiff import TIFF_EXTENSIONS, read_tiff_cube, read_tiff_pages

log = logging.getLogger("hsisyn")

CHIKUSEI_SHAPE = (2517, 2335, 128)
# Band centres (nm) of HSRS-SC's 48 bands, Table 3 of the dataset paper (Journal of Image and Graphics,
# DOI 10.11834/jig.200835); close to, but not exactly, an even 382.5-1055.5 nm spacing.
HSRS_SC_WAVELENGTHS = np.array([
    382.5, 396.9, 411.3, 425.7, 440.0, 454.4, 468.7, 483.1, 497.4, 511.8, 526.1, 540.4,
    554.7, 569.0, 583.3, 597.6, 611.9, 626.2, 640.5, 654.8, 669.1, 683.4, 697.7, 712.0,
    726.3, 740.6, 754.9, 769.1, 783.4, 797.7, 812.0, 826.3, 840.6, 854.9, 869.2, 883.5,
    897.8, 912.1, 926.4, 940.7, 955.1, 969.4, 983.7, 998.1, 1012.4, 1026.8, 1041.1, 1055.5])
ARAD_WAVELENGTHS = np.arange(400.0, 701.0, 10.0)
HARVARD_WAVELENGTHS = np.arange(420.0, 721.0, 10.0)


@dataclass
class Probe:
    """What planning needs from a file without reading its pixels."""
    height: int
    width: int
    valid: np.ndarray | None = None  # (H, W) bool, True where crops may go
    by_column: bool = False  # stored with columns as the slow axis: write crops column by column


# ---------------------------------------------------------------- value scale and spectra

def value_scale(spec, dtype, header_factor=None) -> tuple[float, str]:
    """Factor turning stored values into reflectance-like floats, and a sentence saying why."""
    if spec not in (None, "auto"):
        return float(spec), f"values multiplied by {float(spec):g} (--scale)"
    if header_factor:
        return 1.0 / header_factor, f"values divided by the header's reflectance scale factor {header_factor:g}"
    if np.issubdtype(np.dtype(dtype), np.integer):
        return 1e-4, (f"{np.dtype(dtype).name} values read as reflectance x 10000 and divided by 10000 "
                      "(--scale 1 keeps the stored numbers)")
    return 1.0, f"{np.dtype(dtype).name} values kept as stored"


def resample_bands(cube: np.ndarray, source_nm, target_nm) -> np.ndarray:
    """(..., C) spectra at `source_nm` -> (..., len(target_nm)) by linear interpolation (np.interp per pixel).

    Vectorised: each target band is a weighted sum of its two neighbouring source bands. Targets
    outside the source range are an error rather than an extrapolation.
    """
    source = np.asarray(source_nm, dtype=np.float64)
    target = np.asarray(target_nm, dtype=np.float64)
    if np.any(np.diff(source) <= 0):
        raise ValueError("source wavelengths must increase")
    if target.min() < source[0] - 1e-9 or target.max() > source[-1] + 1e-9:
        raise UserError(f"cannot resample {source[0]:.1f}-{source[-1]:.1f} nm onto "
                        f"{target.min():.1f}-{target.max():.1f} nm without extrapolating")
    right = np.clip(np.searchsorted(source, target, side="right"), 1, len(source) - 1)
    left = right - 1
    weight = ((target - source[left]) / (source[right] - source[left])).astype(cube.dtype)
    return cube[..., left] * (1 - weight) + cube[..., right] * weight


# ---------------------------------------------------------------- raw cubes: (H, W, C) windows

class ArrayCube:
    """An (H, W, C) array (in memory or np.memmap) read window by window."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.array(self.array[r0:r1, c0:c1])

    def close(self) -> None:
        self.array = None


def orient(path: str, key: str, shape: tuple, n_bands=None, expected_hw=None) -> tuple[int, int, bool, bool]:
    """(height, width, band_first, swap) of a 3-D variable whose band axis has length `n_bands`.

    Band-last is MATLAB's H x W x C. Band-first is read as C x W x H (what a row-major writer such as
    h5py from NumPy leaves), unless `expected_hw` says C x H x W.
    """
    if len(shape) != 3:
        raise UserError(f"{path}: variable '{key}' is {_shape_text(shape)}, expected H x W x {n_bands or 'C'}")
    if n_bands is None or shape[2] == n_bands:
        return shape[0], shape[1], False, False
    if shape[0] == n_bands:
        swap = not (expected_hw is not None and tuple(shape[1:]) == tuple(expected_hw))
        return (shape[2], shape[1], True, True) if swap else (shape[1], shape[2], True, False)
    raise UserError(f"{path}: variable '{key}' is {_shape_text(shape)}, "
                    f"expected H x W x {n_bands} (no axis of length {n_bands})")


class MatCube:
    """One variable of a .mat file as (H, W, C), streamed through `LazyMatArray` for v7.3 files.

    The band axis is found by its length (`n_bands`). Band-last (MATLAB's H x W x C) is read
    window by window. Band-first (C x W x H, what a row-major writer such as h5py from NumPy leaves)
    is read in stripes, one cached at a time, so crops sharing a stripe read it once.
    """

    def __init__(self, path: str, candidates, key=None, n_bands=None, expected_hw=None):
        self.lazy = LazyMatArray(path, key, candidates)
        shape = tuple(self.lazy.shape)
        self.key, self.dtype, self.stored_shape = self.lazy.key, self.lazy.dtype, shape
        if len(shape) != 3 or not np.issubdtype(self.dtype, np.number):
            raise UserError(f"{path}: variable '{self.key}' is {_shape_text(shape)} {self.dtype}, "
                            f"expected a numeric H x W x {n_bands or 'C'} cube")
        height, width, self.band_first, self.swap = orient(path, self.key, shape, n_bands, expected_hw)
        self.shape = (height, width, shape[0] if self.band_first else shape[2])
        self._stripe_key, self._stripe = None, None

    @property
    def layout(self) -> str:
        if not self.band_first:
            return "H x W x C"
        return "C x W x H (bands first, row-major writer)" if self.swap else "C x H x W (bands first)"

    def window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if not self.band_first:
            return np.asarray(self.lazy.window(slice(r0, r1), slice(c0, c1)))
        # the stripe spans the whole last stored axis; keep the last one for neighbouring crops
        key = (c0, c1) if self.swap else (r0, r1)
        if key != self._stripe_key:
            self._stripe = np.asarray(self.lazy.window(slice(None), slice(*key)))
            self._stripe_key = key
        if self.swap:  # stripe (C, w, H)
            return np.ascontiguousarray(self._stripe[:, :, r0:r1].transpose(2, 1, 0))
        return np.ascontiguousarray(self._stripe[:, :, c0:c1].transpose(1, 2, 0))  # stripe (C, h, W)

    def close(self) -> None:
        self.lazy.close()
        self._stripe = None


def _shape_text(shape) -> str:
    return " x ".join(str(s) for s in shape) if shape else "a scalar"


# ---------------------------------------------------------------- scenes

class Scene:
    """One source file as float32 (H, W, C_out) windows: scale applied, bands selected or resampled."""

    def __init__(self, path: str, cube, wavelengths, scale: float, bands=None, resample_to=None):
        self.path, self.cube, self.scale = path, cube, scale
        self.height, self.width = cube.shape[0], cube.shape[1]
        self.source_wavelengths = wavelengths
        self.bands, self.resample_to = bands, resample_to
        self.valid = None  # (H, W) bool where crops may go, when the file declares no-data
        if resample_to is not None:
            self.wavelengths = np.asarray(resample_to, dtype=np.float64)
        elif wavelengths is not None:
            self.wavelengths = np.asarray(wavelengths, dtype=np.float64)[bands if bands is not None else slice(None)]
        else:
            self.wavelengths = None

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        block = self.cube.window(row, row + height, col, col + width)
        if self.bands is not None:
            block = block[..., self.bands]
        block = block.astype(np.float64 if block.dtype == np.float64 else np.float32) * self.scale
        if self.resample_to is not None:
            block = resample_bands(block, self.source_wavelengths, self.resample_to)
        block = np.ascontiguousarray(block, dtype=np.float32)
        if not np.all(np.isfinite(block)):
            raise UserError(f"{self.path}: NaN/Inf values in rows {row}-{row + height}, cols {col}-{col + width}")
        return block

    def close(self) -> None:
        self.cube.close()


@dataclass
class HsiOptions:
    bands: str = "paper"            # chikusei: "paper" (59) or "all" (128)
    scale: str = "auto"             # "auto" or a number
    key: str | None = None          # variable name, when the file's is not the expected one
    wavelength_range: tuple | None = None  # (first, last) nm for files that store none


class HsiReader:
    """Base: lists a dataset's files, probes their size, opens them as Scenes."""
    name = ""
    extensions = (".mat",)
    default_split = "train=0.8,val=0.1,test=0.1"
    split_by = "file"

    def __init__(self, options: HsiOptions):
        self.options = options
        self._logged = False

    def sources(self, src: str) -> list[str]:
        """Sorted source files: `src` itself, or the matching files under the folder `src`."""
        if os.path.isfile(src):
            return [os.path.abspath(src)]
        if not os.path.isdir(src):
            raise UserError(f"{src}: no such file or folder")
        found = []
        for root, dirs, files in os.walk(src):
            dirs.sort()
            found += [os.path.abspath(os.path.join(root, f)) for f in files
                      if f.lower().endswith(self.extensions) and not f.startswith(".")]
        if not found:
            raise UserError(f"{src}: no {'/'.join(self.extensions)} files found for {self.name}")
        return sorted(found)

    def label(self, source_rel: str) -> str:
        """Class name: the folder holding the file, relative to --src ('' at the top)."""
        return os.path.dirname(source_rel).replace(os.sep, "/")

    def probe(self, path: str) -> Probe:
        scene = self.open(path)
        try:
            return Probe(scene.height, scene.width)
        finally:
            scene.close()

    def open(self, path: str) -> Scene:
        raise NotImplementedError

    def describe_once(self, path: str, text: str) -> None:
        """Log what the first file was found to hold."""
        if not self._logged:
            log.info("%s: %s", path, text)
            self._logged = True

    def _scale(self, dtype, header_factor=None) -> tuple[float, str]:
        return value_scale(self.options.scale, dtype, header_factor)

    def _mat_cube(self, path: str, candidates, n_bands=None, expected_hw=None) -> tuple[MatCube, str]:
        cube = MatCube(path, candidates, self.options.key, n_bands, expected_hw)
        version = "MATLAB v7.3 (HDF5, read window by window)" if is_v73(path) else "MATLAB v5 (read whole)"
        found = (f"{version}, variable '{cube.key}' {_shape_text(cube.stored_shape)} {cube.dtype.name}, "
                 f"layout {cube.layout}")
        return cube, found


class ChikuseiReader(HsiReader):
    name = "chikusei"
    extensions = (".mat", ".hdr")
    default_split = "train=0.8,val=0.1,test=0.1"
    split_by = "region"

    def sources(self, src: str) -> list[str]:
        files = super().sources(src)
        if len(files) > 1:
            raise UserError(f"{src}: holds {len(files)} .mat/.hdr files; give the Chikusei file itself as --src")
        return files

    def label(self, source_rel: str) -> str:
        return ""

    def _mat_layout(self, path: str) -> tuple[str, tuple, int]:
        """(variable, stored shape, band count: 128, or 59 when the file already holds the subset)."""
        key = find_key(path, mat_keys(path), ("chikusei",) + HSI_KEYS, self.options.key)
        shape = mat_shape(path, key)
        n_bands = 128
        if len(shape) == 3:  # the band axis is last as MATLAB writes it, or first; 128 or the 59 subset
            n_bands = next((n for n in (shape[2], shape[0]) if n in (128, 59)), 128)
        return key, shape, n_bands

    def probe(self, path: str) -> Probe:
        if path.lower().endswith(".mat"):
            key, shape, n_bands = self._mat_layout(path)
            height, width, band_first, swap = orient(path, key, shape, n_bands, CHIKUSEI_SHAPE[:2])
            return Probe(height, width, by_column=band_first and swap)
        return super().probe(path)

    def open(self, path: str) -> Scene:
        header_factor, wavelengths = None, None
        if path.lower().endswith(".mat"):
            _, _, n_bands = self._mat_layout(path)
            cube, found = self._mat_cube(path, ("chikusei",) + HSI_KEYS, n_bands, CHIKUSEI_SHAPE[:2])
        else:  # ENVI, or a TIFF (with or without an ENVI header beside it): the file's content decides
            source = open_raster(path)
            if source is None:
                raise UserError(f"{path}: neither a .mat, an ENVI header nor a TIFF")
            wavelengths, header_factor = source.info.wavelengths, source.factor
            cube = ArrayCube(source.array)
            found = source.text
            n_bands = cube.shape[2]
            if n_bands not in (128, 59):
                raise UserError(f"{path}: {n_bands} bands, expected Chikusei's 128")
        scale, scale_note = self._scale(cube.dtype, header_factor)
        if n_bands == 59:  # already the paper's subset
            if self.options.bands == "all":
                raise UserError(f"{path}: holds 59 bands (the paper's subset), so --bands all cannot apply")
            bands, wavelengths = None, (wavelengths if wavelengths is not None else chikusei_wavelengths())
            found += "; already the 59-band subset"
        else:
            bands = CHIKUSEI_SUBSET if self.options.bands == "paper" else None
            if wavelengths is None:
                wavelengths = chikusei_wavelengths(all_bands=True)
        self.describe_once(path, f"{found}; {scale_note}")
        return Scene(path, cube, wavelengths, scale, bands=bands)


class HsrsScReader(HsiReader):
    name = "hsrs-sc"
    extensions = TIFF_EXTENSIONS + (".mat",)
    default_split = "test"

    def probe(self, path: str) -> Probe:
        if path.lower().endswith(TIFF_EXTENSIONS):
            pages = read_tiff_pages(path)
            if not pages or 256 not in pages[0] or 257 not in pages[0]:
                raise UserError(f"{path}: TIFF page without image size")
            return Probe(int(pages[0][257][0]), int(pages[0][256][0]))
        return super().probe(path)

    def open(self, path: str) -> Scene:
        if self.options.bands != "paper":
            raise UserError("hsrs-sc is resampled onto the paper's 59 Chikusei bands; "
                            "its 382-1056 nm cannot cover all 128 (363-1018 nm): drop --bands all")
        if path.lower().endswith(TIFF_EXTENSIONS):
            array = read_tiff_cube(path)
            cube, found = ArrayCube(array), f"TIFF, {_shape_text(array.shape)} {array.dtype.name}"
            if array.shape[2] != 48:
                raise UserError(f"{path}: TIFF with {array.shape[2]} bands, expected HSRS-SC's 48")
        else:
            cube, found = self._mat_cube(path, HSI_KEYS, 48)
        scale, scale_note = self._scale(cube.dtype)
        self.describe_once(path, f"{found}; {scale_note}; resampled from 48 bands "
                                 f"({HSRS_SC_WAVELENGTHS[0]}-{HSRS_SC_WAVELENGTHS[-1]} nm) onto 59 Chikusei bands")
        return Scene(path, cube, HSRS_SC_WAVELENGTHS, scale, resample_to=chikusei_wavelengths())


class AradReader(HsiReader):
    name = "arad"

    def label(self, source_rel: str) -> str:
        return ""

    def open(self, path: str) -> Scene:
        contents = read_mat(path, ["bands"]) if "bands" in mat_keys(path) else {}
        wavelengths = read_wavelengths(contents, np.asarray(contents["bands"]).size) if contents else None
        n_bands = len(wavelengths) if wavelengths is not None else 31
        cube, found = self._mat_cube(path, ("cube",) + HSI_KEYS, n_bands)
        if wavelengths is None:
            if n_bands != len(ARAD_WAVELENGTHS):
                raise UserError(f"{path}: no 'bands' vector and {n_bands} bands (expected 31, 400-700 nm)")
            wavelengths, found = ARAD_WAVELENGTHS, found + "; no 'bands' vector, assuming 400-700 nm in 10 nm steps"
        scale, scale_note = self._scale(cube.dtype)
        self.describe_once(path, f"{found}; {scale_note}")
        return Scene(path, cube, wavelengths, scale)


class HarvardReader(HsiReader):
    name = "harvard"

    def probe(self, path: str) -> Probe:
        keys = mat_keys(path)
        key = find_key(path, keys, ("ref",) + HSI_KEYS, self.options.key)
        shape = mat_shape(path, key)
        height, width, _, _ = orient(path, key, shape, 31)
        if "lbl" not in keys:
            log.warning("%s: no 'lbl' mask; every pixel counts as valid", path)
            return Probe(height, width)
        mask = np.asarray(read_mat(path, ["lbl"])["lbl"])
        if mask.shape == (width, height) and height != width:
            mask = mask.T
        if mask.shape != (height, width):
            raise UserError(f"{path}: 'lbl' is {_shape_text(mask.shape)}, expected {height} x {width} like '{key}'")
        return Probe(height, width, mask != 0)

    def open(self, path: str) -> Scene:
        cube, found = self._mat_cube(path, ("ref",) + HSI_KEYS, 31)
        scale, scale_note = self._scale(cube.dtype)
        self.describe_once(path, f"{found}; {scale_note}; crops avoid pixels where 'lbl' is 0")
        return Scene(path, cube, HARVARD_WAVELENGTHS, scale)


class BenchmarkReader(HsiReader):
    name = "unmixing-benchmark"
    split_by = "region"

    def label(self, source_rel: str) -> str:
        return os.path.splitext(os.path.basename(source_rel))[0]

    def open(self, path: str) -> Scene:
        cube, wavelengths = read_hsi(path, self.options.key)  # reshapes `Y` bands x pixels
        found = f"{'MATLAB v7.3' if is_v73(path) else 'MATLAB v5'}, cube {_shape_text(cube.shape)}"
        if wavelengths is None and self.options.wavelength_range:
            first, last = self.options.wavelength_range
            wavelengths = np.linspace(first, last, cube.shape[2])
            found += f"; wavelengths {first:g}-{last:g} nm (--wavelength-range)"
        elif wavelengths is None:
            found += "; no wavelengths stored (give --wavelength-range FIRST LAST to record them)"
        elif self.options.wavelength_range:
            found += "; the file's own wavelengths win over --wavelength-range"
        self.describe_once(path, found + "; values kept as stored")
        return Scene(path, ArrayCube(cube), wavelengths, 1.0)


class SceneReader(HsiReader):
    """Any scene another tool wrote: ENVI (SPy, ENVI, GDAL), GeoTIFF (rasterio, GDAL) or .mat.

    Bad bands (ENVI `bbl`) are dropped with their wavelengths; crops avoid no-data pixels (ENVI `data
    ignore value`, GDAL_NODATA); wavelengths come from the file (GDAL band metadata, ENVI header,
    a `wavelengths` variable) or from --wavelength-range.
    """
    name = "scene"
    extensions = (".mat", ".hdr") + TIFF_EXTENSIONS
    default_split = "train=0.8,val=0.1,test=0.1"
    split_by = "region"

    def sources(self, src: str) -> list[str]:
        if os.path.isfile(src):
            return [os.path.abspath(src)]
        if not os.path.isdir(src):
            raise UserError(f"{src}: no such file or folder")
        found = [os.path.abspath(p) for p in list_cube_files(src)]  # each scene once (a TIFF and its .hdr)
        if not found:
            raise UserError(f"{src}: no .mat, ENVI .hdr or .tif scenes found")
        return found

    def __init__(self, options: HsiOptions):
        super().__init__(options)
        self._bands_logged = set()

    def probe(self, path: str) -> Probe:
        scene = self.open(path)
        try:
            return Probe(scene.height, scene.width, scene.valid)
        finally:
            scene.close()

    def _wavelengths(self, wavelengths, n_bands: int, found: str):
        if wavelengths is None and self.options.wavelength_range:
            first, last = self.options.wavelength_range
            return np.linspace(first, last, n_bands), found + f"; wavelengths {first:g}-{last:g} nm (--wavelength-range)"
        if wavelengths is None:
            return None, found + "; no wavelengths stored (give --wavelength-range FIRST LAST to record them)"
        return wavelengths, found

    def open(self, path: str) -> Scene:
        source = open_raster(path)
        if source is None:
            cube, wavelengths = read_hsi(path, self.options.key)
            found = f"{'MATLAB v7.3' if is_v73(path) else 'MATLAB v5'}, cube {_shape_text(cube.shape)} (read whole)"
            wavelengths, found = self._wavelengths(wavelengths, cube.shape[2], found)
            scale, note = self._scale(cube.dtype)
            self.describe_once(path, f"{found}; {note}")
            return Scene(path, ArrayCube(cube), wavelengths, scale)
        keep = None
        if source.info.bad_bands is not None and source.info.bad_bands.any():
            keep = good_bands(source) if path not in self._bands_logged else np.nonzero(~source.info.bad_bands)[0]
            self._bands_logged.add(path)
        invalid = invalid_pixels(source.array, source.info.nodata)
        found = source.text
        if invalid is not None and invalid.any():
            found += (f"; {int(invalid.sum())} of {invalid.size} pixels are no-data (value {source.info.nodata:g}): "
                      "crops avoid them")
        wavelengths, found = self._wavelengths(source.info.wavelengths, source.array.shape[2], found)
        scale, note = self._scale(source.array.dtype, source.factor)
        self.describe_once(path, f"{found}; {note}")
        scene = Scene(path, ArrayCube(source.array), wavelengths, scale, bands=keep)
        scene.valid = None if invalid is None or not invalid.any() else ~invalid
        return scene


READERS = {r.name: r for r in (ChikuseiReader, HsrsScReader, AradReader, HarvardReader, BenchmarkReader, SceneReader)}


class SceneCache:
    """Keeps the most recently opened scene open, so consecutive crops of one file open it once."""

    def __init__(self, reader: HsiReader):
        self.reader, self.path, self.scene = reader, None, None

    def get(self, path: str) -> Scene:
        if path != self.path:
            self.close()
            self.scene, self.path = self.reader.open(path), path
        return self.scene

    def close(self) -> None:
        if self.scene is not None:
            self.scene.close()
        self.scene, self.path = None, None


# ---------------------------------------------------------------- planning and writing

def output_stem(source_rel: str) -> str:
    """File-name stem from a source path relative to --src: folders joined by '_', odd characters replaced."""
    stem = os.path.splitext(source_rel.replace("\\", "/"))[0].replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def plan_hsi(reader: HsiReader, src: str, fractions: dict, split_by: str, seed: int,
             size: int, stride: int, region: int) -> list[Crop]:
    """Every crop to write, in file then row/column order, each with its split (see data.splits)."""
    files = reader.sources(src)
    root = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    windows, too_small = {}, []  # file -> [(split or None, [(row, col), ...]), ...]
    for path in tqdm(files, desc=f"scanning {reader.name}", unit="file", disable=len(files) < 2):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        probe = reader.probe(path)
        if probe.height < size or probe.width < size:
            too_small.append(f"{rel} ({probe.height} x {probe.width})")
            continue
        if split_by == "file":
            rects = {(0, probe.height, 0, probe.width): None}
        else:
            grid = {f"{i:06d}": rect for i, rect in enumerate(region_grid(probe.height, probe.width, region))}
            what = f"regions of {rel} ({probe.height} x {probe.width}, --region {region})"
            rects = {grid[k]: split for k, split in assign(list(grid), fractions, seed, what, salt=rel).items()}
        found = []
        for rect in sorted(rects):
            corners = crop_windows(*rect, size, stride)
            if probe.valid is not None:
                corners = valid_windows(corners, probe.valid, size)
            found.append((rects[rect], corners))
        if any(corners for _, corners in found):
            windows[rel] = (path, found, probe.by_column)
    if too_small:
        log.warning("%d file(s) smaller than --size %d skipped: %s", len(too_small), size, ", ".join(too_small[:5]))
    if not windows:
        raise UserError(f"{src}: no {size} x {size} crop fits ({', '.join(too_small[:3]) or 'all masked'}); "
                        "lower --size")
    if split_by == "file":  # whole files, among those that give crops
        file_split = assign(list(windows), fractions, seed, "files with crops")
    crops = []
    for rel, (path, found, _) in sorted(windows.items()):
        stem = output_stem(rel)
        for split, corners in found:
            split = split or file_split[rel]
            crops += [Crop(f"{SPLIT_FOLDERS[split]}/{stem}_r{r:04d}_c{c:04d}.mat", path, rel,
                           r, c, size, size, split, reader.label(rel)) for r, c in corners]
    by_column = {path for path, _, flag in windows.values() if flag}  # band-first files are read in column stripes
    return sorted(crops, key=lambda c: (c.source,) + ((c.col, c.row) if c.source in by_column else (c.row, c.col)))


class HsiWriter:
    """Writes planned crops as .mat files (v5, or v7.3 with fmt "mat73") with `Y` (h, w, C) float32 and
    `wavelengths` (C,) in nm."""

    def __init__(self, reader: HsiReader, fmt: str = "mat"):
        self.cache = SceneCache(reader)
        self._range_logged = False
        self.write_file = write_mat if fmt == "mat" else write_mat73

    def write(self, crop: Crop, path: str) -> None:
        scene = self.cache.get(crop.source)
        y = scene.read(crop.row, crop.col, crop.height, crop.width)
        if not self._range_logged:
            log.info("first crop %s: values %.4g to %.4g", crop.output, float(y.min()), float(y.max()))
            self._range_logged = True
        variables = {"Y": y}
        if scene.wavelengths is not None:
            variables["wavelengths"] = np.asarray(scene.wavelengths, dtype=np.float64)
        self.write_file(path, variables, overwrite=True)

    def close(self) -> None:
        self.cache.close()
