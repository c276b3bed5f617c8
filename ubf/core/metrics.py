"""Image-quality metrics for hyperspectral cubes, implemented once, vectorised in torch.

Every function takes ground truth and prediction as (H, W, C) arrays (numpy or torch) on the same
scale and returns a Python float. The definitions follow the usual hyperspectral super-resolution
toolbox (band-averaged PSNR/SSIM/CC, SAM in degrees averaged over pixels, ERGAS with a resolution
ratio), so numbers are comparable with the reference's `quality_assessment`. `ssim` is its SSIM
(scikit-image's defaults); `ssim_gaussian` the Gaussian-window SSIM of Wang et al. Edge cases (a
perfectly reproduced band, an all-zero pixel, a constant band) are listed beside the reference's
behaviour in docs/evaluation.md.
"""

import math

import numpy as np
import torch
from scipy import ndimage


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().to(torch.float64)


def _pair(gt, pred) -> tuple[torch.Tensor, torch.Tensor]:
    gt, pred = _as_tensor(gt), _as_tensor(pred).to(_as_tensor(gt).device)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {tuple(gt.shape)} vs prediction {tuple(pred.shape)}")
    if gt.ndim == 2:
        gt, pred = gt[..., None], pred[..., None]
    return gt, pred


def _bands_first(x, dtype: torch.dtype) -> torch.Tensor:
    """(H, W, C) or (H, W) array -> a contiguous (C, H, W) CPU tensor of `dtype`, in one copy."""
    x = x[..., None] if x.ndim == 2 else x
    out = torch.empty((x.shape[2], x.shape[0], x.shape[1]), dtype=dtype)
    return out.copy_(x.permute(2, 0, 1))


def _pair_bands_first(gt, pred) -> tuple[torch.Tensor, torch.Tensor]:
    """Both cubes as (C, H, W) tensors: float32 when both are float32 (as scikit-image computes, and
    so the reference on its float32 network outputs), else float64."""
    gt = torch.from_numpy(np.asarray(gt)) if not isinstance(gt, torch.Tensor) else gt.detach().cpu()
    pred = torch.from_numpy(np.asarray(pred)) if not isinstance(pred, torch.Tensor) else pred.detach().cpu()
    if tuple(gt.shape) != tuple(pred.shape):
        raise ValueError(f"shape mismatch: ground truth {tuple(gt.shape)} vs prediction {tuple(pred.shape)}")
    single = gt.dtype == torch.float32 and pred.dtype == torch.float32
    dtype = torch.float32 if single else torch.float64
    return _bands_first(gt, dtype), _bands_first(pred, dtype)


def spectral_angles(a, b, eps: float = 1e-12) -> torch.Tensor:
    """Angle in degrees between matching rows of (N, C) spectra.

    Uses 2 atan2(|u - v|, |u + v|) on unit vectors, which stays exact near 0 where arccos loses
    precision. A zero spectrum has angle 0 to another zero spectrum and 90 degrees to anything else.
    """
    a, b = _as_tensor(a), _as_tensor(b)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    u, v = a / na.clamp_min(eps), b / nb.clamp_min(eps)
    angle = 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))
    both_zero = (na.squeeze(-1) <= eps) & (nb.squeeze(-1) <= eps)
    one_zero = (na.squeeze(-1) <= eps) ^ (nb.squeeze(-1) <= eps)
    angle = torch.where(both_zero, torch.zeros_like(angle), angle)
    angle = torch.where(one_zero, torch.full_like(angle, math.pi / 2), angle)
    return torch.rad2deg(angle)


def band_mse(gt, pred) -> torch.Tensor:
    gt, pred = _pair(gt, pred)
    return ((gt - pred) ** 2).mean(dim=(0, 1))


def psnr(gt, pred, data_range: float = 1.0) -> float:
    """Mean over bands of 10 log10(range^2 / MSE_band); a perfect band counts as 100 dB."""
    mse = band_mse(gt, pred)
    values = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))
    return float(values.clamp(max=100.0).mean())


def rmse(gt, pred) -> float:
    gt, pred = _pair(gt, pred)
    return float(torch.sqrt(((gt - pred) ** 2).mean()))


