"""Band metadata and georeferencing as GDAL, QGIS, SPy and ENVI store them, read and written in one place.

- GDAL's TIFF metadata tag (42112, XML `<GDALMetadata><Item name= sample= domain=>`): per-band
  `wavelength` + `wavelength_units` (what rasterio's `update_tags(bidx, ...)` and GDAL's ENVI->GTiff
  copy write), `CENTRAL_WAVELENGTH_UM` / `FWHM_UM` in the IMAGERY domain (GDAL >= 3.10), band
  `DESCRIPTION`s, and the ENVI domain (`wavelength`, `wavelength_units`, `fwhm`, `bbl`, `band_names`,
  `data_ignore_value`) that GDAL keeps for data that came from ENVI.
- Units (Nanometers, nm, Micrometers, um, microns, mm, ...) converted to nm.
- `Georef`: the pixel grid (GDAL's geotransform), the CRS as an EPSG code and/or WKT, and the raw
  GeoTIFF tags / ENVI fields, so an output on the same grid gets them back verbatim in its own format
  and converted (grid + EPSG) in the other one.
"""
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ubf.core.logs import get_logger

# ---------------------------------------------------------------- units and lists

_UNIT_FACTORS = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0, "nanometres": 1.0,
                 "um": 1000.0, "µm": 1000.0, "micrometer": 1000.0, "micrometers": 1000.0, "micrometre": 1000.0,
                 "micrometres": 1000.0, "micron": 1000.0, "microns": 1000.0, "mm": 1e6, "millimeter": 1e6,
                 "millimeters": 1e6, "millimetre": 1e6, "millimetres": 1e6}


