import math

import pytest
import torch

from ubf.models.losses import charbonnier, endmember_tv, spectral_angle_loss, spectral_smoothness_tv, unmixing_loss
from ubf.models.unmixing import UnmixingAutoencoder


def test_paper_network_shapes_and_size():
    model = UnmixingAutoencoder(in_channels=3, out_bands=59, num_endmembers=5)
    abundances, recon = model(torch.rand(2, 3, 12, 10))
    assert abundances.shape == (2, 5, 12, 10) and recon.shape == (2, 59, 12, 10)
    assert sum(p.numel() for p in model.parameters()) == 2_247_329
    assert model.decoder.bias is None and model.endmembers().shape == (59, 5)


@pytest.mark.parametrize("encoder", ["sspn", "pixel_mlp"])
def test_abundances_on_simplex_and_reconstruction_is_linear_mixing(encoder):
    torch.manual_seed(0)
    model = UnmixingAutoencoder(out_bands=7, num_endmembers=4, widths=(8, 8), n_blocks=1, encoder=encoder)
    abundances, recon = model(torch.rand(1, 3, 6, 5))
    assert float(abundances.detach().min()) >= 0
    torch.testing.assert_close(abundances.sum(1), torch.ones(1, 6, 5))
    pixel = abundances[0, :, 2, 3]
    torch.testing.assert_close(recon[0, :, 2, 3], model.endmembers() @ pixel)


def test_loss_terms_hand_values():
    x = torch.zeros(1, 2, 1, 1)
    assert float(charbonnier(x, x)) == pytest.approx(1e-3)
    assert float(charbonnier(x + 0.3, x)) == pytest.approx(math.sqrt(0.09 + 1e-6))
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert float(spectral_angle_loss(a, b)) == pytest.approx(math.pi / 2, abs=1e-3)
    assert float(spectral_angle_loss(a, 3 * a)) < 1e-3
    # decoder weight (C=3 bands, K=2 endmembers)
    w = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 1.0]]).view(3, 2, 1, 1)
    # across endmembers: differences 1, 1, -1 -> 2 * mean(1) = 2
    assert float(endmember_tv(w)) == pytest.approx(2.0)
    # across bands: endmember 0: 0, 2; endmember 1: 0, 0 -> 2 * mean(0, 4, 0, 0) = 2
    assert float(spectral_smoothness_tv(w)) == pytest.approx(2.0)
    w_smooth = torch.ones(3, 2, 1, 1)
    assert float(spectral_smoothness_tv(w_smooth)) == 0 and float(endmember_tv(w_smooth)) == 0


def test_weighted_total_uses_only_enabled_terms():
    pred, target = torch.rand(1, 4, 3, 3), torch.rand(1, 4, 3, 3)
    w = torch.rand(4, 2, 1, 1)
    total, terms = unmixing_loss(pred, target, w, {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015})
    expected = terms["charbonnier"] + 0.1 * terms["sad"] + 0.015 * terms["endmember_tv"]
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_brightness_option_scales_the_mixture_and_keeps_abundances_on_the_simplex():
    torch.manual_seed(0)
    model = UnmixingAutoencoder(out_bands=7, num_endmembers=4, encoder="pixel_mlp", brightness=True)
    x = torch.rand(1, 3, 5, 6)
    abundances, recon = model(x)
    logits = model.encoder(x)
    torch.testing.assert_close(abundances, model.abundances(x))
    torch.testing.assert_close(abundances.sum(1), torch.ones(1, 5, 6))
    expected = model.endmembers() @ abundances[0, :, 1, 2] * torch.exp(logits[0, 4, 1, 2])
    torch.testing.assert_close(recon[0, :, 1, 2], expected)
    assert model.encoder.net[-1].out_channels == 5 and model.num_endmembers == 4


@pytest.mark.parametrize("brightness,simplex", [(False, "softmax"), ("exp", "softmax"), ("cone", "relu")])
def test_split_maps_gives_what_forward_reconstructs_from_in_either_layout(brightness, simplex):
    torch.manual_seed(1)
    model = UnmixingAutoencoder(out_bands=6, num_endmembers=3, encoder="pixel_mlp", brightness=brightness,
                                simplex=simplex)
    x = torch.rand(1, 3, 4, 5)
    with torch.no_grad():
        abundances, recon = model(x)
        maps = model.maps(x)[0]
    for layout, axis in ((maps, 0), (maps.permute(1, 2, 0).numpy(), 2)):
        split_abundances, split_brightness = model.split_maps(layout, channel_axis=axis)
        split_abundances = torch.as_tensor(split_abundances)
        if axis == 2:
            split_abundances = split_abundances.permute(2, 0, 1)
        torch.testing.assert_close(split_abundances, abundances[0])
        # the reconstruction rebuilt by hand from the split: E a, times the brightness where there is one
        rebuilt = torch.einsum("ck,khw->chw", model.endmembers(), split_abundances)
        if brightness:
            assert split_brightness is not None and split_brightness.shape[axis] == 1
            factor = torch.as_tensor(split_brightness)
            rebuilt = rebuilt * (factor.permute(2, 0, 1) if axis == 2 else factor)
        else:
            assert split_brightness is None
        torch.testing.assert_close(rebuilt, recon[0].detach())
    with pytest.raises(ValueError, match="channels"):
        model.split_maps(maps[:2], channel_axis=0)
