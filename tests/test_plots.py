"""Pictures people read: abundance previews and sample sheets keep the exact map pixels and gain captions,
endmember indices and a colourbar; spectra plots name quantity and unit on both axes."""
import numpy as np
import pytest
import torch

from ubf.core import previews
from ubf.evaluation import plots as evaluation_plots
from ubf.pipeline import plots
from ubf.pipeline.diffusion_sample import preview_sheet


def find_block(image: np.ndarray, block: np.ndarray) -> list[tuple[int, int]]:
    """Every (row, column) where `block` sits in `image` pixel for pixel."""
    h, w = block.shape
    hits = []
    for y, x in zip(*np.nonzero(image[:image.shape[0] - h + 1, :image.shape[1] - w + 1] == block[0, 0])):
        if np.array_equal(image[y:y + h, x:x + w], block):
            hits.append((int(y), int(x)))
    return hits


def grey(values: np.ndarray) -> np.ndarray:
    """Abundance -> the grey level a PNG shows, by hand: round(255 a), 0 black, 255 white."""
    return np.floor(np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)


def test_colourbar_runs_from_white_at_one_to_black_at_zero():
    # linspace(1, 0, 5) = 1, .75, .5, .25, 0 -> 255, 191.25, 127.5, 63.75, 0 rounded half up
    assert previews.colourbar(5, width=2)[:, 0].tolist() == [255, 191, 128, 64, 0]


def test_preview_keeps_every_map_pixel_and_adds_labels_and_a_colourbar():
    rng = np.random.default_rng(3)
    abundance = rng.dirichlet(np.ones(3), size=(16, 16)).astype(np.float32)
    image = previews.abundance_preview(abundance, "farmland_140.mat")
    factor = -(-previews.MIN_MAP_SIZE // 16)  # 16-pixel maps are enlarged to at least MIN_MAP_SIZE
    for j in range(3):
        block = grey(abundance[..., j]).repeat(factor, 0).repeat(factor, 1)
        (y, x), = find_block(image, block)  # exactly once, unscaled in value
        if j == 0:
            first = (y, x)
        else:
            assert y == first[0] and x > first[1]  # side by side, in endmember order
    bar = previews.colourbar(16 * factor)
    (bar_y, bar_x), = find_block(image, bar)
    assert bar_y == first[0] and bar_x > x + 16 * factor  # right of the last map, level with the maps
    # text above the maps (title, caption, endmember indices) and beside the bar (ticks): dark pixels there
    assert (image[:first[0]] < 100).sum() > 50 and (image[bar_y:bar_y + bar.shape[0], bar_x + bar.shape[1]:] < 100).any()


def test_the_caption_is_what_differs_between_two_files():
    abundance = np.random.default_rng(0).dirichlet(np.ones(4), size=(48, 48)).astype(np.float32)
    a = previews.abundance_preview(abundance, "a.mat")
    b = previews.abundance_preview(abundance, "a_much_longer_name_of_another_file_entirely.mat")
    assert b.shape[1] > a.shape[1]  # the picture widens for a caption that does not fit
    blank = previews.abundance_preview(abundance, "")
    assert a.shape == blank.shape and not np.array_equal(a, blank)  # a drawn caption, same layout


def test_sample_sheet_rows_carry_each_sample_and_its_file_name():
    rng = np.random.default_rng(1)
    samples = rng.dirichlet(np.ones(2), size=(3, 64, 64)).astype(np.float32)
    names = [f"4_{i}_sample_abu.mat" for i in (1, 2, 3)]
    sheet = preview_sheet(samples, names)
    rows = [find_block(sheet, grey(s[..., 0])) for s in samples]
    assert all(len(r) == 1 for r in rows)
    tops = [r[0][0] for r in rows]
    assert tops == sorted(tops) and len(set(tops)) == 3  # one row per sample, in order
    unnamed = preview_sheet(samples)
    assert unnamed.shape[0] == sheet.shape[0] and not np.array_equal(unnamed, sheet)


def capture(monkeypatch, module):
    figures = []
    monkeypatch.setattr(module, "save_figure", lambda figure, path, tight=False: figures.append(figure) or path)
    return figures


def test_spectra_plot_names_quantity_and_unit(monkeypatch):
    figures = capture(monkeypatch, plots)
    endmembers = np.random.default_rng(0).random((5, 3))
    mean, std = endmembers.mean(1), endmembers.std(1)
    plots.plot_spectra("x.png", endmembers, mean, std, wavelengths=[450, 500, 550, 600, 650], real_mean=mean,
                       real_std=std)
    plots.plot_spectra("y.png", endmembers, mean, std, y_label=plots.value_label("global_minmax"))
    with_nm, without = figures
    for axis in with_nm.axes:
        assert axis.get_xlabel() == "wavelength (nm)"
        assert axis.get_ylabel() == "reflectance (unitless)\nmin-max normalised per file"
    for axis in without.axes:
        assert axis.get_xlabel() == "band index" and "endmembers rescaled to [0, 1]" in axis.get_ylabel()
    assert all("value" != axis.get_ylabel() for f in figures for axis in f.axes)


def test_generation_plots_label_values_and_give_the_density_a_colourbar(monkeypatch):
    figures = capture(monkeypatch, evaluation_plots)
    pixels = {"real": torch.rand(200, 4), "synthetic": torch.rand(200, 4)}
    evaluation_plots.mean_spectra(pixels, "m.png", wavelengths=[400, 500, 600, 700])
    evaluation_plots.band_density(pixels, "d.png")
    spectra, density = figures
    assert spectra.axes[0].get_ylabel() == "normalised reflectance (unitless)"
    assert spectra.axes[0].get_xlabel() == "wavelength (nm)"
    images = [axis for axis in density.axes if axis.get_title() in pixels]
    bars = [axis for axis in density.axes if axis.get_ylabel() == "log10 density"]
    assert len(images) == 2 and len(bars) == 2
    assert all(axis.get_ylabel() == "normalised reflectance (unitless)" for axis in images)


@pytest.mark.parametrize("scaling, text", [("per_file", "min-max normalised per file"),
                                           ("global_minmax", "endmembers rescaled to [0, 1]")])
def test_value_label(scaling, text):
    assert plots.value_label(scaling) == f"reflectance (unitless)\n{text}"
    assert plots.value_label(scaling, "radiance") == f"radiance (unitless)\n{text}"
