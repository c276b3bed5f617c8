"""The abundance-map gap (ubf/evaluation/map_gap.py) and its study script (experiments/study_map_gap.py)."""
import json
import os
import sys

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import energy_distance as scipy_energy_distance

from ubf.data.matio import write_mat
from ubf.evaluation.map_gap import energy_distance, map_gap

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def smooth_maps(count, size, k, sigma, seed):
    """Abundance maps with blobs of about `sigma` pixels: a softmax of smoothed Gaussian noise per endmember,
    and a brightness map of the same smoothness around 0.8."""
    rng = np.random.default_rng(seed)
    maps, bright = [], []
    for _ in range(count):
        fields = np.stack([gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap") for _ in range(k)], 2)
        fields /= fields.std()
        weights = np.exp(3 * fields)
        maps.append((weights / weights.sum(2, keepdims=True)).astype(np.float32))
        b = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        bright.append((0.8 + 0.1 * b / b.std()).astype(np.float32))
    return maps, bright


def test_energy_distance_is_scipys_in_one_dimension_and_sqrt_two_gaps_between_point_masses():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 300), rng.normal(0.5, 2, 200)
    assert energy_distance(x, y) == pytest.approx(scipy_energy_distance(x, y), rel=1e-9)
    a, b = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.1, 0.3])  # 2 |a - b| - 0 - 0 for two point masses
    assert energy_distance(np.tile(a, (7, 1)), np.tile(b, (5, 1))) == pytest.approx(np.sqrt(2 * np.linalg.norm(a - b)))
    assert energy_distance(x, x) == 0.0


def test_map_gap_sees_pixel_composition_and_spatial_structure_apart():
    reference = smooth_maps(4, 64, 4, sigma=4, seed=0)
    same_kind = smooth_maps(6, 64, 4, sigma=4, seed=1)
    rng = np.random.default_rng(2)
    shuffled = ([m.reshape(-1, 4)[order].reshape(m.shape) for m in reference[0]
                 for order in [rng.permutation(64 * 64)]], None)
    flat = rng.dirichlet(np.ones(4), size=(6, 64, 64)).astype(np.float32)
    dirichlet = ([m for m in flat], [np.full((64, 64), 0.5, np.float32)] * 6)
    result = map_gap(reference, {"same": same_kind, "shuffled": shuffled, "dirichlet": dirichlet}, pixels=1500)
    floor = result["floor"]["abundance_energy"]
    # the same generator sits near the reference's own sampling floor; Dirichlet pixels are far from it
    assert result["same"]["abundance_energy"] < 2.5 * floor
    assert result["dirichlet"]["abundance_energy"] > 2 * floor
    # shuffling keeps every pixel (the distance stays near the floor) and removes all spatial structure
    assert result["shuffled"]["abundance_energy"] < 2.5 * floor
    assert result["reference"]["correlation_length"] > 4 and result["same"]["correlation_length"] > 4
    assert result["shuffled"]["correlation_length"] < 1.0
    assert result["reference"]["profile"][0] == pytest.approx(1.0)
    # brightness: a constant 0.5 is 0.3 from values around 0.8; a set without brightness has no such figure
    assert result["dirichlet"]["brightness_wasserstein"] == pytest.approx(0.3, abs=0.02)
    assert result["same"]["brightness_wasserstein"] < 0.03
    assert "brightness_wasserstein" not in result["shuffled"]


def test_the_floor_is_the_distance_between_the_two_halves_of_the_scene():
    """Left half pure endmember 0, right half pure endmember 1: the halves are two point masses apart."""
    scene = np.zeros((16, 32, 3), np.float32)
    scene[:, :16, 0] = 1
    scene[:, 16:, 1] = 1
    result = map_gap(([scene], None), {"scene": ([scene], None)}, pixels=256)
    assert result["floor"]["abundance_energy"] == pytest.approx(np.sqrt(2 * np.sqrt(2)))
    # the whole scene against its first half, a share p of the draw in the right half: D^2 = 2 sqrt(2) p^2,
    # p = 1/2 up to the draw of 256 of 512 pixels (std 0.022, so D within 3 std of 0.84)
    assert result["scene"]["abundance_energy"] == pytest.approx(np.sqrt(2 * np.sqrt(2)) / 2, abs=0.12)


