"""Cube and abundance writers: `.mat` (v5, scipy), `.mat` v7.3 (HDF5), ENVI and GeoTIFF, with the metadata
GDAL, QGIS, rasterio and Spectral Python read.

| format | file(s) | metadata |
|---|---|---|
| `mat` | `<name>.mat`, MATLAB v5 | every variable, the reference's layout |
| `mat73` | `<name>.mat`, MATLAB v7.3 (HDF5) | every variable, H x W x C as MATLAB sees it (h5py: C x W x H) |
| `envi` | `<name>.hdr` + `<name>.img`, BSQ float32 | `wavelength`, `wavelength units`, `fwhm`, `band names`, `default bands`, `data ignore value`, `map info` / `coordinate system string`, `description` with provenance |
| `tiff` | `<name>.tif`, one float32 pixel-interleaved page | GDAL_METADATA (per band `wavelength`, `wavelength_units`, `DESCRIPTION`, IMAGERY `CENTRAL_WAVELENGTH_UM` / `FWHM_UM`), GDAL_NODATA, GeoTIFF tags, a JSON ImageDescription |

The raster formats hold one array (the HSI, or the abundances of `Unmixing.py infer`); `mat`/`mat73`
hold all variables. Every file is written to a temporary name and renamed.
"""
import datetime
import json
import os
import re

import numpy as np

from ubf.core.color import default_rgb_bands
from ubf.core.errors import UserError
from ubf.core.fs import atomic_output
from ubf.core.version import __version__
from ubf.data.matio import write_mat, write_mat73
from ubf.data.raster_meta import Georef, envi_geo_fields, gdal_metadata_xml, tiff_geo_tags
from ubf.data.tiff import ascii_tag, write_tiff_file

FORMATS = {"mat": ".mat", "mat73": ".mat", "envi": ".hdr", "tiff": ".tif"}
OUTPUT_FILES = {"mat": (".mat",), "mat73": (".mat",), "envi": (".hdr", ".img"), "tiff": (".tif",)}
RASTER_KEYS = ("HSI", "Y", "Abu")


