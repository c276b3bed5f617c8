"""Target sensors: render hyperspectral cubes into a sensor's bands through its spectral responses.

A sensor is a set of bands, each with a relative spectral response r(λ): full curves from a table
(CSV `wavelength_nm,<band>,<band>,...` or JSON `{"wavelength_nm": [...], "responses": {band: [...]}}`)
or Gaussians from band centres and FWHM (CSV `band,center_nm,fwhm_nm` or JSON `{"bands": [{"name",
"center_nm", "fwhm_nm"}]}`). Built-in presets live in ubf/data/tables/sensors/ with their sources in the
file headers; `grid-10nm` and `grid-5nm` are regular Gaussian grids laid over the input's range.

Rendering a spectrum x(λ) known at the input wavelengths: x is interpolated linearly between the input
bands, and each band value is the trapezoid integral of r·x over the input's range divided by the
integral of r over that range (the response normalised to unit area where the input has data). This
is linear, so it is one (bands, C) matrix; synthetic HSIs are rendered by rendering the endmembers.
A band whose response lies (almost) entirely outside the input range is refused, naming the band and
the range; a band partly outside is rendered from the covered part and the coverage is logged.

    python -m ubf.data.sensors list
    python -m ubf.data.sensors render --sensor sentinel2a-msi:B2,B3,B4 --src DIR --out DIR [--wavelengths chikusei-59]
"""
import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from ubf.core.errors import UserError, cli_main
from ubf.core.logs import get_logger, setup_logging
from ubf.core.version import add_version_argument

TABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables", "sensors")
PRESET_FILES = {"sentinel2a-msi": "sentinel2a-msi.csv", "sentinel2a-msi-gaussian": "sentinel2a-msi-gaussian.csv",
                "landsat8-oli": "landsat8-oli.csv", "landsat9-oli2": "landsat9-oli2.csv"}
GRID_PRESETS = {"grid-10nm": 10.0, "grid-5nm": 5.0}
MAX_TABLE_BYTES = 64 * 2**20   # response tables are kilobytes; anything this large is not one
MIN_COVERAGE = 0.01       # below this share of its response inside the input range a band is "outside"
FULL_COVERAGE = 0.999     # below this a band is "partly outside" and its coverage is reported
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class Sensor:
    """Bands of a target sensor: full response curves (`grid`, `curves`) or Gaussians (`centers`, `fwhm`)."""
    name: str
    band_names: list
    grid: np.ndarray | None = None      # (N,) nm, for curves
    curves: np.ndarray | None = None    # (B, N) relative responses
    centers: np.ndarray | None = None   # (B,) nm, for Gaussians
    fwhm: np.ndarray | None = None      # (B,) nm

    @property
    def gaussian(self) -> bool:
        return self.curves is None

    def response(self, wavelengths: np.ndarray) -> np.ndarray:
        """(B, len(wavelengths)) responses; curves are interpolated linearly and zero outside their table."""
        wavelengths = np.asarray(wavelengths, dtype=np.float64)
        if self.gaussian:
            sigma = self.fwhm[:, None] * _FWHM_TO_SIGMA
            return np.exp(-0.5 * ((wavelengths[None, :] - self.centers[:, None]) / sigma) ** 2)
        return np.stack([np.interp(wavelengths, self.grid, c, left=0.0, right=0.0) for c in self.curves])

    def total_area(self) -> np.ndarray:
        """(B,) integral of each whole response (analytic for Gaussians, trapezoid over the table otherwise)."""
        if self.gaussian:
            return self.fwhm * _FWHM_TO_SIGMA * math.sqrt(2.0 * math.pi)
        return np.trapezoid(self.curves, self.grid, axis=1)

    def band_fwhm(self) -> np.ndarray:
        """(B,) nm: the Gaussians' FWHM, or each curve's width at half its maximum (linear interpolation)."""
        if self.gaussian:
            return self.fwhm.copy()
        widths = []
        for curve in self.curves:
            half = 0.5 * curve.max()
            above = np.nonzero(curve >= half)[0]
            first, last = above[0], above[-1]

            def crossing(i, j):  # where the curve passes `half` between grid points i and j
                if i == j or curve[i] == curve[j]:
                    return self.grid[j]
                return self.grid[i] + (half - curve[i]) * (self.grid[j] - self.grid[i]) / (curve[j] - curve[i])
            left = crossing(first - 1, first) if first > 0 else self.grid[first]
            right = crossing(last, last + 1) if last + 1 < len(curve) else self.grid[last]
            widths.append(right - left)
        return np.array(widths, dtype=np.float64)

    def band_centers(self) -> np.ndarray:
        """(B,) nm: the Gaussian centres, or each curve's response-weighted mean wavelength."""
        if self.gaussian:
            return self.centers.copy()
        return np.trapezoid(self.curves * self.grid, self.grid, axis=1) / self.total_area()

    def support(self) -> np.ndarray:
        """(B, 2) nm where each response is non-negligible (Gaussians: centre +- 3 FWHM)."""
        if self.gaussian:
            return np.stack([self.centers - 3 * self.fwhm, self.centers + 3 * self.fwhm], axis=1)
        spans = []
        for curve in self.curves:
            inside = np.nonzero(curve > 1e-3 * curve.max())[0]
            spans.append((self.grid[inside[0]], self.grid[inside[-1]]))
        return np.array(spans)

    def select(self, names: list, source: str) -> "Sensor":
        """The named bands only, in the given order."""
        missing = [n for n in names if n not in self.band_names]
        if missing:
            raise UserError(f"{source}: no band {', '.join(missing)} (bands: {', '.join(self.band_names)})")
        index = [self.band_names.index(n) for n in names]
        if self.gaussian:
            return Sensor(self.name, list(names), centers=self.centers[index], fwhm=self.fwhm[index])
        return Sensor(self.name, list(names), grid=self.grid, curves=self.curves[index])


