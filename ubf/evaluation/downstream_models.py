"""The downstream networks of `Evaluate.py downstream --model`, found by name in `MODELS`.

Every model maps (N, in_channels, H, W) to (N, bands, H, W) and has the task's `path` beside its body:
`"linear"` (rgb2hsi) adds a learned per-pixel linear map of the input; `"identity"` (denoise, sr4)
adds the input itself plus a learned per-pixel linear correction initialised to zero, so the model
starts as the task's input and learns a correction (`_Path` says why the linear part is needed).

- `cnn` (default width 32): four 3 x 3 convolutions with GELU (`blocks=2`): a receptive field of
  9 x 9 pixels; mostly a spectral prior. Unchanged from before the UNet, so earlier figures reproduce
  (also its identity skip path for denoising, `SKIP_OVERRIDES`; `--skip linear` is far better there).
- `unet` (default width 16): 1 x 1 conv in -> w, three levels of width w, 2w, 4w (two 3 x 3 convs +
  GELU each; 2 x 2 average pooling down, bilinear upsampling and a skip concatenation up), 1 x 1 conv
  w -> bands, initialised to zero so the model starts as its path. Receptive field 52 pixels
  (measured by gradients in tests/test_downstream_models.py). Any H, W: inputs are padded (reflect) to
  a multiple of 4 and the output cropped back.
- `pixel` (default width 64): 1 x 1 convolutions only (in -> w -> w -> bands, GELU): the spectral
  prior alone, the reference point for how much spatial context is worth.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ubf.core.errors import UserError

PATHS = ("linear", "identity")


class SpectralReconstructionNet(nn.Module):
    """(N, in, H, W) -> (N, C, H, W): a per-pixel linear map plus a residual convolutional body.

    The linear path alone is the least-squares baseline of the design notes (37 dB on Chikusei); the
    body adds spatial context.
    """

    def __init__(self, bands: int, width: int = 32, blocks: int = 2, in_channels: int = 3, residual: bool = False):
        super().__init__()
        self.residual = residual  # denoising: the input plus a learned correction (starts as the identity)
        self.linear = nn.Conv2d(in_channels, bands, 1)
        if residual:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(width, bands, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x) + self.body(x)
        return x + out if self.residual else out


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GELU(),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GELU())


class _Path(nn.Module):
    """The task's path beside a body: a learned per-pixel linear map (`linear`), or the input itself plus
    a learned per-pixel linear correction that starts at zero (`identity`, as the cnn's residual path).

    Without the correction the body's output passes through `width` channels, fewer than the bands, so
    the input plus the body can remove only a `width`-dimensional part of a noise (a UNet of width 16
    on Chikusei at sigma 0.1 reached 22.2 dB from the noisy 20.0 dB in 3000 steps); with it, 25.7 dB in
    400 steps, and denoising uses the linear path by default (36.7 dB, downstream_tasks)."""

    def __init__(self, kind: str, in_channels: int, bands: int):
        super().__init__()
        if kind not in PATHS:
            raise UserError(f"model path {kind!r}: expected one of {', '.join(PATHS)}")
        if kind == "identity" and in_channels != bands:
            raise UserError(f"an identity path needs as many input channels as bands ({in_channels} != {bands})")
        self.identity = kind == "identity"
        self.linear = nn.Conv2d(in_channels, bands, 1)
        if self.identity:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) if self.identity else self.linear(x)


class DownstreamUNet(nn.Module):
    """(N, in, H, W) -> (N, bands, H, W): the path plus a three-level UNet (widths w, 2w, 4w)."""

    LEVELS = 3

    def __init__(self, in_channels: int, bands: int, width: int = 16, path: str = "linear"):
        super().__init__()
        self.path = _Path(path, in_channels, bands)
        self.head = nn.Conv2d(in_channels, width, 1)
        self.down1 = _double_conv(width, width)
        self.down2 = _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = _double_conv(4 * width + 2 * width, 2 * width)
        self.up1 = _double_conv(2 * width + width, width)
        self.tail = nn.Conv2d(width, bands, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        multiple = 2 ** (self.LEVELS - 1)
        pad_h, pad_w = -h % multiple, -w % multiple
        y = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w) else "replicate") \
            if pad_h or pad_w else x
        s1 = self.down1(self.head(y))
        s2 = self.down2(F.avg_pool2d(s1, 2))
        b = self.bottom(F.avg_pool2d(s2, 2))
        u2 = self.up2(torch.cat([F.interpolate(b, size=s2.shape[-2:], mode="bilinear", align_corners=False), s2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=s1.shape[-2:], mode="bilinear", align_corners=False), s1], 1))
        return self.path(x) + self.tail(u1)[..., :h, :w]


class PixelNet(nn.Module):
    """(N, in, H, W) -> (N, bands, H, W): the path plus 1 x 1 convolutions only (no spatial context)."""

    def __init__(self, in_channels: int, bands: int, width: int = 64, path: str = "identity"):
        super().__init__()
        self.path = _Path(path, in_channels, bands)
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(),
                                  nn.Conv2d(width, bands, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x) + self.body(x)


# name -> (default width, builder(in_channels, bands, path, width, blocks), default learning rate)
# The UNet's: at 2e-3 its real-only denoising curve blew up once (38.1 dB at step 500, -8 dB at 600) and
# its sr4 curve fell 0.7 dB after step 400; 1e-3 climbed smoothly (bench/bench_downstream.py, docs/evaluation.md).
MODELS = {
    "cnn": (32, lambda i, c, path, w, blocks: SpectralReconstructionNet(c, w, blocks, i, residual=path == "identity"),
            2e-3),
    "unet": (16, lambda i, c, path, w, blocks: DownstreamUNet(i, c, w, path), 1e-3),
    "pixel": (64, lambda i, c, path, w, blocks: PixelNet(i, c, w, path), 2e-3),
}


# where a model keeps another skip path than the task's default: the cnn denoised with the identity path
# before the linear one was measured better, and keeps it so that its earlier figures reproduce
SKIP_OVERRIDES = {"cnn": {"denoise": "identity"}}


def default_width(name: str) -> int:
    if name not in MODELS:
        raise UserError(f"downstream model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name][0]


def default_lr(name: str) -> float:
    default_width(name)  # checks the name
    return MODELS[name][2]


def build_model(name: str, in_channels: int, bands: int, path: str, width: int | None = None,
                blocks: int = 2) -> nn.Module:
    """The model `name` for a task with `in_channels` inputs, `bands` outputs and the given path."""
    width = default_width(name) if width is None else width
    return MODELS[name][1](in_channels, bands, path, width, blocks)
