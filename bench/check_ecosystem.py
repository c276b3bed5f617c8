"""What third-party clients read from this project's outputs, and what this project reads from theirs.

    python bench/check_ecosystem.py [--out DIR]

Writes one cube (wavelengths, FWHM, band names, a no-data row, a UTM grid) in every output format
(mat, mat73, envi, tiff) through ubf/data/writers.py, opens each file with every client that is
installed (Spectral Python, rasterio/GDAL, tifffile, h5py, scipy, the `mat73` package) and prints a
markdown table: per client and format, what it found (wavelengths and units, band names, default bands,
FWHM, no-data, CRS and grid, values equal to the cube). The second table is the other direction: files
written by rasterio and SPy (wavelengths, no-data, a bad band), read by `ubf.data.cubes.read_scene`.
A client that is not installed is listed as such. Used for docs/ecosystem.md.
"""
import argparse
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ubf.data.cubes import read_scene, write_cube  # noqa: E402
from ubf.data.raster_meta import Georef  # noqa: E402

WAVELENGTHS = np.array([460.0, 550.0, 640.0, 700.0, 800.0])
FWHM = np.full(5, 20.0)
NAMES = ["blue", "green", "red", "red edge", "nir"]
GEOREF = Georef(transform=(500000.0, 30.0, 0.0, 4000000.0, 0.0, -30.0), epsg=32654, geographic=False)
NODATA = -9999.0


def make_cube() -> np.ndarray:
    cube = np.random.default_rng(0).random((12, 10, 5)).astype(np.float32)
    cube[0] = NODATA
    return cube


def yes(flag) -> str:
    return "yes" if flag else "no"


def close(values, expected) -> bool:
    try:
        return values is not None and np.allclose(np.asarray(values, dtype=float), expected, atol=1e-3)
    except (TypeError, ValueError):
        return False


def check_spy(path: str, fmt: str, cube) -> dict | str:
    try:
        import spectral.io.envi as envi
    except ImportError:
        return "not installed"
    if fmt != "envi":
        return "does not read this format"
    image = envi.open(path)
    m = image.metadata
    return {"wavelengths": f"{yes(close(image.bands.centers, WAVELENGTHS))} ({image.bands.band_unit})",
            "band names": yes(m.get("band names") == NAMES), "default bands": ",".join(m.get("default bands", [])),
            "fwhm": yes(close(image.bands.bandwidths, FWHM)), "no-data": m.get("data ignore value", "no"),
            "georeferencing": "map info" if "map info" in m else "no",
            "values": yes(np.array_equal(image.load(), cube))}


def check_rasterio(path: str, fmt: str, cube) -> dict | str:
    try:
        import rasterio
    except ImportError:
        return "not installed (pip install rasterio)"
    target = path[:-4] + ".img" if fmt == "envi" else path
    if fmt in ("mat", "mat73"):
        target = f'HDF5:"{path}"://HSI' if fmt == "mat73" else path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = rasterio.open(target)
        except Exception as err:  # noqa: BLE001
            return f"cannot open ({str(err).splitlines()[0][:60]})"
    with src:
        values = src.read()
        tags = [src.tags(b + 1) for b in range(src.count)]
        imagery = [src.tags(b + 1, ns="IMAGERY") for b in range(src.count)]
        wl = [t.get("wavelength") for t in tags]
        units = {t.get("wavelength_units") for t in tags}
        central = [i.get("CENTRAL_WAVELENGTH_UM") for i in imagery]
        found = {"wavelengths": f"{yes(close(wl, WAVELENGTHS))} ({', '.join(sorted(u for u in units if u)) or '-'})",
                 "CENTRAL_WAVELENGTH_UM": yes(close([float(c) * 1000 if c else np.nan for c in central], WAVELENGTHS)),
                 "band names": yes(all(n in (d or "") for n, d in zip(NAMES, src.descriptions))),
                 "fwhm": yes(close([float(i.get("FWHM_UM", "nan")) * 1000 for i in imagery], FWHM)),
                 "no-data": str(src.nodata),
                 "georeferencing": f"{src.crs.to_epsg() if src.crs else 'no CRS'}, "
                                   f"{'grid' if tuple(src.transform)[:6] == (30, 0, 500000, 0, -30, 4000000) else 'no grid'}"}
        if values.shape == (cube.shape[2],) + cube.shape[:2]:
            found["values"] = yes(np.array_equal(values.transpose(1, 2, 0), cube))
        else:
            found["values"] = f"shape {values.shape}"
        return found


def check_tifffile(path: str, fmt: str, cube) -> dict | str:
    try:
        import tifffile
    except ImportError:
        return "not installed"
    if fmt != "tiff":
        return "does not read this format"
    with tifffile.TiffFile(path) as tif:
        values = tif.asarray()
        page = tif.pages[0]
        return {"GDAL_METADATA": yes(42112 in page.tags), "no-data": str(page.tags.get(42113).value if 42113 in page.tags
                                                                         else "no"),
                "georeferencing": yes(tif.is_geotiff), "values": yes(np.array_equal(values, cube))}


