"""Image-quality metrics for hyperspectral cubes, implemented once, vectorised in torch.

Every function takes ground truth and prediction as (H, W, C) arrays (numpy or torch) on the same
scale and returns a Python float. The definitions follow the usual hyperspectral super-resolution
toolbox (band-averaged PSNR/SSIM/CC, SAM in degrees averaged over pixels, ERGAS with a resolution
ratio), so numbers are comparable with the reference's `quality_assessment`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


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
    """Spectral angle mapper: mean angle (degrees) between ground-truth and predicted pixel spectra."""
    gt, pred = _pair(gt, pred)
    channels = gt.shape[-1]
    return float(spectral_angles(gt.reshape(-1, channels), pred.reshape(-1, channels)).mean())


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


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(gt, pred, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean over bands of SSIM (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, valid region)."""
    gt, pred = _pair(gt, pred)
    x = gt.permute(2, 0, 1)[:, None]  # (C, 1, H, W): every band is its own image
    y = pred.permute(2, 0, 1)[:, None]
    size = min(window, x.shape[-1], x.shape[-2])
    kernel = _gaussian_window(size, sigma, x.dtype, x.device)[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)
    sxx = F.conv2d(x * x, kernel) - mu_x ** 2
    syy = F.conv2d(y * y, kernel) - mu_y ** 2
    sxy = F.conv2d(x * y, kernel) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


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


def average_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean of per-image metric dicts (the reference averages per test image)."""
    if not results:
        return {}
    return {key: float(sum(r[key] for r in results) / len(results)) for key in results[0]}


__all__ = ["psnr", "ssim", "sam", "ergas", "rmse", "cc", "quality_assessment", "spectral_angles",
           "average_metrics", "band_mse", "mrae"]