def unit_factor(values, units: str | None, where: str = "") -> float | None:
    """nm per unit of `units`; no or 'unknown' units: micrometres (1000) if all `values` < 30, else nm (1).

    Units that are not lengths ('Index', 'GHz', wavenumbers) give None with a log line.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    unit = (units or "").strip().lower().replace("_", " ")
    if unit in ("", "unknown"):
        return 1000.0 if values.size and values.max() < 30 else 1.0
    if unit in _UNIT_FACTORS:
        return _UNIT_FACTORS[unit]
    get_logger().warning("%swavelength units '%s' are not a length; wavelengths ignored", f"{where}: " if where else "",
                         units)
    return None


def to_nanometres(values, units: str | None, where: str = "", factor: float | None = None) -> np.ndarray | None:
    """Wavelengths (or widths, with the wavelengths' `factor`) in nm from `values` in `units` (see unit_factor)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None
    factor = factor if factor is not None else unit_factor(values, units, where)
    return None if factor is None else values * factor


def parse_list(text: str | None) -> list[str]:
    """The items of an ENVI/GDAL list value '{a, b, c}' (braces optional)."""
    if text is None:
        return []
    return [item.strip() for item in str(text).strip().strip("{}").split(",") if item.strip()]


def parse_numbers(text: str | None) -> np.ndarray | None:
    items = parse_list(text)
    if not items:
        return None
    try:
        return np.array([float(v) for v in items], dtype=np.float64)
    except ValueError:
        return None


# ---------------------------------------------------------------- GDAL's TIFF metadata (tag 42112)

@dataclass
class GdalMetadata:
    """Items of a GDALMetadata document: dataset-level {(domain, name): value}, per band {band: {...}}."""
    dataset: dict = field(default_factory=dict)
    bands: dict = field(default_factory=dict)

    def band_values(self, name: str, n_bands: int, domain: str = "") -> list | None:
        """The value of item `name` for every band 0..n-1, or None when any band lacks it."""
        values = [self.bands.get(b, {}).get((domain, name)) for b in range(n_bands)]
        return None if any(v is None for v in values) else values


def parse_gdal_metadata(text: str | None) -> GdalMetadata:
    """Parse GDAL's XML; anything malformed (or with a DTD/entities) gives an empty result."""
    out = GdalMetadata()
    if not text or "<!DOCTYPE" in text or "<!ENTITY" in text:
        return out
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return out
    for item in root.iter("Item"):
        name = item.get("name")
        if not name:
            continue
        key = (item.get("domain") or "", name)
        value = item.text or ""
        sample = item.get("sample")
        if sample is None:
            out.dataset[key] = value
        elif sample.isdigit():
            out.bands.setdefault(int(sample), {})[key] = value
    return out


def gdal_metadata_xml(dataset_items=(), band_items=()) -> str:
    """GDAL's XML from (name, value, domain) dataset items and (band, name, value, domain, role) band items."""
    parts = []
    for name, value, domain in dataset_items:
        parts.append(f"<Item name={quoteattr(name)}{_attr('domain', domain)}>{escape(str(value))}</Item>")
    for band, name, value, domain, role in band_items:
        parts.append(f"<Item name={quoteattr(name)} sample=\"{int(band)}\"{_attr('domain', domain)}"
                     f"{_attr('role', role)}>{escape(str(value))}</Item>")
    return "<GDALMetadata>\n  " + "\n  ".join(parts) + "\n</GDALMetadata>"


def _attr(name: str, value) -> str:
    return f" {name}={quoteattr(value)}" if value else ""


@dataclass
class BandInfo:
    """What a file says about its bands (all optional, each of length C when present)."""
    wavelengths: np.ndarray | None = None   # nm
    fwhm: np.ndarray | None = None          # nm
    names: list | None = None
    bad_bands: np.ndarray | None = None     # bool, True = bad (ENVI bbl = 0)
    nodata: float | None = None


def band_info_from_gdal(meta: GdalMetadata, n_bands: int, where: str = "") -> BandInfo:
    """Wavelengths, FWHM, names, bad bands and no-data from GDAL's metadata of an n-band TIFF."""
    info = BandInfo()
    values = meta.band_values("wavelength", n_bands)
    if values is not None:
        units = meta.band_values("wavelength_units", n_bands) or [meta.dataset.get(("", "wavelength_units"))] * n_bands
        try:
            info.wavelengths = _per_band_nm([float(v) for v in values], units, where)
        except ValueError:
            info.wavelengths = None
    if info.wavelengths is None:
        central = meta.band_values("CENTRAL_WAVELENGTH_UM", n_bands, "IMAGERY")
        try:
            info.wavelengths = None if central is None else np.array([float(v) for v in central]) * 1000.0
        except ValueError:
            info.wavelengths = None
    envi = {name: value for (domain, name), value in meta.dataset.items() if domain == "ENVI"}
    if info.wavelengths is None and "wavelength" in envi:
        numbers = parse_numbers(envi["wavelength"])
        if numbers is not None and numbers.size == n_bands:
            info.wavelengths = to_nanometres(numbers, envi.get("wavelength_units"), where)
    fwhm = meta.band_values("FWHM_UM", n_bands, "IMAGERY")
    try:
        info.fwhm = None if fwhm is None else np.array([float(v) for v in fwhm]) * 1000.0
    except ValueError:
        info.fwhm = None
    if info.fwhm is None and "fwhm" in envi:
        numbers = parse_numbers(envi["fwhm"])
        centres = parse_numbers(envi.get("wavelength"))
        if numbers is not None and numbers.size == n_bands:
            factor = unit_factor(centres if centres is not None else numbers, envi.get("wavelength_units"), where)
            info.fwhm = to_nanometres(numbers, None, where, factor) if factor else None
    names = meta.band_values("DESCRIPTION", n_bands)
    if names is None and "band_names" in envi and len(parse_list(envi["band_names"])) == n_bands:
        names = parse_list(envi["band_names"])
    info.names = names
    bbl = envi.get("bbl", meta.dataset.get(("", "bbl")))
    info.bad_bands = bad_band_mask(bbl, n_bands)
    for value in (envi.get("data_ignore_value"),):
        info.nodata = parse_nodata(value)
    return info


def _per_band_nm(values, units, where) -> np.ndarray | None:
    """Per-band values each with its own units (GDAL stores units per band)."""
    if len(set(u or "" for u in units)) == 1:
        return to_nanometres(values, units[0], where)
    out = [to_nanometres([v], u, where) for v, u in zip(values, units)]
    return None if any(o is None for o in out) else np.concatenate(out)


def bad_band_mask(text, n_bands: int) -> np.ndarray | None:
    """ENVI's `bbl` (1 good, 0 bad per band) as a boolean 'bad' mask; None when absent or not n values."""
    numbers = parse_numbers(text)
    if numbers is None or numbers.size != n_bands:
        return None
    return numbers == 0


def parse_nodata(value) -> float | None:
    """A no-data value as a float ('nan' allowed); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return float(str(value).strip().strip("\0"))
    except ValueError:
        return None


# ---------------------------------------------------------------- georeferencing

GEO_TAG_TYPES = {33550: 12, 33922: 12, 34264: 12, 34735: 3, 34736: 12, 34737: 2}


@dataclass
class Georef:
    """Where a raster's pixels lie. `transform`: GDAL's (x0, dx, rx, y0, ry, dy) of the top-left corner."""
    transform: tuple | None = None
    epsg: int | None = None
    wkt: str | None = None
    geographic: bool | None = None
    tiff_tags: dict | None = None     # GeoTIFF tag code -> values, copied verbatim into TIFF outputs
    envi_fields: dict | None = None   # 'map info', 'coordinate system string', 'projection info'

    def describe(self) -> str:
        crs = f"EPSG:{self.epsg}" if self.epsg else ("a WKT CRS" if self.wkt else "no CRS")
        grid = (f"origin ({self.transform[0]:g}, {self.transform[3]:g}), pixel {self.transform[1]:g} x "
                f"{abs(self.transform[5]):g}") if self.transform else "no pixel grid"
        return f"{crs}, {grid}"


def _geokeys(values) -> dict:
    """GeoKeyDirectory -> {key: value} for keys stored in the directory itself (location 0)."""
    values = [int(v) for v in np.asarray(values).ravel()]
    if len(values) < 4:
        return {}
    out = {}
    for i in range(values[3]):
        entry = values[4 + 4 * i:8 + 4 * i]
        if len(entry) == 4 and entry[1] == 0:
            out[entry[0]] = entry[3]
    return out


def georef_from_tiff(tags: dict) -> Georef | None:
    """A Georef from the GeoTIFF tags of a page (tag -> array), or None when it has none."""
    raw = {code: np.asarray(tags[code]) for code in GEO_TAG_TYPES if code in tags}
    if not raw:
        return None
    keys = _geokeys(raw.get(34735, []))
    transform = None
    if 34264 in raw and raw[34264].size >= 16:
        m = raw[34264].astype(np.float64)
        transform = (m[3], m[0], m[1], m[7], m[4], m[5])
    elif 33550 in raw and 33922 in raw and raw[33550].size >= 2 and raw[33922].size >= 6:
        sx, sy = float(raw[33550][0]), float(raw[33550][1])
        i, j, x, y = (float(raw[33922][k]) for k in (0, 1, 3, 4))
        x0, y0 = x - i * sx, y + j * sy
        if keys.get(1025) == 2:  # PixelIsPoint: the tie point is a pixel centre
            x0, y0 = x0 - sx / 2, y0 + sy / 2
        transform = (x0, sx, 0.0, y0, 0.0, -sy)
    epsg = keys.get(3072) if keys.get(3072) not in (None, 0, 32767) else None
    geographic = keys.get(1024) == 2 if 1024 in keys else None
    if epsg is None and keys.get(2048) not in (None, 0, 32767):
        epsg = keys[2048]
        geographic = True if geographic is None else geographic
    if epsg is not None and 3072 in keys:
        geographic = False
    tiff_tags = {code: (bytes(v) if GEO_TAG_TYPES[code] == 2 else v.tolist()) for code, v in raw.items()}
    return Georef(transform, epsg, None, geographic, tiff_tags, None)


_UTM = re.compile(r"utm", re.IGNORECASE)


def georef_from_envi(fields: dict) -> Georef | None:
    """A Georef from an ENVI header's `map info` and `coordinate system string`, or None."""
    kept = {k: fields[k] for k in ("map info", "coordinate system string", "projection info") if k in fields}
    if not kept:
        return None
    transform, epsg, geographic = None, None, None
    items = parse_list(fields.get("map info"))
    if len(items) >= 7:
        try:
            ref_x, ref_y, east, north, dx, dy = (float(v) for v in items[1:7])
            rotated = any(i.lower().startswith("rotation") and float(i.split("=")[1]) != 0 for i in items if "=" in i)
            if not rotated:
                transform = (east - (ref_x - 1) * dx, dx, 0.0, north + (ref_y - 1) * dy, 0.0, -dy)
        except (ValueError, IndexError):
            transform = None
        name = items[0].lower()
        datum = " ".join(items[7:]).lower()
        if _UTM.search(name) and len(items) >= 10 and "wgs-84" in datum:
            try:
                zone = int(float(items[7]))
                epsg = (32600 if items[8].strip().lower().startswith("n") else 32700) + zone
                geographic = False
            except ValueError:
                pass
        elif name.startswith("geographic") and "wgs-84" in datum:
            epsg, geographic = 4326, True
    wkt = fields.get("coordinate system string")
    if wkt:
        wkt = wkt.strip()
        found = re.findall(r'(?:AUTHORITY\["EPSG",\s*"?|ID\["EPSG",\s*)(\d+)', wkt)
        if epsg is None and found:
            epsg = int(found[-1])  # the last authority is the whole CRS's
        if geographic is None:
            geographic = wkt.upper().startswith(("GEOGCS", "GEOGCRS"))
    return Georef(transform, epsg, wkt or None, geographic, None, kept)


def _epsg_wkt(epsg: int) -> str | None:
    """WKT of an EPSG code through rasterio/GDAL when they are installed (optional)."""
    try:
        from rasterio.crs import CRS
        return CRS.from_epsg(epsg).to_wkt()
    except Exception:  # noqa: BLE001 - rasterio missing or the code unknown to its database
        return None


def envi_geo_fields(georef: Georef | None) -> list[tuple[str, str]]:
    """ENVI header fields for `georef`: its own fields verbatim, else map info (+ WKT) from grid and EPSG."""
    if georef is None:
        return []
    if georef.envi_fields:
        return [(k, v if v.startswith("{") else "{" + v + "}") for k, v in georef.envi_fields.items()]
    if georef.transform is None:
        return []
    x0, dx, rx, y0, ry, dy = georef.transform
    if rx or ry:
        get_logger().warning("a rotated pixel grid is not written to ENVI headers; the output has no map info")
        return []
    epsg = georef.epsg
    numbers = f"1, 1, {x0!r}, {y0!r}, {dx!r}, {abs(dy)!r}"
    if epsg and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        info = f"{{UTM, {numbers}, {epsg % 100}, {'North' if epsg < 32700 else 'South'}, WGS-84, units=Meters}}"
    elif epsg == 4326:
        info = f"{{Geographic Lat/Lon, {numbers}, WGS-84, units=Degrees}}"
    else:
        info = f"{{Arbitrary, {numbers}}}"
    fields = [("map info", info)]
    wkt = georef.wkt or (_epsg_wkt(epsg) if epsg else None)
    if wkt:
        fields.append(("coordinate system string", "{" + wkt + "}"))
    elif epsg and not info.startswith(("{UTM", "{Geographic")):
        get_logger().warning("EPSG:%d cannot be written to an ENVI header without rasterio/GDAL; the pixel grid is "
                             "kept, the CRS is not", epsg)
    return fields


def tiff_geo_tags(georef: Georef | None) -> list[tuple[int, int, object]]:
    """GeoTIFF tags for `georef`: its own tags verbatim, else pixel scale + tie point (or a transformation
    matrix) and GeoKeys with the EPSG code."""
    if georef is None:
        return []
    if georef.tiff_tags:
        return [(code, GEO_TAG_TYPES[code], values) for code, values in georef.tiff_tags.items()]
    if georef.transform is None:
        return []
    x0, dx, rx, y0, ry, dy = (float(v) for v in georef.transform)
    if rx == 0 and ry == 0 and dy < 0:
        tags = [(33550, 12, [dx, -dy, 0.0]), (33922, 12, [0.0, 0.0, 0.0, x0, y0, 0.0])]
    else:
        tags = [(34264, 12, [dx, rx, 0.0, x0, ry, dy, 0.0, y0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])]
    geographic = georef.geographic if georef.geographic is not None else bool(georef.epsg and 4000 <= georef.epsg < 5000)
    keys = [(1024, 2 if geographic else 1), (1025, 1)]
    if georef.epsg:
        keys.append((2048 if geographic else 3072, int(georef.epsg)))
    elif georef.wkt:
        get_logger().warning("a CRS given only as WKT is not written to GeoTIFF keys; the pixel grid is kept")
    directory = [1, 1, 0, len(keys)]
    for key, value in keys:
        directory += [key, 0, 1, value]
    return tags + [(34735, 3, directory)]

