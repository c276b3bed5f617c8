import math

import pytest
import torch

from ubf.models.sr3_unet import NoiseLevelEncoding, SelfAttention, SR3UNet, count_parameters, init_weights


PAPER = dict(in_channel=5, out_channel=5, inner_channel=64, norm_groups=32, channel_mults=(1, 2, 4, 8, 8),
             attn_res=(16,), res_blocks=2, dropout=0.2, with_noise_level_emb=True)


def tiny(**overrides):
    settings = dict(in_channel=5, out_channel=5, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(4,), res_blocks=1, dropout=0.0, image_size=8)
    settings.update(overrides)
    return SR3UNet(**settings)


@pytest.mark.parametrize("image_size, expected", [(256, 97_808_069), (64, 93_872_069)])
def test_paper_parameter_count_matches_reference(image_size, expected):
    with torch.device("meta"):
        model = SR3UNet(image_size=image_size, **PAPER)
    assert count_parameters(model) == expected


def test_attention_sits_where_the_side_is_16():
    with torch.device("meta"):
        big, small = SR3UNet(image_size=256, **PAPER), SR3UNet(image_size=64, **PAPER)
    # 256: 256-128-64-32-16, attention at the 512-channel level; 64: 64-32-16, at the 256-channel level
    widths = lambda m: sorted({a.qkv.in_channels for a in m.modules() if isinstance(a, SelfAttention)})
    assert widths(big) == [512] and widths(small) == [256, 512]  # 512: the middle block
    count = lambda m: sum(isinstance(a, SelfAttention) for a in m.modules())
    assert count(big) == count(small) == 2 + 3 + 1


def test_reference_state_dict_names():
    keys = set(tiny().state_dict())
    for key in ("noise_level_mlp.1.weight", "noise_level_mlp.3.bias", "downs.0.weight",
                "downs.1.res_block.noise_func.noise_func.0.weight", "downs.1.res_block.block1.block.0.weight",
                "downs.1.res_block.block2.block.3.weight", "downs.2.conv.weight", "mid.0.attn.qkv.weight",
                "mid.0.attn.out.bias", "mid.0.attn.norm.weight", "ups.0.res_block.res_conv.weight",
                "final_conv.block.3.weight"):
        assert key in keys, key


def test_shapes_and_noise_level_matters():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(3, 5, 8, 8)
    out_a = model(x, torch.full((3,), 0.2))
    out_b = model(x, torch.full((3,), 0.9))
    assert out_a.shape == (3, 5, 8, 8)
    assert not torch.allclose(out_a, out_b)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 5, 7, 8), torch.ones(1))


def test_noise_level_encoding_closed_form():
    enc = NoiseLevelEncoding(4)(torch.tensor([0.5]))
    # frequencies 1e4 ** -(0/2), 1e4 ** -(1/2) = 1, 0.01
    expected = torch.tensor([[math.sin(0.5), math.sin(0.005), math.cos(0.5), math.cos(0.005)]])
    torch.testing.assert_close(enc, expected)


def test_attention_is_softmax_qk_v():
    torch.manual_seed(1)
    attn = SelfAttention(8, groups=4)
    x = torch.randn(2, 8, 3, 4)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 8, 12).unbind(1)  # (N, C, HW)
    weights = torch.softmax(torch.einsum("ncp,ncq->npq", q, k) / math.sqrt(8), dim=-1)
    mixed = torch.einsum("npq,ncq->ncp", weights, v).reshape(2, 8, 3, 4)
    torch.testing.assert_close(attn(x), attn.out(mixed) + x, atol=1e-5, rtol=1e-5)


def test_orthogonal_init_gives_orthonormal_rows_and_zero_bias():
    torch.manual_seed(2)
    model = tiny()
    init_weights(model, "orthogonal")
    conv = model.downs[1].res_block.block1.block[3]  # 8 -> 8, 3x3: (8, 72) matrix
    flat = conv.weight.reshape(conv.weight.shape[0], -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(8), atol=1e-5, rtol=0)
    assert torch.count_nonzero(conv.bias) == 0
    with pytest.raises(ValueError):
        init_weights(model, "xavier")


# --- the forward against an independent functional one, and the memory layout (issue 16) ---