def write_maps(folder, maps, bright, prefix):
    os.makedirs(folder, exist_ok=True)
    for i, (m, b) in enumerate(zip(maps, bright)):
        name = prefix if len(maps) == 1 else f"{prefix}_{i:04d}"
        write_mat(os.path.join(folder, f"{name}.mat"), {"Abu": m, "Bright": b})


def test_the_study_script_compares_every_map_source_with_the_scenes_maps_and_pools_the_gains(tmp_path, monkeypatch):
    sys.path.insert(0, EXPERIMENTS)
    import study
    import study_map_gap
    root = tmp_path / "study"
    scene_maps = smooth_maps(1, 64, 4, sigma=4, seed=0)
    write_maps(root / "sets_chikusei" / "aid-50", *smooth_maps(5, 64, 4, sigma=4, seed=1), "aid")
    write_maps(root / "control_structure_chikusei", *smooth_maps(5, 64, 4, sigma=1, seed=2), "dead_leaves")
    (root / "control_copies_chikusei").mkdir()  # HSIs, not maps: left out
    (root / "stage1_chikusei" / "checkpoint").mkdir(parents=True)
    (root / "stage1_chikusei" / "checkpoint" / "latest.pth").write_bytes(b"")
    (root / "data" / "chikusei" / "train").mkdir(parents=True)
    (root / "data" / "chikusei" / "train" / "block_118.mat").write_bytes(b"")
    for arm, scores in (("inferred_aid-50", (30.5, 31.0)), ("control_structure", (31.0, 32.0))):
        folder = root / f"downstream_chikusei_denoise_{arm}"
        folder.mkdir()
        report = {f"real_plus_synthetic.seed{s}.psnr": v for s, v in enumerate(scores)}
        report.update({"real_only.seed0.psnr": 31.0, "real_only.seed1.psnr": 31.0})
        (folder / "report.json").write_text(json.dumps(report))
    calls = []

    def fake_infer(argv, threads):  # stands in for Unmixing.py infer --hsi: the scene's maps
        calls.append(argv)
        write_maps(argv[argv.index("--out") + 1], *scene_maps, "block_118")
    monkeypatch.setattr(study, "run_cli", fake_infer)
    study_map_gap.main([str(root), "--pixels", "800"])
    report = json.loads((root / "map_gap_chikusei" / "report.json").read_text())
    assert report["sets"] == ["control_structure", "inferred_aid-50"]
    assert calls[0][:2] == ["Unmixing.py", "infer"] and "--hsi" in calls[0]
    assert report["reference"]["n_maps"] == 1 and report["inferred_aid-50"]["n_maps"] == 5
    # blobs of sigma 1 are smaller than the scene's sigma 4; the same generator is not
    assert report["control_structure"]["correlation_length"] < report["inferred_aid-50"]["correlation_length"]
    assert report["gains"]["inferred_aid-50"]["mean"] == pytest.approx(-0.25)  # (30.5 - 31 + 31 - 31) / 2
    assert report["gains"]["control_structure"]["mean"] == pytest.approx(0.5)
    text = (root / "map_gap_chikusei" / "report.md").read_text()
    assert "maps inferred from RGB, aid-50" in text and "-0.25 +/- 0.25 (2); median -0.25" in text
    assert (root / "map_gap_chikusei" / "map_gap.png").read_bytes()[:4] == b"\x89PNG"
    study_map_gap.main([str(root), "--pixels", "800"])  # the scene's maps are there: not inferred again
    assert len(calls) == 1


def test_the_study_script_refuses_a_folder_without_maps_in_one_line(tmp_path, capsys):
    sys.path.insert(0, EXPERIMENTS)
    import study_map_gap
    with pytest.raises(SystemExit) as exit_info:
        study_map_gap.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no abundance maps of scene chikusei" in err
