import math

import pytest
import torch

from models.sr3_unet import NoiseLevelEncoding, SelfAttention, SR3UNet, count_parameters, init_weights


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
