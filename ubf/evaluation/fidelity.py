"""Point fidelity F_p and block diversity D_b (Shen et al. 2025, "Hyperspectral Image Generation with
Unmixing Guided Diffusion Model"), and a sharper block-copy detector, D_b_ncc.

F_p: mean over synthetic pixels of the highest cosine similarity to any real pixel. High means every
synthetic spectrum looks like some real spectrum (a precision-like score; 1 for a copy).

D_b: for each synthetic p x p block, the best mean per-pixel cosine similarity against every position
of every real image, under the 4 rotations of the block. A block copied from a real image scores 1,
so D_b detects memorisation: lower is more diverse.

D_b_ncc (our addition): the same search with the normalised cross-correlation of whole blocks (each
block and each real window minus its own mean spectrum, then the cosine of the two C x p x p vectors).
Spectra of one scene are often within a few degrees of each other, so per-pixel cosines crowd near 1:
on the Chikusei 400-700 nm crops, blocks of a different real crop and i.i.d. random mixtures both score
D_b > 0.98. NCC compares spatial patterns instead: a copy (also rescaled or offset) scores 1, a noisy
rotated copy 0.96, another real crop 0.68, random mixtures 0.2.

Both are cross-correlations computed with FFTs over overlapping tiles of the real image (overlap-save):
the cost per block is a few complex multiply-adds per real pixel, and the block transforms are computed
once for all tiles and images. NCC's window norms come from integral images.
"""
import math

import torch
import torch.nn.functional as F
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.metrics import spectral_angles
from ubf.evaluation.neighbors import max_cosine


def point_fidelity(synthetic: torch.Tensor, real: torch.Tensor, chunk: int = 4096,
                   device: torch.device | str = "cpu") -> tuple[float, torch.Tensor]:
    """(F_p, angles (N,) in degrees to the nearest real spectrum) for (N, C) synthetic and (M, C) real pixels."""
    best, index = max_cosine(synthetic, real, chunk=chunk, device=device)
    # the angle through atan2 (core.metrics) keeps small angles exact, unlike arccos of a cosine near 1
    angles = spectral_angles(synthetic, real[index]).float()
    return float(best.double().mean()), angles


