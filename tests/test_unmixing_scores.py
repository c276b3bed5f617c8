"""Scores of stage 1 for synthesis (ubf/evaluation/unmixing_scores.py) and their report keys in
`Evaluate.py reconstruction`. Expected values are computed by hand or with plain numpy here."""
import copy
import json
import os

import numpy as np
import pytest
import scipy.io as sio
import torch

from conftest import shared_path
from ubf.cli import evaluate as Evaluate
from ubf.core.checkpoint import save_checkpoint
from ubf.core.errors import UserError
from ubf.data.hsi_dataset import prepare_pair
from ubf.data.matio import read_hsi, write_mat
from ubf.evaluation.unmixing_scores import (AbundanceErrors, MapContrast, NearestPixels, abundance_rmse,
                                            distance_to_data, endmember_sad, max_abundance_mean,
                                            reference_abundances, reference_endmembers, spatial_std)
from ubf.models.unmixing import build_unmixing_model
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS


def test_map_contrast_by_hand():
    # 2 x 2 pixels, K = 2: largest abundances 0.9, 0.5, 0.7, 1.0 -> mean 0.775
    maps = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.3, 0.7], [0.0, 1.0]]])
    assert max_abundance_mean(maps) == pytest.approx(0.775)
    # first map 0.9, 0.5, 0.3, 0.0: mean 0.425, population variance (0.475^2 + 0.075^2 + 0.125^2 + 0.425^2) / 4
    std = np.sqrt((0.475 ** 2 + 0.075 ** 2 + 0.125 ** 2 + 0.425 ** 2) / 4)
    np.testing.assert_allclose(spatial_std(maps), [std, std])  # the second map is 1 - the first
    assert max_abundance_mean(np.full((3, 3, 4), 0.25)) == pytest.approx(0.25)  # uniform: 1 / K
    np.testing.assert_allclose(spatial_std(np.full((3, 3, 4), 0.25)), 0.0)
    # per image, then the mean over images (a 1-pixel pure image and the 4-pixel one: (1 + 0.775) / 2)
    assert max_abundance_mean([maps, np.array([[[0.0, 1.0]]])]) == pytest.approx(0.8875)
    contrast = MapContrast()
    contrast.add(maps)
    contrast.add(maps.reshape(-1, 2)[::-1])
    result = contrast.result()
    assert result["max_abundance_mean"] == pytest.approx(0.775)
    assert result["spatial_std_mean"] == pytest.approx(std)


def test_nearest_pixel_angles_and_distances_by_hand():
    pixels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [3.0, 4.0]])
    # endmembers: (1, 1) is 45 deg from (1, 0) and (0, 1) and 8.13 deg from (3, 4); (2, 0) is parallel to (1, 0)
    ends = np.array([[1.0, 2.0], [1.0, 0.0]])
    result = distance_to_data(ends, pixels)
    np.testing.assert_allclose(result["sam_deg"], [np.degrees(np.arccos(7 / (5 * np.sqrt(2)))), 0.0], atol=1e-9)
    rms = np.sqrt((1 + 1 + 0 + 25) / 4)  # the zero pixel counts for the norm, not for the angle
    np.testing.assert_allclose(result["distance_rel"], [1.0 / rms, 1.0 / rms])
    chunked = NearestPixels(ends, chunk=1)
    for block in (pixels[:1], pixels[1:3], pixels[3:]):
        chunked.add(block)
    np.testing.assert_allclose(chunked.result()["sam_deg"], result["sam_deg"], atol=1e-12)
    np.testing.assert_allclose(chunked.result()["distance_rel"], result["distance_rel"])
    # an endmember that is a real pixel is at exactly 0 (the stable angle, not arccos of a rounded cosine)
    rng = np.random.default_rng(0)
    cube = rng.uniform(0.0, 1.0, size=(8, 9, 30)).astype(np.float32)
    picked = cube.reshape(-1, 30)[[5, 40]].T
    exact = distance_to_data(picked, cube)
    assert exact["sam_deg"].max() == 0.0 and exact["distance_rel"].max() == 0.0


def test_endmember_sad_after_the_best_permutation():
    truth = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    result = endmember_sad(truth[:, [2, 0, 1]] * 3.0, truth)  # permuted and scaled: SAD is 0
    assert result["sad_mean_deg"] == pytest.approx(0.0, abs=1e-6)
    assert result["match"].tolist() == [1, 2, 0]
    tilted = np.array([[np.cos(np.radians(30)), 0.0], [np.sin(np.radians(30)), 1.0], [0.0, 0.0]])
    result = endmember_sad(tilted, truth[:, :2])
    np.testing.assert_allclose(result["sad_deg"], [30.0, 0.0], atol=1e-9)
    # more estimated than reference endmembers: the best K_ref of them
    result = endmember_sad(np.concatenate([tilted, truth[:, :1]], axis=1), truth[:, :2])
    assert result["sad_mean_deg"] == pytest.approx(0.0, abs=1e-6) and result["match"].tolist() == [2, 1]