def check_hdf5(path: str, fmt: str, cube) -> dict | str:
    if fmt != "mat73":
        return "does not read this format"
    import h5py
    with h5py.File(path, "r") as f:
        found = {"keys": ", ".join(sorted(f.keys())),
                 "values": yes(np.array_equal(f["HSI"][()].T, cube)) + " (transposed: MATLAB's H x W x C)",
                 "MATLAB_class": f["HSI"].attrs["MATLAB_class"].decode()}
    try:
        import mat73
        loaded = mat73.loadmat(path)
        found["mat73 package"] = yes(np.array_equal(loaded["HSI"], cube)) + ", wavelengths " + yes(
            close(loaded["wavelengths"], WAVELENGTHS))
    except ImportError:
        found["mat73 package"] = "not installed"
    return found


def check_scipy(path: str, fmt: str, cube) -> dict | str:
    import scipy.io as sio
    if fmt != "mat":
        return "does not read v7.3 (use h5py)" if fmt == "mat73" else "does not read this format"
    data = sio.loadmat(path)
    return {"keys": ", ".join(sorted(k for k in data if not k.startswith("__"))),
            "wavelengths": yes(close(data["wavelengths"].ravel(), WAVELENGTHS)),
            "values": yes(np.array_equal(data["HSI"], cube))}


CLIENTS = {"Spectral Python (SPy)": check_spy, "rasterio / GDAL": check_rasterio, "tifffile": check_tifffile,
           "h5py / MATLAB v7.3": check_hdf5, "scipy.io": check_scipy}


def outputs_table(folder: str) -> list[str]:
    cube = make_cube()
    paths = {}
    for fmt in ("mat", "mat73", "envi", "tiff"):
        paths[fmt] = write_cube(os.path.join(folder, fmt), fmt, {"HSI": cube, "wavelengths": WAVELENGTHS}, WAVELENGTHS,
                                NAMES, raster_key="HSI", fwhm=FWHM, nodata=NODATA, georef=GEOREF,
                                description="check_ecosystem test cube")
    lines = ["| client | format | what it reads |", "|---|---|---|"]
    for name, check in CLIENTS.items():
        for fmt, path in paths.items():
            try:
                found = check(path, fmt, cube)
            except Exception as err:  # noqa: BLE001 - the table says what failed
                found = f"error: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            if isinstance(found, str):
                if "does not read" in found:
                    continue
                text = found
            else:
                text = "; ".join(f"{k}: {v}" for k, v in found.items())
            lines.append(f"| {name} | {fmt} | {text} |")
    return lines


def inputs_table(folder: str) -> list[str]:
    lines = ["| written by | file | what read_scene finds |", "|---|---|---|"]
    cube = make_cube()
    cube[..., 2][5, 5] = 0.5  # a value in the bad band only
    try:
        import rasterio
        from rasterio.transform import from_origin
        path = os.path.join(folder, "rasterio.tif")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path, "w", driver="GTiff", height=12, width=10, count=5, dtype="float32",
                               crs="EPSG:32654", transform=from_origin(500000, 4000000, 30, 30), nodata=NODATA,
                               compress="lzw") as dst:
                dst.write(cube.transpose(2, 0, 1))
                for b in range(5):
                    dst.update_tags(b + 1, wavelength=str(WAVELENGTHS[b] / 1000), wavelength_units="micrometers")
        lines.append(f"| rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}) | LZW GeoTIFF, "
                     f"wavelengths in um, GDAL_NODATA | {describe(read_scene(path))} |")
    except ImportError:
        lines.append("| rasterio | - | not installed |")
    try:
        import spectral
        import spectral.io.envi as envi
        path = os.path.join(folder, "spy.hdr")
        envi.save_image(path, cube, ext=".img", interleave="bil", force=True,
                        metadata={"wavelength": list(WAVELENGTHS), "wavelength units": "Nanometers",
                                  "fwhm": list(FWHM), "bbl": [1, 1, 0, 1, 1], "data ignore value": NODATA,
                                  "map info": "{UTM, 1, 1, 500000, 4000000, 30, 30, 54, North, WGS-84}"})
        lines.append(f"| SPy {spectral.__version__} | ENVI BIL, bbl, data ignore value, map info | "
                     f"{describe(read_scene(path))} |")
    except ImportError:
        lines.append("| Spectral Python | - | not installed |")
    return lines


def describe(scene) -> str:
    wl = ", ".join(f"{w:g}" for w in scene.wavelengths) if scene.wavelengths is not None else "none"
    return (f"{scene.cube.shape[2]} bands ({wl} nm); dropped bands {scene.dropped_bands or 'none'}; "
            f"{scene.invalid_count} no-data pixels masked; "
            f"georeferencing {scene.georef.describe() if scene.georef else 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the files (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.out or tempfile.mkdtemp(prefix="ubf-ecosystem-")
    os.makedirs(folder, exist_ok=True)
    print("\n".join(outputs_table(folder)))
    print()
    print("\n".join(inputs_table(folder)))


if __name__ == "__main__":
    main()
