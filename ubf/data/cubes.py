"""Hyperspectral cubes in the formats the field opens: MATLAB .mat, ENVI (.hdr + data) and (Geo)TIFF.

`read_scene(path)` gives a `CubeData`: (H, W, C) float32, wavelengths (nm), FWHM, band names, the
no-data mask and the georeferencing, for any of the three; `read_cube(path)` the cube and wavelengths
only. What a file is comes from its content: a TIFF is read as a TIFF whatever sits beside it (a
same-name `.hdr` adds wavelengths, bad bands and no-data the TIFF lacks), and a `.hdr` whose data file
is a TIFF is read as that TIFF. `list_cube_files(folder)` lists each scene once.

Applied on reading, each with a log line: ENVI `bbl` / GDAL-ENVI `bbl` (bad bands dropped, with their
wavelengths); no-data (ENVI `data ignore value`, GeoTIFF GDAL_NODATA tag 42113): a pixel where any band
holds it is invalid; invalid pixels are filled with each band's mean over the valid ones (so the
per-file min-max is that of the valid pixels) and reported in `CubeData.valid`, which training and
its metrics use to leave them out. TIFF pixels are decoded by `tifffile` when it is installed and
can (LZW needs imagecodecs); otherwise, or when it raises, by the built-in decoder of ubf/data/tiff.py.

Writers live in ubf/data/writers.py (re-exported here).
"""
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ubf.core.errors import UserError
from ubf.data.envi import EnviHeader, envi_band_info, header_path_for, memmap_envi, parse_envi, read_envi_header, \
    reflectance_factor
from ubf.data.limits import check_declared_size
from ubf.data.matio import read_hsi
from ubf.data.raster_meta import BandInfo, Georef, band_info_from_gdal, georef_from_envi, georef_from_tiff, \
    parse_gdal_metadata, parse_nodata
from ubf.data.tiff import TIFF_EXTENSIONS, is_tiff, read_tiff_cube, read_tiff_tags, tag_text, tiff_layout
from ubf.data.writers import FORMATS, OUTPUT_FILES, provenance_description, write_cube, write_envi, write_tiff  # noqa: F401

log = logging.getLogger("hsisyn")

CUBE_EXTENSIONS = (".mat", ".hdr") + TIFF_EXTENSIONS


@dataclass
class CubeData:
    """One scene as read: `cube` (H, W, C) float32 and what the file says about it."""
    path: str
    cube: np.ndarray
    wavelengths: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    band_names: list | None = None
    valid: np.ndarray | None = None      # (H, W) bool, None when every pixel is valid
    nodata: float | None = None          # the declared no-data value, if any
    georef: Georef | None = None
    kind: str = "mat"                    # "mat", "envi" or "tiff"
    dropped_bands: list = field(default_factory=list)

    @property
    def invalid_count(self) -> int:
        return 0 if self.valid is None else int(self.valid.size - np.count_nonzero(self.valid))


def _tiff_data_of_header(header: str) -> str | None:
    """The TIFF an ENVI header describes (its data file is a TIFF), else None."""
    try:
        info = parse_envi(header)
    except UserError:
        return None
    return info.data if info.data_is_tiff else None


