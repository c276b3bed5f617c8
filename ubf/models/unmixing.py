"""The RGB-to-abundance unmixing autoencoder of the paper (encoder -> softmax -> 1x1 decoder = endmembers).

Encoder: conv3x3(in -> w0), then one SSPN stage per width step (w0 -> w1 -> ... -> K). An SSPN stage is
`n_blocks` spatial-spectral blocks (a 3x3 residual block followed by a 1x1 residual block with channel
attention, both scaled by `res_scale`), a global skip, and a final conv3x3 to the next width. With the
paper's widths [32, 64, 128, 96, 48] and K = 5 this is the authors' network. The softmax over the K
channels gives abundances that are non-negative and sum to one per pixel; the bias-free 1x1 decoder
holds the endmembers as its weight (bands x K).

`encoder="pixel_mlp"` is a documented departure: a per-pixel 3-64-64-K network (1x1 convolutions),
which sees no spatial context but trains in seconds on a CPU.

`brightness=True` is another: the encoder emits one more channel, a per-pixel log-brightness `b`,
and the reconstruction becomes exp(b) * E a. Sum-to-one abundances can only reach brightness levels
inside the convex hull of the K endmembers; this factor lifts that limit while the abundances stay
on the simplex (the DDPM still models abundances only; synthesis uses a brightness of one).

`brightness="cone"` (with `simplex="relu"`) separates a per-pixel brightness without an extra channel:
the head's non-negative outputs `c = relu(z)` are split into abundances `a = c / sum(c)` on the simplex and
a brightness `s = sum(c)`, and the reconstruction is `s * E a = E c`, any non-negative combination of the
endmembers (a cone instead of their convex hull). With endmembers that are real pixels of the scene this
reaches the brightness of every pixel while the abundances stay sharp (docs/stage1_quality.md);
`Unmixing.py infer` stores `s` beside the abundances (`Bright`) and synthesis multiplies it back.

`simplex="relu"` and `linear_skip=True` are the improved head (docs/stage1_quality.md): the encoder's
K outputs are added to an affine map of the input pixel, `z = B [x; 1] + encoder(x)`, and the
abundances are `relu(z) / sum(relu(z))`. With `B` set to the barycentric coordinates of a tetrahedron
enclosing the training inputs and the endmembers to the linear regression's image of its vertices
(`models.unmixing_init.linear_simplex_init`), the untrained model *is* the per-pixel linear map on
every input inside the tetrahedron, with abundances on the simplex; training then only has to improve
on it. The encoder's last layer starts at zero so that this holds at step 0.
"""
import torch
import torch.nn as nn


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average -> bottleneck -> sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualBlock(nn.Module):
    """x + res_scale * body(x); body = conv-ReLU-conv (kernel k), optionally followed by channel attention."""

    def __init__(self, channels: int, kernel_size: int, res_scale: float, attention: bool):
        super().__init__()
        pad = kernel_size // 2
        layers = [nn.Conv2d(channels, channels, kernel_size, padding=pad), nn.ReLU(inplace=True),
                  nn.Conv2d(channels, channels, kernel_size, padding=pad)]
        if attention:
            layers.append(ChannelAttention(channels))
        self.body = nn.Sequential(*layers)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class SpatialSpectralBlock(nn.Module):
    """A 3x3 residual block (spatial) then a 1x1 residual block with channel attention (spectral)."""

    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.spatial = ResidualBlock(channels, 3, res_scale, attention=False)
        self.spectral = ResidualBlock(channels, 1, res_scale, attention=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectral(self.spatial(x))


class SSPNStage(nn.Module):
    """`n_blocks` spatial-spectral blocks with a global skip, then conv3x3 to `out_channels`."""

    def __init__(self, channels: int, out_channels: int, n_blocks: int, res_scale: float):
        super().__init__()
        self.blocks = nn.Sequential(*[SpatialSpectralBlock(channels, res_scale) for _ in range(n_blocks)])
        self.project = conv3x3(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(x) + x)


class SSPNEncoder(nn.Module):
    """The paper's encoder: (N, in, H, W) -> (N, K, H, W) logits."""

    def __init__(self, in_channels: int, widths: list[int], num_endmembers: int, n_blocks: int, res_scale: float):
        super().__init__()
        self.stem = conv3x3(in_channels, widths[0])
        outs = list(widths[1:]) + [num_endmembers]
        self.stages = nn.Sequential(*[SSPNStage(w, o, n_blocks, res_scale) for w, o in zip(widths, outs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class PixelMLPEncoder(nn.Module):
    """Per-pixel encoder (1x1 convolutions): (N, in, H, W) -> (N, K, H, W) logits."""

    def __init__(self, in_channels: int, hidden: int, num_endmembers: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, num_endmembers, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def last_conv(module: nn.Module) -> nn.Conv2d:
    """The encoder's output layer (the last Conv2d it holds)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


def relu_simplex(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, K, H, W) -> abundances relu(z) / sum(relu(z)): exact zeros, sum one (uniform where all z <= 0)."""
    positive = torch.relu(logits) + eps
    return positive / positive.sum(dim=1, keepdim=True)


class UnmixingAutoencoder(nn.Module):
    """3-band image -> abundances (softmax over K) -> HSI through the bias-free endmember decoder."""

    def __init__(self, in_channels: int = 3, out_bands: int = 59, num_endmembers: int = 5,
                 widths=(32, 64, 128, 96, 48), n_blocks: int = 3, res_scale: float = 0.1,
                 encoder: str = "sspn", mlp_hidden: int = 64, brightness: bool | str = False,
                 simplex: str = "softmax", linear_skip: bool = False):
        super().__init__()
        # False: none (the paper); True or "exp": an extra log-brightness channel; "cone": s = sum relu(z)
        self.brightness = {False: None, True: "exp", "exp": "exp", "cone": "cone"}.get(brightness, brightness)
        if self.brightness not in (None, "exp", "cone"):
            raise ValueError(f"unknown brightness '{brightness}' (false, true/'exp' or 'cone')")
        if simplex not in ("softmax", "relu"):
            raise ValueError(f"unknown simplex head '{simplex}' (softmax or relu)")
        if self.brightness == "cone" and simplex != "relu":
            raise ValueError("brightness 'cone' needs simplex 'relu' (the brightness is the sum of relu(z))")
        self.simplex = simplex
        outputs = num_endmembers + (1 if self.brightness == "exp" else 0)
        if encoder == "sspn":
            self.encoder = SSPNEncoder(in_channels, list(widths), outputs, n_blocks, res_scale)
        elif encoder == "pixel_mlp":
            self.encoder = PixelMLPEncoder(in_channels, mlp_hidden, outputs)
        else:
            raise ValueError(f"unknown encoder '{encoder}' (sspn or pixel_mlp)")
        # the affine path B [x; 1] of the improved head; the encoder then starts as a zero residual
        self.skip = nn.Conv2d(in_channels, outputs, kernel_size=1, bias=True) if linear_skip else None
        if linear_skip:  # all zero until decoder_init "linear_simplex" sets B (brightness row stays 0: exp(0) = 1)
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
            nn.init.zeros_(last_conv(self.encoder).weight)
            nn.init.zeros_(last_conv(self.encoder).bias)
        self.decoder = nn.Conv2d(num_endmembers, out_bands, kernel_size=1, bias=False)

    @property
    def num_endmembers(self) -> int:
        return self.decoder.in_channels

    @property
    def out_bands(self) -> int:
        return self.decoder.out_channels

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, K [+1 brightness], H, W) pre-simplex outputs."""
        out = self.encoder(x)
        return out if self.skip is None else out + self.skip(x)

    def to_simplex(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, :self.num_endmembers]
        return torch.softmax(logits, dim=1) if self.simplex == "softmax" else relu_simplex(logits)

    def abundances(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, K, H, W), non-negative, summing to one over K."""
        return self.to_simplex(self.logits(x))

    def decode(self, abundances: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) -> (N, C, H, W): each pixel is End @ abundance."""
        return self.decoder(abundances)

    def endmembers(self) -> torch.Tensor:
        """The decoder weight as a (C, K) endmember matrix."""
        return self.decoder.weight[:, :, 0, 0]

    def brightness_of(self, logits: torch.Tensor) -> torch.Tensor | None:
        """(N, 1, H, W) per-pixel brightness factor of the reconstruction, or None without brightness."""
        if self.brightness == "exp":
            return torch.exp(logits[:, self.num_endmembers:].clamp(-10.0, 10.0))
        if self.brightness == "cone":
            return (torch.relu(logits[:, :self.num_endmembers]) + 1e-6).sum(dim=1, keepdim=True)
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(abundances (N, K, H, W), reconstruction (N, C, H, W))."""
        logits = self.logits(x)
        abundances = self.to_simplex(logits)
        reconstruction = self.decode(abundances)
        brightness = self.brightness_of(logits)
        if brightness is not None:
            reconstruction = reconstruction * brightness
        return abundances, reconstruction

    @property
    def map_channels(self) -> int:
        """Channels of `maps`: K abundances, plus one brightness channel when the model separates it."""
        return self.num_endmembers + (0 if self.brightness is None else 1)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, K [+1], H, W): the abundances and, with brightness, the brightness factor last."""
        logits = self.logits(x)
        abundances, brightness = self.to_simplex(logits), self.brightness_of(logits)
        return abundances if brightness is None else torch.cat([abundances, brightness], dim=1)

    def split_maps(self, maps, channel_axis: int = 0):
        """Split what `maps` gives into (abundances, brightness or None) along `channel_axis` (0 for one
        (K [+1], H, W) map, 2 for an (H, W, K [+1]) array): one place knows that the brightness comes last.
        Works on tensors and numpy arrays alike; the brightness keeps its axis (length one)."""
        count = self.num_endmembers
        if maps.shape[channel_axis] not in (count, count + 1):
            raise ValueError(f"maps have {maps.shape[channel_axis]} channels on axis {channel_axis}; "
                             f"this model gives {self.map_channels}")
        index = [slice(None)] * maps.ndim
        index[channel_axis] = slice(0, count)
        abundances = maps[tuple(index)]
        if maps.shape[channel_axis] == count:
            return abundances, None
        index[channel_axis] = slice(count, count + 1)
        return abundances, maps[tuple(index)]

    def unmix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(abundances (N, K, H, W), brightness (N, 1, H, W) or None, reconstruction (N, C, H, W))."""
        logits = self.logits(x)
        abundances = self.to_simplex(logits)
        brightness = self.brightness_of(logits)
        reconstruction = self.decode(abundances)
        return abundances, brightness, reconstruction if brightness is None else reconstruction * brightness


def build_unmixing_model(model_cfg: dict, in_channels: int, out_bands: int) -> UnmixingAutoencoder:
    """The autoencoder from the `model` section of an unmixing config."""
    return UnmixingAutoencoder(
        in_channels=in_channels, out_bands=out_bands, num_endmembers=model_cfg["num_endmembers"],
        widths=model_cfg["widths"], n_blocks=model_cfg["n_blocks"], res_scale=model_cfg["res_scale"],
        encoder=model_cfg["encoder"], mlp_hidden=model_cfg["mlp_hidden"],
        brightness=model_cfg.get("brightness", False), simplex=model_cfg.get("simplex", "softmax"),
        linear_skip=model_cfg.get("linear_skip", False))
