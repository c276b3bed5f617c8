"""The SR3 UNet: a noise-predicting UNet conditioned on a continuous noise level.

Same architecture as the SR3 code the paper's diffusion stage uses (residual blocks with GroupNorm,
Swish and a per-block additive noise-level embedding; single-head self-attention at the resolutions
listed in `attn_res`; `res_blocks` blocks per level going down, `res_blocks + 1` coming up). The
attribute names follow the reference so that its `*_gen.pth` weights load into this module (see
`pipeline.diffusion_sample.load_weights_for_sampling`). With in/out channels 5, inner 64, mults
[1, 2, 4, 8, 8], attention at 16 px and 2 res blocks it has 97,808,069 parameters at 256 x 256 and
93,872,069 at 64 x 64 (the attention then sits at a level with fewer channels).

The UNet knows nothing of noise schedules: it maps (x (N, C, H, W), noise_level (N,)) to a
prediction of the noise, (N, out_channel, H, W).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ubf.models.class_embedding import attach_class_embedding


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal features of a continuous noise level: (N,) -> (N, dim), frequencies 1 .. 1e-4."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.scale = float(scale)

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = torch.arange(half, dtype=noise_level.dtype, device=noise_level.device) / half
        # scale 1 (reference): every angle is below 1 rad, so levels near 0 differ little in the features
        angles = self.scale * noise_level.reshape(-1, 1) * torch.exp(-math.log(1e4) * exponent).unsqueeze(0)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when a 4-D tensor is stored pixel-major, else the default (N, C, H, W) order."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class NoiseShift(nn.Module):
    """Adds a per-channel shift computed from the noise-level embedding to a feature map."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(embed_dim, channels))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return x + self.noise_func(embedding).view(x.shape[0], -1, 1, 1)


