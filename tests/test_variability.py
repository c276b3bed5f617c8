"""Spectral variability (extended linear mixing model) at synthesis time."""
import os

import numpy as np
import pytest

from ubf.core.errors import UserError
from ubf.data.matio import read_mat, write_mat
from ubf.pipeline.variability import apply_variability, measure_strength, scaling_fields


def test_fields_have_the_asked_strength_mean_one_and_are_smooth():
    rng = np.random.default_rng(0)
    fields = scaling_fields(64, 64, 5, 0.3, 8.0, rng)
    logs = np.log(fields.astype(np.float64))
    assert np.allclose(logs.std(axis=(0, 1)), 0.3, atol=1e-5)
    assert np.allclose(logs.mean(axis=(0, 1)), -0.3 ** 2 / 2, atol=1e-5)  # E[psi] = 1 for a log-normal
    # neighbouring pixels are strongly correlated (white noise would give about 0)
    corr = np.corrcoef(logs[:, :-1, 0].ravel(), logs[:, 1:, 0].ravel())[0, 1]
    assert corr > 0.95
    assert np.array_equal(scaling_fields(8, 8, 2, 0.0, 8.0, rng), np.ones((8, 8, 2), np.float32))


def test_apply_variability_is_the_extended_mixing_model():
    rng = np.random.default_rng(1)
    abundances = rng.dirichlet(np.ones(3), size=(16, 16)).astype(np.float32)
    endmembers = rng.random((10, 3)).astype(np.float32)
    hsi, factors = apply_variability(abundances, endmembers, 0.2, 4.0, np.random.default_rng(2))
    expected = np.einsum("hwk,ck->hwc", abundances.astype(np.float64) * factors, endmembers)
    assert np.allclose(hsi, expected, rtol=1e-5)


def test_measured_strength_recovers_a_known_brightness_spread(tmp_path):
    """Pixels psi * E a with log psi ~ N(0, 0.25^2): the measured std of log brightness is 0.25."""
    rng = np.random.default_rng(3)
    endmembers = rng.random((40, 4)) + 0.1
    for i in range(2):
        abundances = rng.dirichlet(np.ones(4), size=(40, 40))
        psi = np.exp(rng.normal(0, 0.25, size=(40, 40, 1)))
        cube = (abundances * psi) @ endmembers.T
        cube[0, 0] = 0.0  # a black pixel: left out
        # the measurement min-max normalises each file; hand it files whose min-max is the identity
        cube[0, 1], cube[0, 2] = 0.0, 1.0 * cube.max()
        write_mat(str(tmp_path / f"c{i}.mat"), {"Y": (cube / cube.max()).astype(np.float32)})
    strength = measure_strength(str(tmp_path), endmembers, max_pixels=3000)
    assert strength == pytest.approx(0.25, abs=0.02)
    with pytest.raises(UserError, match="bands"):
        measure_strength(str(tmp_path), endmembers[:5])


def test_synthesis_with_variability(tmp_path):
    from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis
    from test_synthesis import fabricate_abundances, fabricate_checkpoint
    ckpt = str(tmp_path / "best.pth")
    fabricate_checkpoint(ckpt)
    fabricate_abundances(str(tmp_path / "abu"), size=16)
    plain = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "plain"))
    varied = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "var"),
                           options=SynthesisOptions(variability=0.3, variability_scale=4.0))
    again = run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "again"),
                          options=SynthesisOptions(variability="0.3", variability_scale=4.0))
    assert varied["variability_strength"] == 0.3 and plain["variability_strength"] == 0.0
    for i in range(3):
        p = read_mat(os.path.join(plain["hsi_dir"], f"sample_{i}.mat"))
        v = read_mat(os.path.join(varied["hsi_dir"], f"sample_{i}.mat"))
        a = read_mat(os.path.join(again["hsi_dir"], f"sample_{i}.mat"))
        assert "Scale" not in p and np.array_equal(v["Abu"], p["Abu"])
        assert np.allclose(v["HSI"], (v["Abu"] * v["Scale"]) @ v["End"].T, rtol=1e-5, atol=1e-6)
        assert np.allclose(np.log(v["Scale"]).std(axis=(0, 1)), 0.3, atol=1e-4)
        assert np.array_equal(v["HSI"], a["HSI"])  # seeded
    with pytest.raises(UserError, match="expected auto or a number"):
        run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "bad"), options=SynthesisOptions(variability="lots"))