def list_cube_files(folder: str) -> list[str]:
    """Sorted .mat, ENVI .hdr and .tif/.tiff files under `folder` (recursive), each scene once: a .hdr
    that describes a TIFF listed beside it is left out. A missing folder is an error."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files
                  if f.lower().endswith(CUBE_EXTENSIONS) and not f.startswith(".")]
    listed = set(found)
    kept = [p for p in found if not (p.lower().endswith(".hdr") and _tiff_data_of_header(p) in listed)]
    return sorted(kept)


# ---------------------------------------------------------------- raw rasters (ENVI, TIFF)

@dataclass
class RasterSource:
    """An ENVI or TIFF cube before bad bands, no-data and scale are applied: `array` (H, W, C), maybe a memmap."""
    path: str
    kind: str
    array: np.ndarray
    info: BandInfo
    georef: Georef | None = None
    factor: float | None = None  # ENVI reflectance scale factor
    text: str = ""               # what was found, for logs


_FALLBACK_LOGGED = set()


def _decode_tiff(path: str) -> np.ndarray:
    """(H, W, C) in the stored dtype: tifffile when installed and able, else (or when it raises) the built-in decoder."""
    layout = tiff_layout(path)  # validated and size-checked before either decoder allocates
    try:
        import tifffile
    except ImportError:
        tifffile = None
    if tifffile is not None:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                check_declared_size(path, series.shape, series.dtype)
                array, axes = series.asarray(), series.axes
            if array.ndim == 2:
                return array[..., None]
            if array.ndim == 3:
                return array if axes.endswith("S") else array.transpose(1, 2, 0)
            raise ValueError(f"series of shape {array.shape} ({axes})")
        except (UserError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - any tifffile failure (a missing codec above all) falls back
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            level = logging.WARNING if "tifffile" not in _FALLBACK_LOGGED else logging.DEBUG
            _FALLBACK_LOGGED.add("tifffile")
            log.log(level, "%s: tifffile could not decode it (%s); using the built-in TIFF decoder (slower)",
                    path, reason)
    array = read_tiff_cube(path)
    if (array.shape[0], array.shape[1]) != (layout.height, layout.width):
        raise UserError(f"{path}: decoded {array.shape[:2]}, but the TIFF declares {layout.height} x {layout.width}")
    return array


def _tiff_metadata(path: str, n_bands: int) -> tuple[BandInfo, Georef | None]:
    """Band info from our JSON description, GDAL's metadata tag and GDAL_NODATA; georeferencing from GeoTIFF tags."""
    _, pages = read_tiff_tags(path)
    tags = pages[0] if pages else {}
    info = band_info_from_gdal(parse_gdal_metadata(tag_text(tags, 42112)), n_bands, path)
    description = tag_text(tags, 270)
    if description and description.lstrip().startswith("{"):
        try:
            ours = json.loads(description)
        except json.JSONDecodeError:
            ours = None
        if isinstance(ours, dict):
            for key, attribute in (("wavelengths", "wavelengths"), ("fwhm", "fwhm")):
                values = ours.get(key)
                try:
                    values = None if values is None else np.asarray(values, dtype=np.float64).ravel()
                except (TypeError, ValueError):
                    values = None
                if values is not None and values.size == n_bands and np.all(np.isfinite(values)):
                    setattr(info, attribute, values)
            names = ours.get("band_names")
            if isinstance(names, list) and len(names) == n_bands and info.names is None:
                info.names = [str(n) for n in names]
    nodata = parse_nodata(tag_text(tags, 42113))
    if nodata is not None:
        info.nodata = nodata
    return info, georef_from_tiff(tags)


def _merge(primary: BandInfo, secondary: BandInfo, where: str) -> BandInfo:
    """`primary`'s fields, each missing one taken from `secondary` (a sidecar header), with a log line."""
    taken = []
    for name in ("wavelengths", "fwhm", "names", "bad_bands", "nodata"):
        if getattr(primary, name) is None and getattr(secondary, name) is not None:
            setattr(primary, name, getattr(secondary, name))
            taken.append(name.replace("_", " "))
    if taken:
        log.info("%s: %s from the ENVI header beside it", where, ", ".join(taken))
    return primary


def _sidecar_info(header: str, n_bands: int, where: str) -> BandInfo:
    try:
        fields = read_envi_header(header)
    except UserError as err:
        log.warning("%s: the ENVI header beside it is ignored (%s)", where, err)
        return BandInfo()
    declared = fields.get("bands")
    if declared is not None and declared.strip() != str(n_bands):
        log.warning("%s: the ENVI header beside it declares %s bands, the TIFF has %d; its metadata is ignored",
                    where, declared, n_bands)
        return BandInfo()
    return envi_band_info(header, fields, n_bands)


