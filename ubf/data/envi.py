"""ENVI header + raw data files (Chikusei's other release, SPy's and ENVI's own output), memory-mapped as (H, W, C).

`parse_envi(path)` finds the header and the data file of a cube given either, and checks the
header's fields once (sizes positive, offset not negative, a known data type and interleave, the data
file as long as the header says). A data file that is a TIFF (ENVI writes a `.hdr` beside GeoTIFFs to
hold wavelengths) is reported as such (`EnviHeader.data_is_tiff`) and read as the TIFF it is.
"""
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ubf.core.errors import UserError
from ubf.data.raster_meta import BandInfo, bad_band_mask, parse_list, parse_nodata, parse_numbers, to_nanometres, \
    unit_factor
from ubf.data.tiff import TIFF_EXTENSIONS, is_tiff

_ENVI_TYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
DATA_EXTENSIONS = (".bsq", ".bil", ".bip", ".img", ".raw", ".dat") + TIFF_EXTENSIONS + ("",)
MAX_HEADER_BYTES = 64 * 1024 * 1024


def read_envi_header(path: str) -> dict[str, str]:
    """`key = value` pairs of an ENVI .hdr file (braced values may span lines), keys lower-case."""
    try:
        if os.path.getsize(path) > MAX_HEADER_BYTES:
            raise UserError(f"{path}: {os.path.getsize(path)} bytes is too large for an ENVI header")
        with open(path, encoding="latin-1") as f:
            text = f.read()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if not text.lstrip().upper().startswith("ENVI"):
        raise UserError(f"{path}: not an ENVI header (does not start with 'ENVI')")
    fields = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.MULTILINE):
        fields[match.group(1).strip().lower()] = match.group(2).strip().strip("{}").strip()
    return fields


def header_path_for(path: str) -> str | None:
    """The ENVI header of a cube given as its header or its data file (X.hdr or X.img.hdr), or None."""
    if path.lower().endswith(".hdr"):
        return path
    base = os.path.splitext(path)[0]
    for candidate in (base + ".hdr", path + ".hdr"):
        if os.path.isfile(candidate):
            return candidate
    return None


def data_path_for(header: str) -> str | None:
    """The data file beside an ENVI header X.hdr: X.bsq/.bil/.bip/.img/.raw/.dat/.tif/.tiff or X."""
    base = header[:-4]
    return next((base + e for e in DATA_EXTENSIONS if os.path.isfile(base + e)), None)


@dataclass
class EnviHeader:
    header: str
    data: str
    fields: dict
    samples: int = 0
    lines: int = 0
    bands: int = 0
    offset: int = 0
    dtype: np.dtype | None = None
    interleave: str = "bsq"
    data_is_tiff: bool = False


def _positive_int(header: str, fields: dict, key: str, minimum: int, default=None) -> int:
    if key not in fields:
        if default is not None:
            return default
        raise UserError(f"{header}: ENVI header lacks '{key}'")
    text = fields[key].strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise UserError(f"{header}: ENVI header field '{key} = {text}' is not an integer")
    value = int(number)
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise UserError(f"{header}: ENVI header field '{key} = {value}' must be {what}")
    return value


