"""The downstream tasks of `Evaluate.py downstream`, one small object each, found by name in `TASKS`.

Every task turns a clean target crop (N, C, h, w) and its three input bands (N, 3, h, w) into the
network's input and names the default skip path beside the network's body (`path`; `--skip` overrides
it): `linear`, a learned per-pixel linear map of the input, or `identity`, the input itself plus a
learned per-pixel linear correction starting at zero (`downstream_models`).

- `rgb2hsi`: the three bands -> all bands; `path="linear"`;
- `denoise`: the target plus Gaussian noise of standard deviation `noise_sigma`; `path="linear"`: the
  clean cube is close to a low-rank projection of the noisy one (a few spectra explain it), far from
  the identity, so a model that starts as the identity spends its steps unlearning it. Measured on
  Chikusei (train 118, test 282, sigma 0.1, 400 steps, batch 8, crop 64): UNet 25.7 dB with the
  identity path against 36.7 dB with the linear one, the cnn 26.3 against 38.9 dB (the noisy input:
  20.0 dB). The cnn keeps its earlier identity path unless told (`downstream_models.SKIP_OVERRIDES`);
- `sr4`: x4 spatial super-resolution. The low-resolution image is a stated degradation of the clean HR
  crop: a Gaussian blur of `blur_sigma` HR pixels (kernel truncated at 3 sigma, i.e. radius
  round(3 sigma), normalised to sum 1; reflect padding, the edge pixel not repeated, scipy's `mirror`),
  then decimation by 4 keeping rows and columns 1, 5, 9, ... (offset 1: bicubic upsampling with
  `align_corners=False` puts LR pixel i at HR coordinate 4 i + 1.5, so the kept pixel is half an HR
  pixel from where it is drawn back). The network sees the LR image upsampled back to HR (bicubic,
  `torch.nn.functional.interpolate`) and predicts the HR cube as a residual on it (`path="identity"`:
  UNet 33.1 dB against 31.7 dB with the linear path, bicubic 31.6 dB, in the same setting as above).
  Crops must be multiples of 4; test images are trimmed to the largest multiple of 4 (top-left).

A new task is one class here and one row in `TASKS`.
"""
import functools

import torch
import torch.nn.functional as F

from ubf.core.errors import UserError

SR_OFFSET = 1  # the decimation keeps rows/columns SR_OFFSET, SR_OFFSET + scale, ... (see the module docstring)


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1-D Gaussian weights at offsets -r..r, r = round(truncate * sigma) (float64)."""
    if not sigma > 0:
        raise UserError(f"blur sigma {sigma}: expected a positive number of pixels")
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


@functools.lru_cache(maxsize=32)
def blur_matrix(length: int, sigma: float) -> torch.Tensor:
    """(length, length) float64 matrix B with B @ v = the 1-D Gaussian blur of v, reflect padding folded in:
    B[i, j] sums the weights of the offsets k whose reflected position i + k is j."""
    kernel = gaussian_kernel1d(sigma)
    radius = kernel.numel() // 2
    if radius >= length:
        raise UserError(f"an image side of {length} pixels is too small for a Gaussian blur of sigma {sigma} "
                        f"(kernel radius {radius} needs at least {radius + 1} pixels)")
    matrix = torch.zeros(length, length, dtype=torch.float64)
    rows = torch.arange(length)
    for k in range(-radius, radius + 1):
        cols = rows + k
        cols = torch.where(cols < 0, -cols, cols)
        cols = torch.where(cols > length - 1, 2 * (length - 1) - cols, cols)
        matrix.index_put_((rows, cols), kernel[k + radius].expand(length), accumulate=True)
    return matrix


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, h, w) images, each channel alone, reflect padding: B_h X B_w^T
    (two small matrix products, far faster on a CPU than single-channel convolutions)."""
    h, w = images.shape[-2:]
    rows = blur_matrix(h, float(sigma)).to(images.device, images.dtype)
    cols = blur_matrix(w, float(sigma)).to(images.device, images.dtype)
    blurred = images @ cols.T  # along W, then along H as a product on the last axis too (no broadcast copy)
    return (blurred.transpose(-1, -2) @ rows.T).transpose(-1, -2)


def decimate(images: torch.Tensor, scale: int, offset: int = SR_OFFSET) -> torch.Tensor:
    """Keep rows and columns offset, offset + scale, ... of (N, C, h, w) images (h, w multiples of scale)."""
    return images[..., offset::scale, offset::scale]


def upsample_bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling to (h, w), `align_corners=False` (torch's interpolate)."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


class Rgb2Hsi:
    """Three bands -> all bands (spectral reconstruction)."""
    name, path, multiple = "rgb2hsi", "linear", 1

    def in_channels(self, bands: int) -> int:
        return 3

    def make_input(self, clean: torch.Tensor, three: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return three

    def describe(self) -> str:
        return "RGB-to-HSI reconstruction"


class Denoise:
    """HSI plus white Gaussian noise -> HSI."""
    name, path, multiple = "denoise", "linear", 1

    def __init__(self, noise_sigma: float = 0.1):
        if not noise_sigma > 0:
            raise UserError(f"noise sigma {noise_sigma}: expected a positive number")
        self.noise_sigma = noise_sigma

    def in_channels(self, bands: int) -> int:
        return bands

    def make_input(self, clean: torch.Tensor, three: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return clean + self.noise_sigma * torch.randn(clean.shape, generator=generator)

    def describe(self) -> str:
        return f"HSI denoising (sigma {self.noise_sigma})"


class SuperResolution:
    """x`scale` spatial super-resolution from a blurred, decimated copy, upsampled back (bicubic)."""
    path = "identity"

    def __init__(self, scale: int = 4, blur_sigma: float = 2.0):
        gaussian_kernel1d(blur_sigma)  # checks the sigma
        self.scale, self.blur_sigma, self.multiple = scale, blur_sigma, scale
        self.name = f"sr{scale}"

    def in_channels(self, bands: int) -> int:
        return bands

    def degrade(self, clean: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) HR -> (N, C, h / scale, w / scale) LR: blur, then decimation."""
        h, w = clean.shape[-2:]
        if h % self.scale or w % self.scale:
            raise UserError(f"{self.name}: a {h} x {w} image is not a multiple of {self.scale} a side "
                            f"(use a crop that is)")
        return decimate(gaussian_blur(clean, self.blur_sigma), self.scale)

    def make_input(self, clean: torch.Tensor, three: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return upsample_bicubic(self.degrade(clean), clean.shape[-2:])

    def describe(self) -> str:
        return f"x{self.scale} super-resolution (Gaussian blur sigma {self.blur_sigma} px, decimation by {self.scale})"


# name -> a builder from the downstream settings (attributes noise_sigma, blur_sigma)
TASKS = {
    "rgb2hsi": lambda s: Rgb2Hsi(),
    "denoise": lambda s: Denoise(s.noise_sigma),
    "sr4": lambda s: SuperResolution(4, s.blur_sigma),
}


def make_task(settings):
    """The task object named by `settings.task`."""
    if settings.task not in TASKS:
        raise UserError(f"downstream task {settings.task!r}: expected one of {', '.join(TASKS)}")
    return TASKS[settings.task](settings)


def trimmed_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The largest (h, w) <= (height, width) that are multiples of `multiple`."""
    return height - height % multiple, width - width % multiple


def check_crop(task, crop: int) -> None:
    if crop % task.multiple:
        raise UserError(f"--crop {crop}: the {task.name} task needs a multiple of {task.multiple}")