def unit_spectra(cube: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(..., C, H, W) with every pixel spectrum scaled to unit length (zero spectra stay zero)."""
    return cube / cube.norm(dim=-3, keepdim=True).clamp_min(eps)


def with_rotations(blocks: torch.Tensor) -> torch.Tensor:
    """(P, C, p, p) -> (4P, C, p, p): rotations by 0, 90, 180, 270 degrees, rotation-major."""
    return torch.cat([torch.rot90(blocks, k, dims=(2, 3)) for k in range(4)], dim=0)


def fft_tile_size(block: int, height: int, width: int) -> int:
    """FFT tile side: about 4 block widths (little overlap waste), no larger than the image needs."""
    return max(block, min(max(4 * block, 32), max(height, width)))


class BlockMatcher:
    """Best score of a fixed set of synthetic blocks against real images, image by image.

    `blocks` (P, C, p, p). `mode` "cosine" (D_b: mean per-pixel cosine) or "ncc" (D_b_ncc: normalised
    cross-correlation of whole blocks). `update(image)` takes one real image (C, H, W) and raises each
    block's running best; `scores` is (P,), `value` their mean.
    """

    def __init__(self, blocks: torch.Tensor, device: torch.device | str = "cpu", mode: str = "cosine",
                 budget_mb: int = 256):
        if mode not in ("cosine", "ncc"):
            raise ValueError(f"mode must be 'cosine' or 'ncc', got {mode!r}")
        self.device, self.mode = torch.device(device), mode
        self.size = blocks.shape[-1]
        self.n_blocks, self.bands = blocks.shape[0], blocks.shape[1]
        blocks = blocks.float()
        # below this norm a block or window counts as flat (no pattern to copy): 1e-3 per value
        self.floor = 1e-3 * math.sqrt(self.bands * self.size ** 2)
        if mode == "cosine":
            kernels = unit_spectra(blocks)
            self.kernel_norms = torch.full((4 * self.n_blocks,), float(self.size ** 2))
        else:
            kernels = blocks - blocks.mean(dim=(2, 3), keepdim=True)
            self.kernel_norms = kernels.flatten(1).norm(dim=1).clamp_min(self.floor).repeat(4)
        self.kernels = with_rotations(kernels).to(self.device)
        self.kernel_norms = self.kernel_norms.to(self.device)
        self.best = torch.full((self.n_blocks,), -1.0)
        self.budget = budget_mb * 2 ** 20
        self._spectra: dict[int, torch.Tensor] = {}

    def _kernel_spectra(self, tile: int) -> torch.Tensor:
        """(frequencies, 4P, C) conjugated transforms of the zero-padded kernels, one per tile size."""
        if tile not in self._spectra:  # reused by every image and tile of this size
            spectra = torch.fft.rfft2(self.kernels, s=(tile, tile)).conj().resolve_conj()
            self._spectra[tile] = spectra.flatten(2).permute(2, 0, 1).contiguous()
        return self._spectra[tile]

    def _window_norms(self, image: torch.Tensor) -> torch.Tensor:
        """(H-p+1, W-p+1) norm of every p x p window minus its mean spectrum (NCC's real-side denominator)."""
        p = self.size
        x = image.double()
        def box(a: torch.Tensor) -> torch.Tensor:  # sums over every p x p window, by an integral image
            c = F.pad(a.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
            return c[..., p:, p:] - c[..., :-p, p:] - c[..., p:, :-p] + c[..., :-p, :-p]
        squares = box((x * x).sum(dim=0))
        sums = box(x)
        return (squares - (sums * sums).sum(dim=0) / (p * p)).clamp_min(0).sqrt().float().clamp_min(self.floor)

    @torch.no_grad()
    def update(self, image: torch.Tensor) -> None:
        """Raise the running best with one real image (C, H, W)."""
        bands, height, width = image.shape
        p = self.size
        if bands != self.bands:
            raise ValueError(f"real image has {bands} bands, blocks have {self.bands}")
        if height < p or width < p:
            return
        tile = fft_tile_size(p, height, width)
        step = tile - p + 1  # valid offsets per tile
        rows, cols = math.ceil((height - p + 1) / step), math.ceil((width - p + 1) / step)
        padded = torch.zeros(bands, (rows - 1) * step + tile, (cols - 1) * step + tile)
        padded[:, :height, :width] = unit_spectra(image.float()) if self.mode == "cosine" else image.float()
        tiles = padded.unfold(1, tile, step).unfold(2, tile, step)  # (C, rows, cols, tile, tile)
        tiles = tiles.permute(1, 2, 0, 3, 4).reshape(rows * cols, bands, tile, tile)
        # per-position denominators laid out like the tiles' valid offsets; padding positions get -inf
        scale = torch.full((rows * step, cols * step), float("inf"))
        scale[:height - p + 1, :width - p + 1] = 1.0 if self.mode == "cosine" else self._window_norms(image)
        scale = scale.view(rows, step, cols, step).permute(0, 2, 1, 3).reshape(rows * cols, step, step).to(self.device)
        kernel_f = self._kernel_spectra(tile)  # (F, 4P, C)
        n_kernels, half = kernel_f.shape[1], tile // 2 + 1
        per_tile = max(1, self.budget // (n_kernels * tile * half * 8 * 3))
        best = torch.full((n_kernels,), -float("inf"), device=self.device)
        for start in range(0, tiles.shape[0], per_tile):
            chunk = tiles[start:start + per_tile].to(self.device)
            tile_f = torch.fft.rfft2(chunk).flatten(2).permute(2, 1, 0).contiguous()  # (F, C, n)
            # sum over bands of conj(K) * T: one batched matrix product over the frequencies
            prod = torch.bmm(kernel_f, tile_f)  # (F, 4P, n)
            prod = prod.permute(1, 2, 0).reshape(n_kernels, chunk.shape[0], tile, half)
            corr = torch.fft.irfft2(prod, s=(tile, tile))[..., :step, :step]
            window = scale[start:start + per_tile][None]
            corr = (corr / window).masked_fill(torch.isinf(window), -float("inf"))
            best = torch.maximum(best, corr.flatten(1).amax(dim=1))
        per_block = (best / self.kernel_norms).view(4, self.n_blocks).amax(dim=0).cpu()
        self.best = torch.maximum(self.best, per_block.clamp(-1.0, 1.0))

    @property
    def scores(self) -> torch.Tensor:
        return self.best.clone()

    @property
    def value(self) -> float:
        return float(self.best.double().mean())


def block_diversity(blocks: torch.Tensor, real_images, device: torch.device | str = "cpu",
                    mode: str = "cosine", progress: bool = False) -> tuple[float, torch.Tensor]:
    """(mean, per-block best scores (P,)) of (P, C, p, p) blocks against an iterable of (C, H, W) real
    images: D_b with mode "cosine", D_b_ncc with mode "ncc"."""
    matcher = BlockMatcher(blocks, device, mode)
    for image in tqdm(real_images, desc=f"D_b {mode}", disable=not progress, dynamic_ncols=True, leave=False):
        matcher.update(image)
    return matcher.value, matcher.scores
