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
                  weights: dict, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms; `weights` has charbonnier, sad, endmember_tv, spectral_tv; `valid` see above."""
    if valid is not None and bool((valid > 0).all()):
        valid = None  # every pixel valid: exactly the unmasked means
    terms = {
        "charbonnier": charbonnier(pred, target, valid=valid),
        "sad": spectral_angle_loss(pred, target, valid=valid),
        "endmember_tv": endmember_tv(decoder_weight),
        "spectral_tv": spectral_smoothness_tv(decoder_weight),
    }
    total = sum(weights[name] * value for name, value in terms.items() if weights.get(name, 0.0))
    return total, {name: float(value.detach()) for name, value in terms.items()}
