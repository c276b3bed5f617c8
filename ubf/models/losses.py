"""Losses of the unmixing network.

- Charbonnier: mean sqrt(d^2 + eps^2), eps = 1e-3 (a smooth L1).
- SAD: mean spectral angle (radians) between reconstructed and true pixel spectra.
- Endmember TV (the reference's semantics, the faithful default): squared differences between
  *adjacent endmembers* (columns of the decoder weight) -- it pulls the K endmembers toward each
  other, despite its name.
- Spectral smoothness (option): squared differences between *adjacent bands* of every endmember,
  i.e. what a spectral TV usually means.
Both TV terms take the decoder weight (C, K, 1, 1) and return 2 * mean(squared difference), which is
the reference's normalisation.

Options of the near-data recipe (docs/stage1_quality.md):
- MSE: mean squared error (what PSNR measures; the linear bar is its least-squares optimum).
- Endmembers near the data: a hinge on each endmember's angle to its nearest real pixel,
  sum_k relu(angle_k - max_angle)^2 (degrees): zero while every endmember stays within `max_angle` of some
  training pixel, so the endmembers may move to fit the data but not leave it.

`valid` (N, 1, H, W) weights the pixel terms (Charbonnier, SAD) by a 0/1 mask: pixels a file declares
no-data do not enter the loss. Without a mask (or with an all-ones one) the terms are the unmasked means.
"""
import torch
import torch.nn.functional as F


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, valid=None) -> torch.Tensor:
    diff = pred - target
    values = torch.sqrt(diff * diff + eps * eps)
    if valid is None:
        return values.mean()
    return (values * valid).sum() / (valid.sum() * pred.shape[1]).clamp_min(1)


def spectral_angle_loss(pred: torch.Tensor, target: torch.Tensor, valid=None) -> torch.Tensor:
    """Mean angle (radians) over pixels of (N, C, H, W) tensors (the valid ones of (N, 1, H, W) `valid`)."""
    cosine = F.cosine_similarity(pred, target, dim=1, eps=1e-8).clamp(-1 + 1e-7, 1 - 1e-7)
    if valid is None:
        return torch.acos(cosine).mean()
    return (torch.acos(cosine) * valid[:, 0]).sum() / valid.sum().clamp_min(1)


def mean_squared_error(pred: torch.Tensor, target: torch.Tensor, valid=None) -> torch.Tensor:
    squared = (pred - target) ** 2
    if valid is None:
        return squared.mean()
    return (squared * valid).sum() / (valid.sum() * pred.shape[1]).clamp_min(1)


def endmember_angles_to_data(weight: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(K,) angle in degrees of each endmember (decoder weight (C, K, 1, 1)) to its nearest pixel of (M, C)."""
    ends = F.normalize(weight[:, :, 0, 0].T, dim=1, eps=1e-12)
    data = F.normalize(pixels.to(ends.dtype), dim=1, eps=1e-12)
    cosine = (ends @ data.T).max(dim=1).values.clamp(-1.0, 1.0 - 1e-7)
    return torch.rad2deg(torch.acos(cosine))


def endmember_near_data(weight: torch.Tensor, pixels: torch.Tensor, max_angle: float) -> torch.Tensor:
    """sum_k relu(angle_k - max_angle)^2: zero while every endmember is within `max_angle` degrees of a pixel."""
    return torch.relu(endmember_angles_to_data(weight, pixels) - max_angle).pow(2).sum()


def endmember_tv(weight: torch.Tensor) -> torch.Tensor:
    """Reference 'TV' of the decoder weight (C, K, 1, 1): differences across adjacent endmembers."""
    if weight.shape[1] < 2:
        return weight.new_zeros(())
    return 2.0 * (weight[:, 1:] - weight[:, :-1]).pow(2).mean()


def spectral_smoothness_tv(weight: torch.Tensor) -> torch.Tensor:
    """Smoothness of every endmember spectrum: differences across adjacent bands of (C, K, 1, 1)."""
    if weight.shape[0] < 2:
        return weight.new_zeros(())
    return 2.0 * (weight[1:] - weight[:-1]).pow(2).mean()


def unmixing_loss(pred: torch.Tensor, target: torch.Tensor, decoder_weight: torch.Tensor,
                  weights: dict, valid: torch.Tensor | None = None,
                  data_pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms; `weights` has charbonnier, sad, endmember_tv, spectral_tv and optionally mse,
    near_data (with near_data_angle, degrees; needs `data_pixels` (M, C)); `valid` see above."""
    if valid is not None and bool((valid > 0).all()):
        valid = None  # every pixel valid: exactly the unmasked means
    terms = {
        "charbonnier": charbonnier(pred, target, valid=valid),
        "sad": spectral_angle_loss(pred, target, valid=valid),
        "endmember_tv": endmember_tv(decoder_weight),
        "spectral_tv": spectral_smoothness_tv(decoder_weight),
    }
    if weights.get("mse", 0.0):
        terms["mse"] = mean_squared_error(pred, target, valid=valid)
    if weights.get("near_data", 0.0):
        if data_pixels is None:
            raise ValueError("loss.near_data needs the training pixels (data_pixels)")
        terms["near_data"] = endmember_near_data(decoder_weight, data_pixels, weights.get("near_data_angle", 8.0))
    total = sum(weights[name] * value for name, value in terms.items() if weights.get(name, 0.0))
    return total, {name: float(value.detach()) for name, value in terms.items()}
