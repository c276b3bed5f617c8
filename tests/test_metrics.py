import math

import numpy as np
import pytest

from ubf.core.metrics import cc, ergas, psnr, quality_assessment, rmse, sam, spectral_angles, ssim, ssim_gaussian


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


def test_a_perfect_band_counts_as_100_db():
    gt = np.full((4, 4, 2), 0.5)
    pred = gt.copy()
    pred[..., 1] += 0.1                                     # band 1: 20 dB; band 0 exact (the reference: inf)
    assert psnr(gt, pred) == pytest.approx((100.0 + 20.0) / 2)
    assert psnr(gt, gt) == 100.0


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


def test_ssim_gaussian_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    gt = rng.random((16, 15, 2))
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    expected = np.mean([slow_ssim_band(gt[..., b], pred[..., b], 11, 1.5) for b in range(2)])
    assert ssim_gaussian(gt, pred) == pytest.approx(expected, rel=1e-9)
    assert ssim_gaussian(gt, gt) == pytest.approx(1.0)


def hand_ssim_window(a, b, c1=1e-4, c2=9e-4):
    """SSIM of one window with the sample (N - 1) variances and covariance, written out by hand."""
    a, b = a.ravel(), b.ravel()
    n = a.size
    ma, mb = a.sum() / n, b.sum() / n
    va, vb = ((a - ma) ** 2).sum() / (n - 1), ((b - mb) ** 2).sum() / (n - 1)
    cov = ((a - ma) * (b - mb)).sum() / (n - 1)
    return (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))


def test_ssim_is_the_mean_over_7x7_windows_with_sample_covariance():
    """8 x 7 band: two 7 x 7 windows (rows 0-6 and 1-7); 2 bands averaged. No scikit-image needed."""
    x = (np.arange(56, dtype=float).reshape(8, 7) % 11) / 10
    y = np.sqrt(x) * 0.8 + 0.05
    gt, pred = np.stack([x, y], 2), np.stack([y, 1 - x], 2)
    band0 = (hand_ssim_window(x[:7], y[:7]) + hand_ssim_window(x[1:], y[1:])) / 2
    band1 = (hand_ssim_window(y[:7], 1 - x[:7]) + hand_ssim_window(y[1:], 1 - x[1:])) / 2
    assert ssim(gt, pred) == pytest.approx((band0 + band1) / 2, rel=1e-12)
    assert ssim(gt[..., :1], pred[..., :1], data_range=2.0) == pytest.approx(
        (hand_ssim_window(x[:7], y[:7], 4e-4, 3.6e-3) + hand_ssim_window(x[1:], y[1:], 4e-4, 3.6e-3)) / 2, rel=1e-12)


def test_ssim_of_constant_bands_is_the_luminance_term():
    a = np.full((9, 9, 1), 0.3)
    assert ssim(a, a) == 1.0
    # no variance: (2ab + c1) / (a^2 + b^2 + c1) with a = 0.3, b = 0.4
    assert ssim(a, a + 0.1) == pytest.approx(0.2401 / 0.2501, rel=1e-12)


def test_ssim_matches_scikit_image_the_references_metric():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    gt = rng.random((40, 33, 4))
    gt[..., 1] = np.linspace(0, 1, 33)[None, :] ** 2  # a smooth band
    pred = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)

    def reference(a, b, **options):  # the reference's compare_mssim: per band, data_range 1, mean
        return np.mean([metrics.structural_similarity(a[..., i], b[..., i], data_range=1.0, **options)
                        for i in range(a.shape[2])])

    assert ssim(gt, pred) == pytest.approx(reference(gt, pred), rel=1e-10)
    assert ssim_gaussian(gt, pred) == pytest.approx(
        reference(gt, pred, gaussian_weights=True, use_sample_covariance=False), rel=1e-10)
    # float32 inputs (the network's outputs): both compute in float32
    g32, p32 = gt.astype(np.float32), pred.astype(np.float32)
    assert abs(ssim(g32, p32) - reference(g32, p32)) < 1e-5
    assert ssim(gt, gt) == 1.0 and ssim(g32, g32) == 1.0  # identical bands: exactly 1, as scikit-image


def test_ssim_of_bands_smaller_than_the_window():
    rng = np.random.default_rng(4)
    gt, pred = rng.random((5, 6, 2)), rng.random((5, 6, 2))
    # the largest odd window that fits is 5 x 5: two windows per band
    expected = np.mean([(hand_ssim_window(gt[:, :5, b], pred[:, :5, b]) +
                         hand_ssim_window(gt[:, 1:, b], pred[:, 1:, b])) / 2 for b in range(2)])
    assert ssim(gt, pred) == pytest.approx(expected, rel=1e-12)


def test_sam_is_never_nan_and_skips_zero_pixels_as_the_reference():
    spectrum = np.array([0.1, 0.2, 0.3, 0.7], np.float32)
    gt = np.tile(spectrum, (8, 8, 1))
    pred = gt * np.float32(1.0000001)   # arccos of the float32 cosine (> 1) is NaN in the reference
    assert sam(gt, pred) == pytest.approx(0.0, abs=1e-3)
    gt2 = np.array([[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]])
    pred2 = np.array([[[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    # pixel 1 (zero ground truth) and pixel 2 (zero prediction) are left out: only the 90 deg pixel counts
    assert sam(gt2, pred2) == pytest.approx(90.0)
    assert sam(np.zeros((2, 2, 3)), np.zeros((2, 2, 3))) == 0.0


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
    from ubf.core.metrics import mrae
    gt = np.array([[[0.5, 0.0]]])
    pred = np.array([[[0.6, 0.001]]])
    # (0.1 / 0.5 + 0.001 / 0.01) / 2
    assert mrae(gt, pred) == pytest.approx((0.2 + 0.1) / 2)