def sam(gt, pred) -> float:
    """Spectral angle mapper: mean angle (degrees) between ground-truth and predicted pixel spectra.

    As the reference's `compare_sam`, pixels where either spectrum is all zero are left out of the
    mean (0.0 when none is left; the reference divides by zero there). Unlike it, the angle never
    turns NaN on near-parallel spectra (see `spectral_angles`).
    """
    gt, pred = _pair(gt, pred)
    channels = gt.shape[-1]
    gt, pred = gt.reshape(-1, channels), pred.reshape(-1, channels)
    kept = (gt != 0).any(dim=1) & (pred != 0).any(dim=1)
    if not bool(kept.any()):
        return 0.0
    return float(spectral_angles(gt[kept], pred[kept]).mean())


def ergas(gt, pred, ratio: float = 4.0) -> float:
    """Relative dimensionless global error: 100/ratio * sqrt(mean_b RMSE_b^2 / mean_b^2)."""
    gt, pred = _pair(gt, pred)
    mse = ((gt - pred) ** 2).mean(dim=(0, 1))
    mean_sq = gt.mean(dim=(0, 1)) ** 2
    return float(100.0 / ratio * torch.sqrt((mse / mean_sq.clamp_min(1e-20)).mean()))


def cc(gt, pred) -> float:
    """Mean over bands of the Pearson correlation between ground truth and prediction."""
    gt, pred = _pair(gt, pred)
    g = gt.reshape(-1, gt.shape[-1])
    p = pred.reshape(-1, pred.shape[-1])
    g = g - g.mean(0)
    p = p - p.mean(0)
    denom = (g.norm(dim=0) * p.norm(dim=0)).clamp_min(1e-20)
    return float(((g * p).sum(0) / denom).mean())


def _window_means(maps: torch.Tensor, weights: np.ndarray, rows: torch.Tensor, out: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H-size+1, W-size+1): weighted means over every size x size window inside the image.

    Separable, weights outer(w, w): along H as a weighted sum of `size` shifted slices (one fused
    multiply-add pass each, into the preallocated `rows`), along W with scipy's 1-D filter (uniform
    or correlate, into `out`). Only windows inside the image are kept, so no border mode enters.
    """
    size = len(weights)
    height = maps.shape[1] - size + 1
    uniform = bool(np.all(weights == weights[0]))
    rows.copy_(maps[:, :height])
    if not uniform:
        rows.mul_(float(weights[0]))
    for k in range(1, size):
        rows.add_(maps[:, k:k + height], alpha=1.0 if uniform else float(weights[k]))
    if uniform:
        rows.mul_(float(weights[0]))
    if uniform:
        ndimage.uniform_filter1d(rows.numpy(), size, axis=2, output=out)
    else:
        ndimage.correlate1d(rows.numpy(), weights, axis=2, output=out)
    half = (size - 1) // 2
    return out[:, :, half:maps.shape[2] - (size - 1 - half)]


def _ssim_bands(gt: torch.Tensor, pred: torch.Tensor, weights: np.ndarray, cov_norm: float, data_range: float,
                chunk: int = 4) -> torch.Tensor:
    """Mean SSIM map value of every band (C,) of (C, H, W) cubes, over the valid windows (in their dtype).

    Bands go `chunk` at a time through preallocated buffers (fresh large arrays cost page faults);
    the arithmetic is done in place with fused torch operations.
    """
    size = len(weights)
    bands, height, width = gt.shape
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stack = torch.empty((5 * chunk, height, width), dtype=gt.dtype)
    rows = torch.empty((5 * chunk, height - size + 1, width), dtype=gt.dtype)
    out = np.empty((5 * chunk, height - size + 1, width), dtype=rows.numpy().dtype)
    values = []
    for first in range(0, bands, chunk):
        n = min(chunk, bands - first)
        maps = stack[:5 * n]
        x, y = gt[first:first + n], pred[first:first + n]
        maps[:n], maps[n:2 * n] = x, y
        torch.mul(x, x, out=maps[2 * n:3 * n])
        torch.mul(y, y, out=maps[3 * n:4 * n])
        torch.mul(x, y, out=maps[4 * n:])
        means = torch.from_numpy(_window_means(maps, weights, rows[:5 * n], out[:5 * n]))
        mu_x, mu_y, xx, yy, xy = means.split(n)
        # in scikit-image's order of operations, so that identical bands give exactly 1
        xx.addcmul_(mu_x, mu_x, value=-1.0).mul_(cov_norm)      # var_x
        yy.addcmul_(mu_y, mu_y, value=-1.0).mul_(cov_norm)      # var_y
        xy.addcmul_(mu_x, mu_y, value=-1.0).mul_(cov_norm)      # cov
        numerator = torch.mul(mu_x, mu_y).mul_(2.0).add_(c1).mul_(xy.mul_(2.0).add_(c2))
        denominator = mu_x.mul_(mu_x).add_(mu_y.mul_(mu_y)).add_(c1).mul_(xx.add_(yy).add_(c2))
        values.append(numerator.div_(denominator).mean(dim=(1, 2), dtype=torch.float64))
    return torch.cat(values)


def ssim(gt, pred, data_range: float = 1.0, window: int = 7) -> float:
    """Mean over bands of scikit-image's default SSIM (the reference's `compare_mssim`).

    Per band: 7 x 7 uniform windows, sample covariance (N / (N - 1)), K1 = 0.01, K2 = 0.03, the mean
    over the windows that lie inside the image (skimage filters the whole band and crops 3 pixels).
    Bands smaller than the window use the largest odd window that fits (skimage raises instead); a
    1-pixel window falls back to the population covariance.
    """
    gt, pred = _pair_bands_first(gt, pred)
    size = min(window, gt.shape[1], gt.shape[2])
    size -= 1 - size % 2
    points = size * size
    cov_norm = points / (points - 1) if points > 1 else 1.0
    return float(_ssim_bands(gt, pred, np.full(size, 1.0 / size), cov_norm, data_range).mean())


def ssim_gaussian(gt, pred, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean over bands of the SSIM of Wang et al. 2004: Gaussian 11 x 11 window (sigma 1.5), population
    covariance, valid windows only (= skimage with gaussian_weights=True, use_sample_covariance=False)."""
    gt, pred = _pair_bands_first(gt, pred)
    size = min(window, gt.shape[1], gt.shape[2])
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(coords ** 2) / (2 * sigma ** 2))
    return float(_ssim_bands(gt, pred, weights / weights.sum(), 1.0, data_range).mean())


