"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser the samplers can call unchanged.

The samplers of `models.diffusion` call `denoise_fn(x, noise_level)`. `GuidedDenoiser` is such a
function around a class-conditional network `net(x, noise_level, class_labels=...)`: it returns

    eps = eps_uncond + scale * (eps_cond - eps_uncond)

so scale 0 is the unconditional prediction, 1 the conditional one and > 1 pushes samples towards
their class. Both predictions come from one forward pass over a batch of 2N. The labels of the
batch being sampled are set with `conditioned_on(labels)`.
"""
from contextlib import contextmanager

import torch
from torch import nn


class GuidedDenoiser(nn.Module):
    """`denoise_fn(x (N, C, H, W), noise_level (N,))` for a class-conditional `net`, guided towards `labels`."""

    def __init__(self, net: nn.Module, scale: float = 1.0):
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.labels: torch.Tensor | None = None

    @contextmanager
    def conditioned_on(self, labels: torch.Tensor):
        """Within the block, predictions are guided towards `labels` (N,) (one per sample of the batch)."""
        previous, self.labels = self.labels, labels
        try:
            yield self
        finally:
            self.labels = previous

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        if self.labels is None:
            raise RuntimeError("GuidedDenoiser: no class labels set (use `conditioned_on(labels)`)")
        labels = self.labels.to(x.device).reshape(-1)
        if self.scale == 1.0:
            return self.net(x, noise_level, class_labels=labels)
        unconditional = torch.full_like(labels, -1)
        if self.scale == 0.0:
            return self.net(x, noise_level, class_labels=unconditional)
        both = self.net(torch.cat([x, x]), torch.cat([noise_level, noise_level]),
                        class_labels=torch.cat([labels, unconditional]))
        conditional, plain = both.chunk(2)
        return plain + self.scale * (conditional - plain)