def provenance_description(what: str) -> str:
    """`what` plus the program, its version and the UTC time: the description every raster output carries."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{what}; written by Unmixing Before Fusion (ubf) {__version__} on {stamp}"


def _check_new(paths: list[str], overwrite: bool) -> None:
    for path in paths:
        if not overwrite and os.path.exists(path):
            raise UserError(f"{path}: exists already (use --overwrite to replace it)")


def _clean_name(name: str) -> str:
    return re.sub(r"[{},\n\r]", " ", str(name)).strip()


def _numbers(values, fmt: str = "{:.4f}") -> str:
    return "{" + ", ".join(fmt.format(float(v)) for v in values) + "}"


def _nodata_text(nodata: float) -> str:
    return "nan" if np.isnan(nodata) else repr(float(nodata))


def write_envi(path: str, cube: np.ndarray, wavelengths=None, band_names=None, description: str = "",
               overwrite: bool = True, fwhm=None, nodata=None, georef: Georef | None = None,
               default_bands=None) -> tuple[str, str]:
    """Write (H, W, C) as ENVI BSQ float32: `<base>.img` and `<base>.hdr`; returns (header, data) paths.

    `default bands` (1-based R, G, B) are the bands nearest 640/550/460 nm when wavelengths are known.
    """
    base = path[:-4] if path.lower().endswith((".hdr", ".img")) else path
    header_path, data_path = base + ".hdr", base + ".img"
    _check_new([header_path, data_path], overwrite)
    cube = np.asarray(cube, dtype="<f4")
    if cube.ndim == 2:
        cube = cube[..., None]
    lines, samples, bands = cube.shape
    fields = [("description", "{" + _clean_name(description or "hyperspectral cube") + "}"),
              ("samples", samples), ("lines", lines), ("bands", bands), ("header offset", 0),
              ("file type", "ENVI Standard"), ("data type", 4), ("interleave", "bsq"), ("byte order", 0)]
    if band_names is not None:
        fields.append(("band names", "{" + ", ".join(_clean_name(n) for n in band_names) + "}"))
    if wavelengths is not None:
        fields += [("wavelength units", "Nanometers"), ("wavelength", _numbers(wavelengths))]
    if fwhm is not None:
        fields.append(("fwhm", _numbers(fwhm)))
    if bands >= 3:
        chosen = default_bands if default_bands is not None else default_rgb_bands(bands, wavelengths)
        fields.append(("default bands", "{" + ", ".join(str(int(b) + 1) for b in chosen) + "}"))
    if nodata is not None:
        fields.append(("data ignore value", _nodata_text(nodata)))
    fields += envi_geo_fields(georef)
    text = "ENVI\n" + "".join(f"{key} = {value}\n" for key, value in fields)
    with atomic_output(data_path) as tmp:
        np.ascontiguousarray(cube.transpose(2, 0, 1)).tofile(tmp)
    with atomic_output(header_path) as tmp:
        with open(tmp, "w", encoding="ascii", errors="replace") as f:
            f.write(text)
    return header_path, data_path


def write_tiff(path: str, cube: np.ndarray, wavelengths=None, band_names=None, overwrite: bool = True,
               fwhm=None, nodata=None, georef: Georef | None = None, description: str = "") -> str:
    """Write (H, W, C) as one float32 multi-band (Geo)TIFF page with GDAL's band metadata.

    Wavelengths go per band as `wavelength` + `wavelength_units` and as IMAGERY `CENTRAL_WAVELENGTH_UM`
    (GDAL >= 3.10), FWHM as `FWHM_UM`, band names as band descriptions; they are also in the JSON
    ImageDescription that this project reads back.
    """
    _check_new([path], overwrite)
    cube = np.asarray(cube, dtype=np.float32)
    if cube.ndim == 2:
        cube = cube[..., None]
    n_bands = cube.shape[2]
    names = [str(n) for n in band_names] if band_names is not None else [f"band {i + 1}" for i in range(n_bands)]
    summary = {"description": description or "hyperspectral cube", "band_names": names}
    band_items = [(i, "DESCRIPTION", n, None, "description") for i, n in enumerate(names)]
    if wavelengths is not None:
        summary["wavelengths"] = [float(w) for w in wavelengths]
        summary["wavelength_units"] = "nm"
        for i, w in enumerate(wavelengths):
            band_items += [(i, "wavelength", f"{float(w):.4f}", None, None),
                           (i, "wavelength_units", "Nanometers", None, None),
                           (i, "CENTRAL_WAVELENGTH_UM", f"{float(w) / 1000.0:.7f}", "IMAGERY", None)]
    if fwhm is not None:
        summary["fwhm"] = [float(v) for v in fwhm]
        band_items += [(i, "FWHM_UM", f"{float(v) / 1000.0:.7f}", "IMAGERY", None) for i, v in enumerate(fwhm)]
    band_items.sort(key=lambda item: item[0])
    tags = [ascii_tag(270, json.dumps(summary)), ascii_tag(305, f"ubf {__version__}"),
            ascii_tag(42112, gdal_metadata_xml((), band_items))]
    if nodata is not None:
        tags.append(ascii_tag(42113, _nodata_text(nodata)))
    for code, kind, values in tiff_geo_tags(georef):
        tags.append((code, kind, values.encode("latin-1") if isinstance(values, str) else values))
    with atomic_output(path) as tmp:
        write_tiff_file(tmp, cube, tags)
    return path


def raster_variable(variables: dict, raster_key: str | None) -> tuple[str, np.ndarray]:
    key = raster_key or next((k for k in RASTER_KEYS if k in variables), None)
    if key is None or key not in variables:
        raise UserError(f"nothing to write as a raster: no {raster_key or '/'.join(RASTER_KEYS)} variable")
    return key, np.asarray(variables[key])


def write_cube(path_base: str, fmt: str, variables: dict, wavelengths=None, band_names=None,
               overwrite: bool = True, raster_key: str | None = None, fwhm=None, description: str = "",
               nodata=None, georef: Georef | None = None) -> str:
    """Write `variables` as `fmt` (mat/mat73: all; envi/tiff: the `raster_key` array, by default HSI, Y or
    Abu, whichever is there); returns the path written (the .hdr for ENVI)."""
    if fmt == "mat":
        write_mat(path_base + ".mat", variables, overwrite=overwrite)
        return path_base + ".mat"
    if fmt == "mat73":
        write_mat73(path_base + ".mat", variables, overwrite=overwrite)
        return path_base + ".mat"
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    _, raster = raster_variable(variables, raster_key)
    if "written by Unmixing Before Fusion" not in description:
        description = provenance_description(description or "hyperspectral cube")
    if fmt == "envi":
        return write_envi(path_base + ".hdr", raster, wavelengths, band_names, description, overwrite=overwrite,
                          fwhm=fwhm, nodata=nodata, georef=georef)[0]
    return write_tiff(path_base + ".tif", raster, wavelengths, band_names, overwrite=overwrite, fwhm=fwhm,
                      nodata=nodata, georef=georef, description=description)