def _read_text(path: str) -> str:
    """The file as UTF-8 text; a binary file (NUL bytes, invalid UTF-8) is a one-line error."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TABLE_BYTES + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) > MAX_TABLE_BYTES:
        raise UserError(f"{path}: larger than {MAX_TABLE_BYTES // 2**20} MiB; not a spectral-response table")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file (invalid UTF-8 at byte {err.start}); expected a CSV or JSON "
                        "spectral-response table") from None
    if "\0" in text:
        raise UserError(f"{path}: not a text file (NUL bytes); expected a CSV or JSON spectral-response table")
    return text


def _comment_free_rows(path: str) -> list[list[str]]:
    lines = [line for line in _read_text(path).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        return [[cell.strip() for cell in row] for row in csv.reader(lines)]
    except csv.Error as err:
        raise UserError(f"{path}: unreadable CSV ({err})") from None


def _numbers(path: str, rows: list[list[str]]) -> np.ndarray:
    try:
        return np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as err:
        raise UserError(f"{path}: non-numeric value in the response table ({err})") from None


def _gaussian_sensor(path: str, name: str, names, centers, fwhm) -> Sensor:
    try:
        if any(isinstance(v, (str, bool)) for v in list(centers) + list(fwhm)):
            raise ValueError("a value is text, not a number")
        centers, fwhm = np.asarray(centers, dtype=np.float64), np.asarray(fwhm, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: band centres and FWHM must be numbers ({err})") from None
    if centers.ndim != 1 or centers.shape != fwhm.shape or centers.size == 0:
        raise UserError(f"{path}: expected one centre and one FWHM per band, at least one band")
    if not (np.all(np.isfinite(centers)) and np.all(np.isfinite(fwhm)) and np.all(fwhm > 0)):
        raise UserError(f"{path}: band centres must be numbers and every FWHM positive")
    return Sensor(name, [str(n) for n in names], centers=centers, fwhm=fwhm)


def _curve_sensor(path: str, name: str, names, grid, curves) -> Sensor:
    try:
        grid, curves = np.asarray(grid, dtype=np.float64), np.asarray(curves, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: wavelengths and responses must be numbers, one list per band ({err})") from None
    if not names:
        raise UserError(f"{path}: no bands")
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise UserError(f"{path}: wavelengths must increase strictly (at least two rows)")
    if curves.shape != (len(names), grid.size) or not np.all(np.isfinite(curves)):
        raise UserError(f"{path}: responses must be numbers, one column per band")
    if np.any(curves < -1e-3 * curves.max()):
        raise UserError(f"{path}: negative responses beyond measurement noise")
    curves = np.clip(curves, 0.0, None)  # published tables carry noise of order -1e-5 outside the band
    empty = [n for n, c in zip(names, curves) if c.max() <= 0]
    if empty:
        raise UserError(f"{path}: band {', '.join(empty)} has no response above zero")
    return Sensor(name, [str(n) for n in names], grid=grid, curves=curves)


def read_sensor_csv(path: str, name: str) -> Sensor:
    rows = _comment_free_rows(path)
    if len(rows) < 2:
        raise UserError(f"{path}: empty response table")
    header = [h.lower() for h in rows[0]]
    if header[:3] == ["band", "center_nm", "fwhm_nm"]:
        values = _numbers(path, [row[1:3] for row in rows[1:]])
        return _gaussian_sensor(path, name, [row[0] for row in rows[1:]], values[:, 0], values[:, 1])
    if header[0] in ("wavelength_nm", "wavelength", "wl"):
        values = _numbers(path, rows[1:])
        if values.shape[1] != len(header):
            raise UserError(f"{path}: rows have {values.shape[1]} values, the header names {len(header)} columns")
        return _curve_sensor(path, name, rows[0][1:], values[:, 0], values[:, 1:].T)
    raise UserError(f"{path}: header must be 'wavelength_nm,<band>,...' (curves) or 'band,center_nm,fwhm_nm'")


def read_sensor_json(path: str, name: str) -> Sensor:
    try:
        data = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"{path}: unreadable JSON ({str(err)[:100]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with 'bands' or 'wavelength_nm' and 'responses'")
    try:
        if "bands" in data:
            bands = data["bands"]
            return _gaussian_sensor(path, name, [b["name"] for b in bands], [b["center_nm"] for b in bands],
                                    [b["fwhm_nm"] for b in bands])
        responses = data["responses"]
        return _curve_sensor(path, name, list(responses), data["wavelength_nm"], list(responses.values()))
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: expected 'bands' [{{name, center_nm, fwhm_nm}}] or 'wavelength_nm' and "
                        f"'responses' {{band: [...]}} ({err})") from None


def grid_sensor(step: float, wavelengths: np.ndarray, name: str) -> Sensor:
    """Gaussian bands every `step` nm (FWHM = step) whose centre +- one FWHM lies inside the input range."""
    lo, hi = float(np.min(wavelengths)), float(np.max(wavelengths))
    first, last = math.ceil((lo + step) / step) * step, math.floor((hi - step) / step) * step
    if last < first:
        raise UserError(f"--sensor {name}: the input range {lo:.1f}-{hi:.1f} nm is too narrow for a {step:g}-nm grid")
    centers = np.arange(first, last + step / 2, step)
    return Sensor(name, [f"{c:g} nm" for c in centers], centers=centers, fwhm=np.full(centers.size, step))


def load_sensor(spec: str, wavelengths=None) -> Sensor:
    """A preset name or a CSV/JSON file, optionally followed by ':BAND,BAND' to keep some bands."""
    name, _, bands = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if name in GRID_PRESETS:
        if wavelengths is None:
            raise UserError(f"--sensor {name}: needs the input's wavelengths")
        sensor = grid_sensor(GRID_PRESETS[name], np.asarray(wavelengths), name)
    else:
        path = os.path.join(TABLES, PRESET_FILES[name]) if name in PRESET_FILES else name
        if not os.path.isfile(path):
            presets = ", ".join(list(PRESET_FILES) + list(GRID_PRESETS))
            raise UserError(f"--sensor {name}: neither a preset ({presets}) nor a file")
        reader = read_sensor_json if path.lower().endswith(".json") else read_sensor_csv
        sensor = reader(path, os.path.splitext(os.path.basename(name))[0])
    if bands:
        sensor = sensor.select([b.strip() for b in bands.split(",") if b.strip()], f"--sensor {spec}")
    return sensor


def _trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    gaps = np.diff(grid)
    weights = np.zeros_like(grid)
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    return weights


def integration_grid(sensor: Sensor, wavelengths: np.ndarray) -> np.ndarray:
    """The input wavelengths, plus the table's own wavelengths or a fine step for narrow Gaussians."""
    lo, hi = wavelengths.min(), wavelengths.max()
    if sensor.gaussian:
        step = max(min(1.0, float(sensor.fwhm.min()) / 20.0), 0.01)
        extra = np.arange(lo, hi, step)
    else:  # the table's points plus a step a quarter of its spacing (r and x are both piecewise linear)
        step = max(float(np.min(np.diff(sensor.grid))) / 4.0, 0.01)
        extra = np.concatenate([sensor.grid[(sensor.grid > lo) & (sensor.grid < hi)], np.arange(lo, hi, step)])
    return np.unique(np.concatenate([wavelengths, extra]))


