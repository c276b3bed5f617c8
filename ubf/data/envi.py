"""ENVI header + raw data files (Chikusei's other release), memory-mapped as (H, W, C)."""
import os
import re

import numpy as np

from ubf.core.errors import UserError

_ENVI_TYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}


def read_envi_header(path: str) -> dict[str, str]:
    """`key = value` pairs of an ENVI .hdr file (braced values may span lines), keys lower-case."""
    with open(path, encoding="latin-1") as f:
        text = f.read()
    if not text.lstrip().upper().startswith("ENVI"):
        raise UserError(f"{path}: not an ENVI header (does not start with 'ENVI')")
    fields = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.MULTILINE):
        fields[match.group(1).strip().lower()] = match.group(2).strip().strip("{}").strip()
    return fields


def open_envi(path: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(cube memory-mapped as H x W x C, wavelengths in nm or None, reflectance scale factor or None)."""
    base, ext = os.path.splitext(path)
    header = path if ext.lower() == ".hdr" else (base + ".hdr" if os.path.exists(base + ".hdr") else path + ".hdr")
    if not os.path.isfile(header):
        raise UserError(f"{path}: no ENVI header next to it (looked for {header})")
    fields = read_envi_header(header)
    try:
        samples, lines, bands = (int(fields[k]) for k in ("samples", "lines", "bands"))
        order = "<" if int(fields.get("byte order", 0)) == 0 else ">"
        dtype = np.dtype(order + _ENVI_TYPES[int(fields["data type"])])
    except (KeyError, ValueError) as err:
        raise UserError(f"{header}: ENVI header lacks or garbles {err}") from None
    interleave = fields.get("interleave", "bsq").lower()
    layouts = {"bsq": ((bands, lines, samples), (1, 2, 0)), "bil": ((lines, bands, samples), (0, 2, 1)),
               "bip": ((lines, samples, bands), (0, 1, 2))}
    if interleave not in layouts:
        raise UserError(f"{header}: interleave '{interleave}', expected bsq, bil or bip")
    data = path
    if ext.lower() == ".hdr":
        candidates = (base + e for e in (".bsq", ".bil", ".bip", ".img", ".raw", ".dat", ""))
        data = next((c for c in candidates if os.path.isfile(c)), None)
        if data is None:
            raise UserError(f"{header}: no data file next to it ({os.path.basename(base)}.bsq/.img/...)")
    stored, axes = layouts[interleave]
    offset = int(fields.get("header offset", 0))
    needed = offset + int(np.prod(stored)) * dtype.itemsize
    if os.path.getsize(data) < needed:
        raise UserError(f"{data}: {os.path.getsize(data)} bytes, the header describes {needed}")
    array = np.memmap(data, dtype, "r", offset, stored).transpose(axes)
    wavelengths, factor = None, None
    try:
        if "wavelength" in fields:
            values = np.array([float(v) for v in fields["wavelength"].split(",") if v.strip()])
            if values.size == bands:
                units = fields.get("wavelength units", "").lower()
                wavelengths = values * 1000.0 if units.startswith(("micro", "um")) or values.max() < 30 else values
        if "reflectance scale factor" in fields:
            factor = float(fields["reflectance scale factor"])
    except ValueError as err:
        raise UserError(f"{header}: unreadable wavelength or scale factor ({err})") from None
    return array, wavelengths, factor