def _functional_forward(sd: dict, x: torch.Tensor, noise_level: torch.Tensor, groups: int) -> torch.Tensor:
    """The SR3 UNet written from the state dict alone, attention as the reference's einsum."""
    F = torch.nn.functional

    def norm_act_conv(prefix, h):
        h = F.group_norm(h, groups, sd[f"{prefix}.block.0.weight"], sd[f"{prefix}.block.0.bias"])
        return F.conv2d(h * torch.sigmoid(h), sd[f"{prefix}.block.3.weight"], sd[f"{prefix}.block.3.bias"], padding=1)

    def res_block(prefix, h, emb):
        out = norm_act_conv(f"{prefix}.block1", h)
        shift = F.linear(emb, sd[f"{prefix}.noise_func.noise_func.0.weight"], sd[f"{prefix}.noise_func.noise_func.0.bias"])
        out = norm_act_conv(f"{prefix}.block2", out + shift[:, :, None, None])
        skip = F.conv2d(h, sd[f"{prefix}.res_conv.weight"], sd[f"{prefix}.res_conv.bias"]) \
            if f"{prefix}.res_conv.weight" in sd else h
        return out + skip

    def attention(prefix, h):
        n, c, height, width = h.shape
        normed = F.group_norm(h, groups, sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"])
        q, k, v = F.conv2d(normed, sd[f"{prefix}.qkv.weight"]).chunk(3, dim=1)
        scores = torch.einsum("nchw,ncyx->nhwyx", q, k).reshape(n, height, width, -1) / math.sqrt(c)
        weights = torch.softmax(scores, -1).reshape(n, height, width, height, width)
        mixed = torch.einsum("nhwyx,ncyx->nchw", weights, v)
        return F.conv2d(mixed, sd[f"{prefix}.out.weight"], sd[f"{prefix}.out.bias"]) + h

    def layer(prefix, h, emb):
        if f"{prefix}.weight" in sd:  # the first plain conv
            return F.conv2d(h, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], padding=1)
        if f"{prefix}.conv.weight" in sd:  # down (stride 2) or up (nearest x2, then conv)
            if prefix.startswith("ups"):
                return F.conv2d(F.interpolate(h, scale_factor=2.0), sd[f"{prefix}.conv.weight"], sd[f"{prefix}.conv.bias"], padding=1)
            return F.conv2d(h, sd[f"{prefix}.conv.weight"], sd[f"{prefix}.conv.bias"], stride=2, padding=1)
        h = res_block(f"{prefix}.res_block", h, emb)
        return attention(f"{prefix}.attn", h) if f"{prefix}.attn.qkv.weight" in sd else h

    def count(name):
        return len({key.split(".")[1] for key in sd if key.startswith(name + ".")})

    half = 4  # inner_channel 8 -> 4 frequencies
    angles = noise_level[:, None] * torch.exp(-math.log(1e4) * torch.arange(half) / half)[None]
    emb = torch.cat([angles.sin(), angles.cos()], -1)
    emb = F.linear(emb, sd["noise_level_mlp.1.weight"], sd["noise_level_mlp.1.bias"])
    emb = F.linear(emb * torch.sigmoid(emb), sd["noise_level_mlp.3.weight"], sd["noise_level_mlp.3.bias"])
    skips, h = [], x
    for i in range(count("downs")):
        h = layer(f"downs.{i}", h, emb)
        skips.append(h)
    for i in range(count("mid")):
        h = layer(f"mid.{i}", h, emb)
    for i in range(count("ups")):
        is_block = f"ups.{i}.res_block.block1.block.0.weight" in sd
        h = layer(f"ups.{i}", torch.cat((h, skips.pop()), 1) if is_block else h, emb)
    return norm_act_conv("final_conv", h)


@pytest.mark.parametrize("channels_last, fused", [(False, True), (True, True), (False, False)])
def test_forward_equals_a_functional_reimplementation(channels_last, fused):
    torch.manual_seed(3)
    model = tiny(fused_attention=fused).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x, level = torch.randn(2, 5, 8, 8), torch.rand(2)
    expected = _functional_forward(sd, x, level, groups=4)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x, level), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_every_feature_map_keeps_the_input_layout(channels_last):
    """A channels-last map in a contiguous net makes each later conv reorder its weights (issue 16)."""
    model = tiny()
    x = torch.randn(2, 5, 8, 8)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model, x = model.to(memory_format=layout), x.contiguous(memory_format=layout)
    wrong = []

    def check(module, _, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and not out.is_contiguous(memory_format=layout):
            wrong.append((type(module).__name__, tuple(out.shape), out.stride()))

    for module in model.modules():
        module.register_forward_hook(check)
    out = model(x, torch.rand(2))
    assert not wrong, wrong[:3]
    assert out.is_contiguous(memory_format=layout)