def _open_tiff(path: str, header: str | None = None) -> RasterSource:
    array = _decode_tiff(path)
    info, georef = _tiff_metadata(path, array.shape[2])
    sidecar = header or header_path_for(path)
    if sidecar is not None and os.path.isfile(sidecar):
        info = _merge(info, _sidecar_info(sidecar, array.shape[2], path), path)
        if georef is None:
            try:
                georef = georef_from_envi(read_envi_header(sidecar))
            except UserError:
                georef = None
    return RasterSource(path, "tiff", array, info, georef, None, f"TIFF {array.shape[0]} x {array.shape[1]} x "
                        f"{array.shape[2]} {array.dtype.name}")


def open_raster(path: str) -> RasterSource | None:
    """The raw ENVI or TIFF cube at `path` (a TIFF by its content, ENVI by its header), None for anything else."""
    if os.path.isfile(path) and is_tiff(path):
        return _open_tiff(path)
    lower = path.lower()
    if lower.endswith(".mat"):
        return None
    if lower.endswith((".hdr", ".img")) or header_path_for(path) is not None:
        info: EnviHeader = parse_envi(path)
        if info.data_is_tiff:
            return _open_tiff(info.data, info.header)
        array = memmap_envi(info)
        band_info = envi_band_info(info.header, info.fields, info.bands)
        return RasterSource(path, "envi", array, band_info, georef_from_envi(info.fields),
                            reflectance_factor(info.header, info.fields),
                            f"ENVI {info.interleave} {info.lines} x {info.samples} x {info.bands} {info.dtype.name}")
    return None


def raster_georef(path: str) -> Georef | None:
    """The georeferencing of a TIFF (its GeoTIFF tags, else a same-name ENVI header's map info) or of an
    ENVI cube, from the tags and header only (no pixels decoded); None for anything else."""
    try:
        if os.path.isfile(path) and is_tiff(path):
            _, pages = read_tiff_tags(path)
            georef = georef_from_tiff(pages[0]) if pages else None
            header = header_path_for(path)
            if georef is None and header is not None and os.path.isfile(header):
                georef = georef_from_envi(read_envi_header(header))
            return georef
        if not path.lower().endswith(".mat") and (path.lower().endswith(".hdr") or header_path_for(path)):
            info = parse_envi(path)
            return raster_georef(info.data) if info.data_is_tiff else georef_from_envi(info.fields)
    except UserError:
        return None
    return None


# ---------------------------------------------------------------- bad bands, no-data, float32

def good_bands(source: RasterSource) -> np.ndarray | None:
    """Indices of the bands to keep (None: all), logging the dropped ones; every band bad is an error."""
    bad = source.info.bad_bands
    if bad is None or not bad.any():
        return None
    if bad.all():
        raise UserError(f"{source.path}: every band is marked bad (bbl all 0)")
    dropped = np.nonzero(bad)[0]
    nm = source.info.wavelengths
    where = f" ({', '.join(f'{w:.1f}' for w in nm[dropped][:8])}{' ...' if len(dropped) > 8 else ''} nm)" if nm is not None else ""
    log.info("%s: %d bad band(s) dropped (bbl = 0): %s%s; %d bands kept", source.path, len(dropped),
             ", ".join(map(str, dropped[:12].tolist())) + (" ..." if len(dropped) > 12 else ""), where,
             int((~bad).sum()))
    return np.nonzero(~bad)[0]


def select_info(info: BandInfo, keep) -> BandInfo:
    if keep is None:
        return info
    pick = lambda values: None if values is None else np.asarray(values)[keep]  # noqa: E731
    names = None if info.names is None else [info.names[i] for i in keep]
    return BandInfo(pick(info.wavelengths), pick(info.fwhm), names, None, info.nodata)