def test_abundance_rmse_after_the_best_permutation_and_merged():
    rng = np.random.default_rng(1)
    reference = rng.dirichlet(np.ones(3), size=(6, 5))
    estimate = reference[..., [1, 2, 0]].copy()
    estimate[..., 0] += 0.1  # reference map 1 is off by 0.1 everywhere: RMSE sqrt(0.01 / 3) over three maps
    result = abundance_rmse(estimate, reference)
    assert result["rmse"] == pytest.approx(np.sqrt(0.01 / 3))
    assert result["match"].tolist() == [2, 0, 1]
    np.testing.assert_allclose(result["rmse_per_reference"], [0.0, 0.1, 0.0], atol=1e-12)
    # four estimated maps, the reference's first split in two halves: one-to-one leaves half of it out,
    # merged finds the split exactly
    split = np.concatenate([reference[..., :1] / 2, reference[..., :1] / 2, reference[..., 1:]], axis=-1)
    result = abundance_rmse(split, reference)
    expected = np.sqrt(((reference[..., 0] / 2) ** 2).mean() / 3)
    assert result["rmse"] == pytest.approx(expected)
    assert result["rmse_merged"] == pytest.approx(0.0, abs=1e-7)
    assert result["merge_groups"].tolist() == [0, 0, 1, 2]
    # accumulated over images = computed on all pixels at once
    errors = AbundanceErrors()
    errors.add(split[:2], reference[:2])
    errors.add(split[2:], reference[2:])
    assert errors.result()["rmse"] == pytest.approx(expected)


def test_reference_layouts():
    rng = np.random.default_rng(2)
    maps = rng.uniform(size=(4, 3, 2))  # H = 4, W = 3, K = 2
    # column-major pixels: A[k, j * H + i] = maps[i, j, k]
    columns = np.stack([maps[:, :, k].T.reshape(-1) for k in range(2)])
    np.testing.assert_array_equal(reference_abundances(columns, 4, 3, "x"), maps)
    np.testing.assert_array_equal(reference_abundances(columns.T, 4, 3, "x"), maps)
    np.testing.assert_array_equal(reference_abundances(maps, 4, 3, "x"), maps)
    with pytest.raises(UserError, match="f.mat: 'A': reference abundances of shape .5, 2. do not fit a 4 x 3"):
        reference_abundances(rng.uniform(size=(5, 2)), 4, 3, "f.mat: 'A'")
    with pytest.raises(UserError, match="NaN"):
        reference_abundances(np.full((4, 3, 2), np.nan), 4, 3, "x")
    ends = rng.uniform(size=(3, 7))  # K x C, as the benchmark's GT
    np.testing.assert_array_equal(reference_endmembers(ends, 7, "GT", "x"), ends.T)
    np.testing.assert_array_equal(reference_endmembers(ends.T, 7, "M", "x"), ends.T)
    assert reference_endmembers(rng.uniform(size=(4, 4, 7)), 7, "GT", "x") is None  # a cube, not endmembers


def test_benchmark_abundances_fit_the_cube():
    """S_GT read as (H, W, K) is aligned with read_hsi's cube: Moffett is linear in it with its GT
    endmembers (RMSE 0.017, measured with plain numpy); transposed maps fit far worse."""
    path = shared_path("hsi", "moffett.mat")
    cube, _ = read_hsi(path)
    raw = sio.loadmat(path)
    maps = reference_abundances(raw["S_GT"], cube.shape[0], cube.shape[1], path)
    fit = np.sqrt(((maps @ raw["GT"] - cube) ** 2).mean())
    swapped = np.sqrt(((maps.transpose(1, 0, 2) @ raw["GT"] - cube) ** 2).mean())
    assert fit < 0.02 < swapped


def tiny_checkpoint(tmp_path, bands: int, count: int, seed: int = 0) -> tuple[str, torch.nn.Module]:
    config = copy.deepcopy(UNMIXING_DEFAULTS)
    config["model"].update(encoder="pixel_mlp", mlp_hidden=8, num_endmembers=count)
    torch.manual_seed(seed)
    model = build_unmixing_model(config["model"], 3, bands)
    ckpt = str(tmp_path / "best.pth")
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": config, "band_indices": [0, 1, 2],
                     "in_channels": 3, "out_bands": bands, "wavelengths": None, "epoch": 0}, ckpt)
    return ckpt, model