def render_matrix(sensor: Sensor, wavelengths, log_coverage: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """((B, C) matrix M with band values = M @ spectrum, (B,) share of each response inside the range).

    `wavelengths` (C,) nm of the input bands. Refuses bands (almost) entirely outside their range.
    """
    wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
    order = np.argsort(wavelengths)
    if wavelengths.size < 2 or np.any(np.diff(wavelengths[order]) <= 0):
        raise UserError("--sensor: the input needs at least two distinct wavelengths")
    grid = integration_grid(sensor, wavelengths[order])
    # hat functions: column c is the linear interpolation of a spectrum that is 1 at band c, 0 elsewhere
    interpolation = np.stack([np.interp(grid, wavelengths[order], np.eye(wavelengths.size)[i]) for i in order], axis=1)
    weighted = sensor.response(grid) * _trapezoid_weights(grid)[None, :]
    inside = weighted.sum(axis=1)
    coverage = inside / sensor.total_area()
    lo, hi = wavelengths.min(), wavelengths.max()
    outside = [i for i, c in enumerate(coverage) if c < MIN_COVERAGE]
    if outside:
        described = ", ".join(f"{sensor.band_names[i]} ({c:.0f} nm)"
                              for i, c in zip(outside, sensor.band_centers()[outside]))
        keep = [n for i, n in enumerate(sensor.band_names) if i not in outside]
        hint = f"; keep the others with --sensor {sensor.name}:{','.join(keep)}" if keep else ""
        raise UserError(f"--sensor {sensor.name}: band(s) {described} lie outside the input's wavelength range "
                        f"{lo:.1f}-{hi:.1f} nm{hint}")
    if log_coverage:
        for name, share in zip(sensor.band_names, coverage):
            if share < FULL_COVERAGE:
                get_logger().warning("--sensor %s: band %s is partly outside %.1f-%.1f nm; %.1f %% of its response "
                                     "is covered and it is rendered from that part", sensor.name, name, lo, hi,
                                     100 * min(share, 1.0))
    matrix = weighted @ interpolation / inside[:, None]
    return matrix.astype(np.float64), coverage


def render_cube(cube: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W, B) float32 with the matrix of `render_matrix`."""
    return np.einsum("hwc,bc->hwb", np.asarray(cube, dtype=np.float64), matrix).astype(np.float32)


# the small command for real HSIs -------------------------------------------------------------------

def render_folder(sensor_spec: str, src: str, out: str, fmt: str = "mat", key: str | None = None,
                  wavelengths=None, overwrite: bool = False) -> list[str]:
    """Render every HSI of `src` (.mat, ENVI, TIFF) into the sensor's bands; returns the written paths."""
    from ubf.core.fs import flat_name
    from ubf.data.cubes import list_cube_files, provenance_description, read_scene, write_cube
    from ubf.data.hsi_dataset import resolve_wavelengths
    files = list_cube_files(src)
    if not files:
        raise UserError(f"{src}: no HSI files (.mat, ENVI .hdr, .tif)")
    written, cache = [], {}
    for path in files:
        scene = read_scene(path, key)
        cube, found = scene.cube, scene.wavelengths
        nm = found if found is not None else (resolve_wavelengths(wavelengths, cube.shape[2], path)
                                              if wavelengths is not None else None)
        if nm is None:
            raise UserError(f"{path}: no wavelengths in the file; pass --wavelengths (e.g. chikusei-59)")
        signature = tuple(np.round(nm, 4))
        if signature not in cache:
            sensor = load_sensor(sensor_spec, nm)
            cache[signature] = (sensor, render_matrix(sensor, nm)[0])
        sensor, matrix = cache[signature]
        rendered = render_cube(cube, matrix)
        target = os.path.join(out, flat_name(path, src))
        nodata = None
        if scene.valid is not None and fmt in ("envi", "tiff"):  # the same grid: no-data stays no-data
            rendered[~scene.valid] = np.float32(scene.nodata)
            nodata = scene.nodata
        written.append(write_cube(target, fmt, {"Y": rendered, "wavelengths": sensor.band_centers(),
                                                "band_names": np.array(sensor.band_names, dtype=object)},
                                  sensor.band_centers(), sensor.band_names, overwrite=overwrite, raster_key="Y",
                                  fwhm=sensor.band_fwhm(), nodata=nodata, georef=scene.georef,
                                  description=provenance_description(f"{os.path.basename(path)} rendered into {sensor.name} "
                                                         f"bands {', '.join(sensor.band_names)}")))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ubf.data.sensors",
                                     description="Target sensors: list the presets, or render real HSIs into a "
                                                 "sensor's bands")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the built-in sensors and their bands")
    render = sub.add_parser("render", help="render every HSI of a folder into a sensor's bands")
    render.add_argument("--sensor", required=True, help="preset or CSV/JSON file, optionally NAME:BAND,BAND")
    render.add_argument("--src", required=True, help="folder of HSIs (.mat, ENVI .hdr, .tif)")
    render.add_argument("--out", required=True, help="output folder")
    render.add_argument("--format", choices=("mat", "mat73", "envi", "tiff"), default="mat",
                        help="mat (default: Y, wavelengths, band_names), mat73 (the same in HDF5), envi or tiff "
                             "(with wavelengths, FWHM, band names and the input's georeferencing)")
    render.add_argument("--key", help="variable name of the cube in .mat files")
    render.add_argument("--wavelengths", help="for files without wavelengths: chikusei-59, chikusei-128 or a "
                        "JSON list of nm")
    render.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    return parser


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "list":
        for name in PRESET_FILES:
            sensor = load_sensor(name)
            print(f"{name}: " + ", ".join(f"{b} {c:.0f} nm" for b, c in zip(sensor.band_names, sensor.band_centers())))
        for name, step in GRID_PRESETS.items():
            print(f"{name}: Gaussian bands every {step:g} nm (FWHM {step:g} nm) over the input's range")
        return 0
    wavelengths = args.wavelengths
    if wavelengths and wavelengths.lstrip().startswith("["):
        try:
            wavelengths = json.loads(wavelengths)
        except json.JSONDecodeError as err:
            raise UserError(f"--wavelengths: not a JSON list of numbers ({err})") from None
    written = render_folder(args.sensor, args.src, args.out, args.format, args.key, wavelengths, args.overwrite)
    print(f"rendered {len(written)} files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
