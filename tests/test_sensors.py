"""Target sensors: spectral-response rendering against analytic values and an independent integration."""
import json
import logging
import math
import os

import numpy as np
import pytest

from conftest import shared_path
from ubf.core.errors import UserError
from ubf.data.bands import chikusei_wavelengths
from ubf.data.matio import read_hsi, read_mat, write_mat
from ubf.data.sensors import TABLES, Sensor, load_sensor, main as sensors_main, render_cube, render_matrix


def gaussian(name, center, fwhm):
    return Sensor(name, [name], centers=np.array([float(center)]), fwhm=np.array([float(fwhm)]))


def test_gaussian_over_a_quadratic_spectrum_gives_the_analytic_value():
    wl = np.arange(400.0, 701.0, 1.0)
    a, b, c = 0.2, 1e-3, -2e-6
    spectrum = a + b * wl + c * wl ** 2
    mu, fwhm = 550.0, 40.0
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    expected = a + b * mu + c * (mu ** 2 + sigma ** 2)  # E[x(λ)] for λ ~ N(mu, sigma²)
    matrix, coverage = render_matrix(gaussian("g", mu, fwhm), wl)
    assert coverage[0] == pytest.approx(1.0, abs=1e-9)
    assert matrix.sum() == pytest.approx(1.0)
    assert (matrix @ spectrum)[0] == pytest.approx(expected, rel=1e-6)


def test_narrow_band_on_an_input_band_returns_that_band():
    """A Gaussian of FWHM 0.05 nm centred on input band i returns band i; under linear interpolation the
    neighbours get at most E|λ - λ_i| / h = sigma * sqrt(2 / pi) / h of weight (h: band spacing, 5.16 nm)."""
    crop, _ = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))
    wl = chikusei_wavelengths()
    fwhm, h = 0.05, np.diff(wl).min()
    leak = fwhm / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2 / math.pi) / h
    for index in (0, 30, 58):
        rendered = render_cube(crop, render_matrix(gaussian("n", wl[index], fwhm), wl, log_coverage=False)[0])[..., 0]
        neighbours = crop[..., max(index - 1, 0):index + 2]
        bound = leak * np.abs(neighbours - crop[..., index:index + 1]).max(axis=-1) + 1e-6
        assert np.all(np.abs(rendered - crop[..., index]) <= bound)
        assert np.abs(rendered - crop[..., index]).max() < 2e-4  # i.e. that band, to 0.1 % of the data's range


def independent_band_values(pixels, wavelengths, table_wl, response):
    """Direct integration, written apart from ubf/data/sensors.py: 0.05-nm grid, np.interp, np.trapezoid."""
    lo, hi = wavelengths.min(), wavelengths.max()
    fine = np.arange(lo, hi + 1e-9, 0.05)
    r = np.interp(fine, table_wl, response, left=0, right=0)
    values = [np.trapezoid(r * np.interp(fine, wavelengths, p), fine) / np.trapezoid(r, fine) for p in pixels]
    return np.array(values)


def test_real_chikusei_crops_in_sentinel2_visible_bands_match_direct_integration():
    with open(os.path.join(TABLES, "sentinel2a-msi.csv")) as f:
        lines = [line.strip().split(",") for line in f if not line.startswith("#")]
    header, rows = lines[0], np.array(lines[1:], dtype=float)
    wl = chikusei_wavelengths()
    sensor = load_sensor("sentinel2a-msi:B2,B3,B4", wl)
    matrix, coverage = render_matrix(sensor, wl)
    assert np.all(coverage > 0.999)  # B2-B4 lie inside 399-698 nm
    rng = np.random.default_rng(0)
    for block in ("block_118.mat", "block_282.mat"):
        crop, _ = read_hsi(shared_path("paper", "chikusei", block))
        rendered = render_cube(crop, matrix)
        pixels = rng.integers(0, 128, size=(40, 2))
        for band_index, band in enumerate(("B2", "B3", "B4")):
            expected = independent_band_values(crop[pixels[:, 0], pixels[:, 1]], wl, rows[:, 0],
                                               rows[:, header.index(band)])
            got = rendered[pixels[:, 0], pixels[:, 1], band_index]
            assert np.allclose(got, expected, rtol=2e-4, atol=1e-6), band


def test_bands_outside_the_range_are_refused_by_name():
    wl = chikusei_wavelengths()
    with pytest.raises(UserError) as info:
        render_matrix(load_sensor("sentinel2a-msi"), wl)
    message = str(info.value)
    assert "B6 (740 nm)" in message and "B12 (2202 nm)" in message and "B4" not in message.split("lie outside")[0]
    assert f"{wl.min():.1f}-{wl.max():.1f} nm" in message
    assert "--sensor sentinel2a-msi:B2,B3,B4,B5" in message  # B5 (695-714 nm) is partly inside