def mrae(gt, pred, floor: float = 0.01) -> float:
    """Mean relative absolute error |pred - gt| / max(gt, floor), the spectral-reconstruction metric.

    The floor keeps entries near zero (min-max normalised data has exact zeros) from dominating.
    """
    gt, pred = _pair(gt, pred)
    return float(((pred - gt).abs() / gt.clamp_min(floor)).mean())


def quality_assessment(gt, pred, data_range: float = 1.0, ratio: float = 4.0) -> dict[str, float]:
    """All metrics at once, keyed as the reference's report: PSNR, SSIM, SAM, ERGAS, RMSE, CC."""
    return {
        "PSNR": psnr(gt, pred, data_range),
        "SSIM": ssim(gt, pred, data_range),
        "SAM": sam(gt, pred),
        "ERGAS": ergas(gt, pred, ratio),
        "RMSE": rmse(gt, pred),
        "CC": cc(gt, pred),
    }


def quality_assessment_valid(gt, pred, valid=None, data_range: float = 1.0, ratio: float = 4.0) -> dict[str, float]:
    """`quality_assessment` over the valid pixels of (H, W) bool `valid` (None: all, the same numbers).

    PSNR, SAM, ERGAS, RMSE and CC use the valid pixels only; SSIM, which needs whole windows, is computed
    on the image with the prediction set to the ground truth at invalid pixels (so they add no error).
    """
    if valid is None or bool(np.all(valid)):
        return quality_assessment(gt, pred, data_range, ratio)
    gt, pred, valid = np.asarray(gt), np.asarray(pred), np.asarray(valid, dtype=bool)
    kept_gt, kept_pred = gt[valid][None], pred[valid][None]
    filled = np.where(valid[..., None], pred, gt)
    return {
        "PSNR": psnr(kept_gt, kept_pred, data_range),
        "SSIM": ssim(gt, filled, data_range),
        "SAM": sam(kept_gt, kept_pred),
        "ERGAS": ergas(kept_gt, kept_pred, ratio),
        "RMSE": rmse(kept_gt, kept_pred),
        "CC": cc(kept_gt, kept_pred),
    }


def average_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean of per-image metric dicts (the reference averages per test image)."""
    if not results:
        return {}
    return {key: float(sum(r[key] for r in results) / len(results)) for key in results[0]}


__all__ = ["psnr", "ssim", "ssim_gaussian", "sam", "ergas", "rmse", "cc", "quality_assessment", "quality_assessment_valid",
           "spectral_angles",
           "average_metrics", "band_mse", "mrae"]