def invalid_pixels(block: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(h, w) True where any band holds the no-data value (NaN when it is NaN); None without one.

    The value is compared in the stored type: an integer cube cannot hold a fractional or out-of-range
    no-data value, so no pixel of it is invalid.
    """
    if nodata is None:
        return None
    if np.isnan(nodata):
        return np.isnan(block).any(axis=2) if block.dtype.kind == "f" else None
    if block.dtype.kind in "iu":
        limits = np.iinfo(block.dtype)
        if not float(nodata).is_integer() or not limits.min <= nodata <= limits.max:
            return None
        return (block == block.dtype.type(int(nodata))).any(axis=2)
    return (block == block.dtype.type(nodata)).any(axis=2)


def fill_invalid(path: str, cube: np.ndarray, invalid: np.ndarray | None, nodata) -> np.ndarray | None:
    """Fill invalid pixels of a float32 cube in place with each band's valid mean; return the valid mask."""
    if invalid is None or not invalid.any():
        return None
    valid = ~invalid
    if not valid.any():
        raise UserError(f"{path}: every pixel is no-data (value {nodata:g}); nothing to read")
    cube[invalid] = cube[valid].mean(axis=0)
    log.info("%s: %d of %d pixels are no-data (value %g): masked out of training and metrics", path,
             int(invalid.sum()), invalid.size, nodata)
    return valid


def raster_to_scene(source: RasterSource, keep=None) -> CubeData:
    """Apply bad bands, the reflectance factor and no-data to a raw raster; float32, finite where valid."""
    path, array = source.path, source.array
    if keep is None:
        keep = good_bands(source)
    height, width = array.shape[:2]
    count = array.shape[2] if keep is None else len(keep)
    check_declared_size(path, (height, width, count), array.dtype, extra_bytes_per_value=4)
    raw = array if keep is None else array[..., keep]
    invalid = invalid_pixels(raw, source.info.nodata)
    cube = np.array(raw, dtype=np.float32)  # a copy, out of the memory map
    if source.factor:
        cube /= np.float32(source.factor)  # ENVI's reflectance scale factor: stored value = reflectance x factor
    finite = np.isfinite(cube)
    if invalid is not None:
        finite |= invalid[..., None]
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise UserError(f"{path}: {bad} NaN/Inf values (declare no-data as GDAL_NODATA or 'data ignore value' to "
                        "mask such pixels)")
    valid = fill_invalid(path, cube, invalid, source.info.nodata)
    info = select_info(source.info, keep)
    dropped = [] if keep is None else sorted(set(range(array.shape[2])) - set(np.asarray(keep).tolist()))
    return CubeData(path, cube, _checked_vector(info.wavelengths, count), _checked_vector(info.fwhm, count),
                    info.names, valid, source.info.nodata, source.georef, source.kind, dropped)


def _checked_vector(values, n_bands: int) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64).ravel()
    return values if values.size == n_bands and np.all(np.isfinite(values)) else None


def read_scene(path: str, key: str | None = None, expected_bands: int | None = None) -> CubeData:
    """A cube (.mat with `key` or Y/HSI/..., ENVI, TIFF) with its metadata and no-data mask; see the module doc.

    `expected_bands` (the band count the caller needs, if known) settles a .mat cube's axis order.
    """
    source = open_raster(path)
    if source is None:
        cube, wavelengths = read_hsi(path, key, expected_bands)
        return CubeData(path, cube, wavelengths)
    scene = raster_to_scene(source)
    if scene.cube.ndim != 3:
        raise UserError(f"{path}: image of shape {scene.cube.shape}, expected H x W x C")
    return scene


def read_cube(path: str, key: str | None = None, expected_bands: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) float32 and wavelengths (C,) in nm or None, from .mat, ENVI or TIFF (see `read_scene`)."""
    scene = read_scene(path, key, expected_bands)
    return scene.cube, scene.wavelengths

