"""A small spectral-spatial feature network for FD and KID, trained offline on the real patches.

FID needs a feature space; Inception weights are RGB, downloaded, and blind to spectra. Instead a
tiny CNN is trained, seeded and on the CPU in seconds, on the real set itself with a self-supervised
masked-reconstruction objective: random bands and random pixels of a patch are zeroed, noise is added,
and the network must restore the clean patch. Restoring masked bands needs spectral correlations,
restoring masked pixels needs the neighbours, so the encoder learns both. A patch's feature is the
spatial mean and standard deviation of the encoder's maps ((N, 2 x features) vectors).

The trained network is cached per real set: the key hashes the real file list (path, size, mtime),
the patch size, the settings and `VERSION`, so a changed set or setting retrains.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.checkpoint import load_checkpoint, save_checkpoint
from ubf.core.logs import get_logger

VERSION = 1
STAGE = "eval-features"


@dataclass
class FeatureSettings:
    """Training settings of the feature network (all recorded in the cache key)."""
    width: int = 32
    features: int = 16
    steps: int = 400
    batch: int = 64
    lr: float = 2e-3
    band_mask: float = 0.3
    pixel_mask: float = 0.2
    noise: float = 0.02
    seed: int = 0


class SpectralSpatialNet(nn.Module):
    """Encoder: 1x1 spectral convolutions, then 3x3 spatial ones; decoder back to the bands (for training)."""

    def __init__(self, bands: int, width: int = 32, features: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(bands, width, 1), nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, features, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.GELU(), nn.Conv2d(features, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, bands, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> reconstruction (N, C, h, w)."""
        return self.decoder(self.encoder(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) patches -> (N, 2 * features + 1): spatial mean and std of the encoder maps, and
        the log mean absolute reconstruction residual (large for spectra off the real manifold, e.g. noise)."""
        code = self.encoder(x)
        maps = code.flatten(2)
        residual = (self.decoder(code) - x).abs().flatten(1).mean(dim=1, keepdim=True)
        return torch.cat([maps.mean(dim=2), maps.std(dim=2, unbiased=False), torch.log(residual + 1e-4)], dim=1)


def corrupt(x: torch.Tensor, settings: FeatureSettings, generator: torch.Generator) -> torch.Tensor:
    """Zero random bands (per patch) and random pixels, then add Gaussian noise."""
    n, c, h, w = x.shape
    keep_bands = (torch.rand(n, c, 1, 1, generator=generator) >= settings.band_mask).float()
    keep_pixels = (torch.rand(n, 1, h, w, generator=generator) >= settings.pixel_mask).float()
    noise = settings.noise * torch.randn(x.shape, generator=generator)
    return x * keep_bands * keep_pixels + noise


def train_feature_net(patches: torch.Tensor, settings: FeatureSettings, progress: bool = True) -> SpectralSpatialNet:
    """Train on (N, C, p, p) real patches on the CPU (small enough; keeps results device-independent)."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    net = SpectralSpatialNet(patches.shape[1], settings.width, settings.features)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    bar = tqdm(range(settings.steps), desc="feature net", disable=not progress, dynamic_ncols=True, leave=False)
    for _ in bar:
        index = torch.randint(0, patches.shape[0], (settings.batch,), generator=generator)
        clean = patches[index].float()
        loss = F.l1_loss(net(corrupt(clean, settings, generator)), clean)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return net.eval()


def cache_key(real_files: list[str], patch_size: int, bands: int, settings: FeatureSettings,
              extra: dict | None = None) -> str:
    """Hash of the real set (path, size, mtime of each file) and every setting that changes the network."""
    listing = []
    for path in sorted(real_files):
        stat = os.stat(path)
        listing.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"files": listing, "patch": patch_size, "bands": bands, "settings": asdict(settings),
                       "extra": extra or {}, "version": VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train(real_files: list[str], patches: torch.Tensor, settings: FeatureSettings, cache_dir: str | None,
                  extra: dict | None = None, progress: bool = True) -> tuple[SpectralSpatialNet, str, bool]:
    """(network, cache key, whether it came from the cache). `cache_dir=None` always trains."""
    log = get_logger()
    key = cache_key(real_files, patches.shape[-1], patches.shape[1], settings, extra)
    path = os.path.join(cache_dir, f"features_{key}.pt") if cache_dir else None
    if path and os.path.isfile(path):
        state = load_checkpoint(path, STAGE)
        net = SpectralSpatialNet(state["bands"], settings.width, settings.features)
        net.load_state_dict(state["model"])
        log.info("feature network from cache %s", path)
        return net.eval(), key, True
    log.info("training the feature network on %d real patches (%d steps)", patches.shape[0], settings.steps)
    net = train_feature_net(patches, settings, progress)
    if path:
        save_checkpoint({"stage": STAGE, "model": net.state_dict(), "bands": patches.shape[1],
                         "patch": patches.shape[-1], "config": asdict(settings), "key": key}, path)
    return net, key, False


@torch.no_grad()
def embed_patches(net: SpectralSpatialNet, patches: torch.Tensor, batch: int = 512,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, C, p, p) -> (N, 2 * features) float64 features on the CPU."""
    net = net.to(device)
    out = [net.embed(patches[i:i + batch].to(device, torch.float32)).double().cpu()
           for i in range(0, patches.shape[0], batch)]
    net.cpu()
    return torch.cat(out) if out else torch.zeros(0, 2 * net.encoder[-1].out_channels, dtype=torch.float64)