def parse_envi(path: str) -> EnviHeader:
    """The checked header and data file of an ENVI cube given as `X.hdr` or as its data file."""
    header = header_path_for(path)
    if header is None or not os.path.isfile(header):
        raise UserError(f"{path}: no ENVI header next to it (looked for {os.path.splitext(path)[0]}.hdr)")
    fields = read_envi_header(header)
    data = path if not path.lower().endswith(".hdr") else data_path_for(header)
    if data is None:
        raise UserError(f"{header}: no data file next to it ({os.path.basename(header[:-4])}.img/.bsq/.tif/...)")
    if is_tiff(data):  # a TIFF's own header decides its layout: the .hdr only adds metadata
        return EnviHeader(header, data, fields, data_is_tiff=True)
    samples = _positive_int(header, fields, "samples", 1)
    lines = _positive_int(header, fields, "lines", 1)
    bands = _positive_int(header, fields, "bands", 1)
    offset = _positive_int(header, fields, "header offset", 0, default=0)
    try:
        byte_order = int(fields.get("byte order", 0))
        kind = int(fields["data type"])
    except KeyError:
        raise UserError(f"{header}: ENVI header lacks 'data type'") from None
    except ValueError as err:
        raise UserError(f"{header}: ENVI header garbles 'data type' or 'byte order' ({err})") from None
    if kind not in _ENVI_TYPES:
        raise UserError(f"{header}: ENVI data type {kind} is not supported (expected one of "
                        f"{', '.join(map(str, _ENVI_TYPES))}; 6 and 9 are complex)")
    if byte_order not in (0, 1):
        raise UserError(f"{header}: ENVI byte order {byte_order}, expected 0 (little) or 1 (big endian)")
    dtype = np.dtype(("<" if byte_order == 0 else ">") + _ENVI_TYPES[kind])
    interleave = fields.get("interleave", "bsq").lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise UserError(f"{header}: interleave '{interleave}', expected bsq, bil or bip")
    needed = offset + samples * lines * bands * dtype.itemsize
    size = os.path.getsize(data)
    if size < needed:
        raise UserError(f"{data}: {size} bytes, but the header {os.path.basename(header)} describes {needed} "
                        f"({lines} lines x {samples} samples x {bands} bands of {dtype.name} after {offset} bytes); "
                        "the file is truncated or the header is wrong")
    return EnviHeader(header, data, fields, samples, lines, bands, offset, dtype, interleave)


def memmap_envi(info: EnviHeader) -> np.ndarray:
    """The data of a checked raw ENVI cube as a read-only (H, W, C) memory map view."""
    layouts = {"bsq": ((info.bands, info.lines, info.samples), (1, 2, 0)),
               "bil": ((info.lines, info.bands, info.samples), (0, 2, 1)),
               "bip": ((info.lines, info.samples, info.bands), (0, 1, 2))}
    stored, axes = layouts[info.interleave]
    try:
        return np.memmap(info.data, info.dtype, "r", info.offset, stored).transpose(axes)
    except (OSError, ValueError) as err:
        raise UserError(f"{info.data}: cannot map the ENVI data ({err})") from None


def envi_band_info(header: str, fields: dict, n_bands: int) -> BandInfo:
    """Wavelengths (nm), FWHM, band names, bad bands (bbl) and no-data (data ignore value) of a header."""
    info = BandInfo()
    units = fields.get("wavelength units")
    values = parse_numbers(fields.get("wavelength"))
    if fields.get("wavelength") and values is None:
        raise UserError(f"{header}: unreadable 'wavelength' list")
    if values is not None and values.size == n_bands:
        info.wavelengths = to_nanometres(values, units, header)
    fwhm = parse_numbers(fields.get("fwhm"))
    if fwhm is not None and fwhm.size == n_bands:  # in the wavelengths' units (guessed from the centres)
        factor = unit_factor(values if values is not None else fwhm, units, header)
        info.fwhm = to_nanometres(fwhm, None, header, factor) if factor else None
    names = parse_list(fields.get("band names"))
    info.names = names if len(names) == n_bands else None
    info.bad_bands = bad_band_mask(fields.get("bbl"), n_bands)
    if "data ignore value" in fields:
        info.nodata = parse_nodata(fields["data ignore value"])
        if info.nodata is None:
            raise UserError(f"{header}: unreadable 'data ignore value = {fields['data ignore value']}'")
    return info


def reflectance_factor(header: str, fields: dict) -> float | None:
    if "reflectance scale factor" not in fields:
        return None
    try:
        factor = float(fields["reflectance scale factor"])
    except ValueError:
        raise UserError(f"{header}: unreadable reflectance scale factor '{fields['reflectance scale factor']}'") from None
    if not np.isfinite(factor) or factor <= 0:
        raise UserError(f"{header}: reflectance scale factor {factor} must be a positive number")
    return factor


def open_envi(path: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(raw cube memory-mapped as H x W x C, wavelengths in nm or None, reflectance scale factor or None)."""
    info = parse_envi(path)
    if info.data_is_tiff:
        raise UserError(f"{info.data}: a TIFF, not raw ENVI data; read it with ubf.data.cubes")
    array = memmap_envi(info)
    return array, envi_band_info(info.header, info.fields, info.bands).wavelengths, reflectance_factor(info.header, info.fields)