def inferred(model, cube, bands=(0, 1, 2)):
    model_input, target = prepare_pair(cube, list(bands))
    with torch.no_grad():
        abundances, _ = model.eval()(torch.from_numpy(model_input.transpose(2, 0, 1).copy())[None])
    return abundances[0].permute(1, 2, 0).numpy().astype(np.float64), target.astype(np.float64)


def test_reconstruction_report_carries_the_scores_for_synthesis(tmp_path):
    rng = np.random.default_rng(3)
    cube = rng.uniform(0.1, 0.9, size=(12, 10, 6)).astype(np.float32)
    cube[0, 0], cube[-1, -1] = 0.0, 1.0  # min-max is the identity: reference endmembers keep their scale
    ckpt, model = tiny_checkpoint(tmp_path, 6, 3)
    abundances, target = inferred(model, cube)
    ends = model.endmembers().detach().double().numpy()
    # reference: the model's own maps in the order (e3, e1, e2), reference map 2 shifted by 0.1; reference
    # endmembers the model's own, one of them replaced by a spectrum 90 degrees from it
    reference = abundances[..., [2, 0, 1]].copy()
    reference[..., 1] += 0.1
    columns = np.stack([reference[:, :, k].T.reshape(-1) for k in range(3)])  # Jasper-style A, K x H*W
    truth = ends[:, [2, 0, 1]].T.copy()  # benchmark GT: K x C
    write_mat(str(tmp_path / "hsi" / "a.mat"), {"Y": cube, "A": columns, "GT": truth})
    out = str(tmp_path / "out")
    assert Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out", out,
                          "--no-progress", "--device", "cpu"]) == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["contrast.max_abundance_mean"] == pytest.approx(abundances.max(-1).mean(), rel=1e-5)
    for k in range(3):
        assert report[f"contrast.spatial_std.e{k + 1}"] == pytest.approx(abundances[..., k].std(), rel=1e-4)
        # nearest pixel by angle, computed here by brute force with arccos
        cos = target.reshape(-1, 6) @ ends[:, k] / (np.linalg.norm(target.reshape(-1, 6), axis=1)
                                                     * np.linalg.norm(ends[:, k]) + 1e-300)
        assert report[f"endmembers.sam_to_data_deg.e{k + 1}"] == pytest.approx(
            np.degrees(np.arccos(min(cos.max(), 1.0))), abs=1e-3)
    assert report["endmembers.sam_to_data_max_deg"] == pytest.approx(
        max(report[f"endmembers.sam_to_data_deg.e{k}"] for k in (1, 2, 3)))
    assert report["reference.abundance_key"] == "A" and report["reference.files_with_abundances"] == 1
    assert report["abundance_rmse"] == pytest.approx(np.sqrt(0.01 / 3), rel=1e-4)
    assert [report[f"abundance_match.ref{j}"] for j in (1, 2, 3)] == ["e3", "e1", "e2"]
    assert report["reference.endmember_key"] == "GT"
    assert report["endmember_sad_deg"] == pytest.approx(0.0, abs=1e-3)
    assert "abundance_rmse_merged" not in report  # K = K_ref
    summary = open(os.path.join(out, "summary.md")).read()
    assert "## Scores for synthesis" in summary and "RMSE 0.0577" in summary

    # --reference-key names the variable; a file without it is a one-line error; "none" skips the score
    out2 = str(tmp_path / "out2")
    assert Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out", out2,
                          "--no-progress", "--device", "cpu", "--reference-key", "none"]) == 0
    assert "abundance_rmse" not in json.load(open(os.path.join(out2, "report.json")))
    with pytest.raises(SystemExit):
        Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out",
                       str(tmp_path / "out3"), "--no-progress", "--device", "cpu", "--reference-key", "S_GT"])


def test_reference_that_does_not_fit_is_a_one_line_error(tmp_path, capsys):
    cube = np.random.default_rng(4).uniform(size=(8, 8, 6)).astype(np.float32)
    write_mat(str(tmp_path / "hsi" / "a.mat"), {"Y": cube, "S_GT": np.ones((8, 7, 3))})
    ckpt, _ = tiny_checkpoint(tmp_path, 6, 3)
    with pytest.raises(SystemExit):
        Evaluate.main(["reconstruction", "--ckpt", ckpt, "--hsi", str(tmp_path / "hsi"), "--out", str(tmp_path / "o"),
                       "--no-progress", "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "a.mat: 'S_GT': reference abundances of shape (8, 7, 3) do not fit a 8 x 8 image" in errors[0]
    assert not os.path.exists(tmp_path / "o" / "report.json")
