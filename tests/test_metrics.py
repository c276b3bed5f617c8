import math

import numpy as np
import pytest

from core.metrics import cc, ergas, psnr, quality_assessment, rmse, sam, spectral_angles, ssim


def test_psnr_of_constant_offset_is_closed_form():
    gt = np.full((4, 4, 3), 0.5)
    assert psnr(gt, gt + 0.1) == pytest.approx(20.0, abs=1e-9)      # 10 log10(1 / 0.01)
    assert psnr(gt, gt + 0.1, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))


def test_psnr_is_band_averaged():
    gt = np.zeros((2, 2, 2))
    pred = gt.copy()
    pred[..., 0] = 0.1   # band 0: 20 dB
    pred[..., 1] = 0.01  # band 1: 40 dB
    assert psnr(gt, pred) == pytest.approx(30.0)


def test_sam_hand_values():
    gt = np.array([[[1.0, 0.0], [1.0, 1.0]]])          # (1, 2, 2): two pixels
    pred = np.array([[[0.0, 2.0], [2.0, 2.0]]])        # 90 deg and 0 deg
    assert sam(gt, pred) == pytest.approx(45.0)
    angles = spectral_angles(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))
    assert float(angles[0]) == pytest.approx(45.0)


def test_rmse_ergas_cc_hand_values():
    gt = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 2.0)], axis=2)
    pred = gt + np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.2)], axis=2)
    assert rmse(gt, pred) == pytest.approx(math.sqrt((0.01 + 0.04) / 2))
    # ERGAS = 100 / 4 * sqrt(mean(0.01 / 1, 0.04 / 4)) = 25 * 0.1
    assert ergas(gt, pred, ratio=4) == pytest.approx(2.5)
    ramp = np.arange(18, dtype=float).reshape(3, 3, 2)
    assert cc(ramp, 3 * ramp + 1) == pytest.approx(1.0)
    assert cc(ramp, -ramp) == pytest.approx(-1.0)


def slow_ssim_band(x, y, window, sigma, data_range=1.0):
    """Direct, loop-based SSIM of one band (valid windows), an independent check."""
    half = (window - 1) / 2
    g = np.exp(-((np.arange(window) - half) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
            cov = (w * a * b).sum() - ma * mb
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    gt = rng.random((16, 15, 2))
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    expected = np.mean([slow_ssim_band(gt[..., b], pred[..., b], 11, 1.5) for b in range(2)])
    assert ssim(gt, pred) == pytest.approx(expected, rel=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_quality_assessment_moves_the_right_way_with_noise():
    rng = np.random.default_rng(1)
    gt = rng.random((24, 24, 6))
    small = quality_assessment(gt, gt + 0.01 * rng.standard_normal(gt.shape))
    large = quality_assessment(gt, gt + 0.1 * rng.standard_normal(gt.shape))
    assert small["PSNR"] > large["PSNR"] and small["SSIM"] > large["SSIM"]
    assert small["SAM"] < large["SAM"] and small["ERGAS"] < large["ERGAS"] and small["RMSE"] < large["RMSE"]
    assert set(small) == {"PSNR", "SSIM", "SAM", "ERGAS", "RMSE", "CC"}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((2, 2, 3)), np.zeros((2, 2, 4)))


def test_mrae_hand_value_and_floor():
    from core.metrics import mrae
    gt = np.array([[[0.5, 0.0]]])
    pred = np.array([[[0.6, 0.001]]])
    # (0.1 / 0.5 + 0.001 / 0.01) / 2
    assert mrae(gt, pred) == pytest.approx((0.2 + 0.1) / 2)