def test_partly_covered_bands_report_their_coverage(caplog):
    wl = np.arange(400.0, 701.0, 5.0)
    caplog.set_level(logging.WARNING, logger="hsisyn")
    logging.getLogger("hsisyn").propagate = True
    try:
        _, coverage = render_matrix(gaussian("edge", 700.0, 20.0), wl)
    finally:
        logging.getLogger("hsisyn").propagate = False
    assert coverage[0] == pytest.approx(0.5, abs=1e-3)  # half a Gaussian centred on the last band
    assert "band edge is partly outside 400.0-700.0 nm; 50.0 % of its response is covered" in caplog.text


def test_files_curves_and_centres_agree(tmp_path):
    """A curve table sampled from a Gaussian renders like the Gaussian given by centre and FWHM."""
    grid = np.arange(480.0, 620.0, 0.5)
    sigma = 30.0 / (2 * math.sqrt(2 * math.log(2)))
    curve = np.exp(-0.5 * ((grid - 550.0) / sigma) ** 2)
    with open(tmp_path / "curves.json", "w") as f:
        json.dump({"wavelength_nm": grid.tolist(), "responses": {"G": curve.tolist()}}, f)
    with open(tmp_path / "centres.csv", "w") as f:
        f.write("# made up\nband,center_nm,fwhm_nm\nG,550,30\n")
    with open(tmp_path / "curves.csv", "w") as f:
        f.write("wavelength_nm,G\n" + "".join(f"{w},{r}\n" for w, r in zip(grid, curve)))
    wl = chikusei_wavelengths()
    matrices = [render_matrix(load_sensor(str(tmp_path / n), wl), wl)[0] for n in ("curves.json", "centres.csv",
                                                                                   "curves.csv")]
    assert np.allclose(matrices[0], matrices[1], atol=2e-4) and np.allclose(matrices[0], matrices[2])
    with pytest.raises(UserError, match="no band B9"):
        load_sensor("landsat9-oli2:B9", wl)


def test_grid_presets_cover_the_input_range():
    wl = chikusei_wavelengths()
    sensor = load_sensor("grid-10nm", wl)
    centres = sensor.band_centers()
    assert np.all(np.diff(centres) == 10) and centres[0] >= wl.min() + 10 and centres[-1] <= wl.max() - 10
    _, coverage = render_matrix(sensor, wl)
    assert np.all(coverage > 0.99)


def test_synthesis_with_a_sensor_renders_every_pixel(tmp_path):
    from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis
    from test_synthesis import fabricate_abundances, fabricate_checkpoint
    ckpt = str(tmp_path / "best.pth")
    fabricate_checkpoint(ckpt)
    fabricate_abundances(str(tmp_path / "abu"))
    plain = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "plain"))
    spec = "sentinel2a-msi:B2,B3,B4"
    rendered = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "s2"), options=SynthesisOptions(sensor=spec))
    matrix = render_matrix(load_sensor(spec), chikusei_wavelengths())[0]
    for i in range(3):
        full = read_mat(os.path.join(plain["hsi_dir"], f"sample_{i}.mat"))
        s2 = read_mat(os.path.join(rendered["hsi_dir"], f"sample_{i}.mat"))
        assert s2["HSI"].shape == (8, 8, 3)
        assert np.allclose(s2["HSI"], render_cube(full["HSI"], matrix), atol=1e-5)
        assert np.allclose(s2["wavelengths"].ravel(), [492.4, 559.8, 664.6], atol=1.0)


def test_render_command_for_real_hsis(tmp_path):
    crop, _ = read_hsi(shared_path("paper", "chikusei", "block_118.mat"))
    write_mat(str(tmp_path / "src" / "a.mat"), {"Y": crop})
    assert sensors_main(["render", "--sensor", "landsat8-oli:B2,B3,B4", "--src", str(tmp_path / "src"),
                         "--out", str(tmp_path / "out"), "--wavelengths", "chikusei-59"]) == 0
    out = read_mat(str(tmp_path / "out" / "a.mat"))
    matrix = render_matrix(load_sensor("landsat8-oli:B2,B3,B4"), chikusei_wavelengths())[0]
    assert out["Y"].shape == (128, 128, 3) and np.allclose(out["Y"], render_cube(crop, matrix))