class NormActConv(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> 3x3 conv; `block` indices match the reference's."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            Swish(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualBlock(nn.Module):
    """Two NormActConv layers with the noise-level shift between them and a (1x1) skip."""

    def __init__(self, dim: int, dim_out: int, embed_dim: int | None, groups: int, dropout: float):
        super().__init__()
        self.noise_func = NoiseShift(embed_dim, dim_out) if embed_dim else None
        self.block1 = NormActConv(dim, dim_out, groups)
        self.block2 = NormActConv(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        h = self.block1(x)
        if self.noise_func is not None:
            h = self.noise_func(h, embedding)
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels with a residual connection."""

    def __init__(self, channels: int, groups: int, fused: bool = True):
        super().__init__()
        self.fused = fused  # F.scaled_dot_product_attention; False: softmax(q k^T / sqrt(C)) v in two matmuls
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        layout = memory_format_of(qkv)
        if layout is torch.channels_last:  # (N, H, W, 3C) in memory: the pixel-major view costs nothing
            q, k, v = qkv.permute(0, 2, 3, 1).reshape(n, h * w, 3 * c).split(c, dim=2)
        else:
            q, k, v = qkv.reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        # (N, HW, C) each; softmax(q k^T / sqrt(C)) v
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(c), dim=-1)
            attended = torch.bmm(weights, v)
        # (N, C, H, W) in the input's layout: the transposed view would otherwise be channels-last, and
        # every later convolution would reorder its weights (the copy_ calls of issue 16)
        mixed = attended.transpose(1, 2).reshape(n, c, h, w).contiguous(memory_format=layout)
        return self.out(mixed) + x


class ResidualAttentionBlock(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, dim: int, dim_out: int, *, embed_dim: int | None, groups: int, dropout: float,
                 with_attn: bool, fused_attention: bool = True):
        super().__init__()
        self.res_block = ResidualBlock(dim, dim_out, embed_dim, groups, dropout)
        self.attn = SelfAttention(dim_out, groups, fused_attention) if with_attn else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        x = self.res_block(x, embedding)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class SR3UNet(nn.Module):
    """Noise predictor eps(x, noise_level): (N, in_channel, H, W), (N,) -> (N, out_channel, H, W).

    H and W must be divisible by 2 ** (len(channel_mults) - 1). `image_size` only decides at which
    levels attention sits (where the feature map side equals an entry of `attn_res`). The forward
    keeps the input's memory format (contiguous or channels-last) through every layer.
    """

    def __init__(self, in_channel: int = 5, out_channel: int = 5, inner_channel: int = 64,
                 norm_groups: int = 32, channel_mults=(1, 2, 4, 8, 8), attn_res=(16,),
                 res_blocks: int = 2, dropout: float = 0.0, with_noise_level_emb: bool = True,
                 image_size: int = 256, fused_attention: bool = True, noise_level_scale: float = 1.0):
        super().__init__()
        self.levels = len(channel_mults)
        attn_res = tuple(attn_res) if isinstance(attn_res, (list, tuple)) else (attn_res,)
        embed_dim = inner_channel if with_noise_level_emb else None
        if with_noise_level_emb:
            self.noise_level_mlp = nn.Sequential(
                NoiseLevelEncoding(inner_channel, noise_level_scale),
                nn.Linear(inner_channel, inner_channel * 4),
                Swish(),
                nn.Linear(inner_channel * 4, inner_channel),
            )
        else:
            self.noise_level_mlp = None

        def block(dim, dim_out, with_attn):
            return ResidualAttentionBlock(dim, dim_out, embed_dim=embed_dim, groups=norm_groups,
                                          dropout=dropout, with_attn=with_attn, fused_attention=fused_attention)

        channels = inner_channel
        skip_channels = [channels]
        resolution = image_size
        downs: list[nn.Module] = [nn.Conv2d(in_channel, inner_channel, 3, padding=1)]
        for level, mult in enumerate(channel_mults):
            with_attn = resolution in attn_res
            for _ in range(res_blocks):
                downs.append(block(channels, inner_channel * mult, with_attn))
                channels = inner_channel * mult
                skip_channels.append(channels)
            if level != self.levels - 1:
                downs.append(Downsample(channels))
                skip_channels.append(channels)
                resolution //= 2
        self.downs = nn.ModuleList(downs)

        self.mid = nn.ModuleList([block(channels, channels, True), block(channels, channels, False)])

        ups: list[nn.Module] = []
        for level in reversed(range(self.levels)):
            with_attn = resolution in attn_res
            for _ in range(res_blocks + 1):
                ups.append(block(channels + skip_channels.pop(), inner_channel * channel_mults[level], with_attn))
                channels = inner_channel * channel_mults[level]
            if level != 0:
                ups.append(Upsample(channels))
                resolution *= 2
        self.ups = nn.ModuleList(ups)

        self.final_conv = NormActConv(channels, out_channel, norm_groups)
        self.class_embedding = None  # optional hook: a models.class_embedding.ClassEmbedding (class-conditional)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"SR3UNet: image side {tuple(x.shape[-2:])} must be divisible by {factor}")
        embedding = self.noise_level_mlp(noise_level) if self.noise_level_mlp is not None else None
        if self.class_embedding is not None:  # labels None or < 0: the "no class" token
            embedding = self.class_embedding.add_to(embedding, class_labels)
        skips = []
        for layer in self.downs:
            x = layer(x, embedding) if isinstance(layer, ResidualAttentionBlock) else layer(x)
            skips.append(x)
        for layer in self.mid:
            x = layer(x, embedding)
        for layer in self.ups:
            if isinstance(layer, ResidualAttentionBlock):
                x = layer(torch.cat((x, skips.pop()), dim=1), embedding)
            else:
                x = layer(x)
        return self.final_conv(x)


def unet_from_config(model_cfg: dict) -> SR3UNet:
    """Build the UNet from a config's `model` section (`unet` + `diffusion.image_size`)."""
    unet = model_cfg["unet"]
    network = SR3UNet(
        in_channel=unet["in_channel"],
        out_channel=unet["out_channel"],
        inner_channel=unet["inner_channel"],
        norm_groups=unet["norm_groups"],
        channel_mults=tuple(unet["channel_multiplier"]),
        attn_res=tuple(unet["attn_res"]),
        res_blocks=unet["res_blocks"],
        dropout=unet["dropout"],
        with_noise_level_emb=unet["with_noise_level_emb"],
        image_size=model_cfg["diffusion"]["image_size"],
        fused_attention=unet.get("fused_attention", True),
        noise_level_scale=unet.get("noise_level_scale", 1.0),
    )
    # class-conditional models list their classes in model.diffusion.class_names (see ubf/models/class_embedding.py)
    return attach_class_embedding(network, len(model_cfg["diffusion"].get("class_names") or ()), unet["inner_channel"])


def init_weights(module: nn.Module, method: str = "orthogonal") -> None:
    """Re-initialise conv and linear weights as the reference's training does ('orthogonal', zero
    biases); 'default' keeps PyTorch's initialisation."""
    if method == "default":
        return
    if method != "orthogonal":
        raise ValueError(f"unknown init method {method!r}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight, gain=1.0)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
