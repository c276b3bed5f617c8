"""Stage-1 methods behind one interface, the brightness cone head, greedy scene-pixel endmembers and the
near-data hinge: checked against hand-built scenes and hand-computed values."""
import json
import math

import numpy as np
import pytest
import torch

from ubf.core.errors import UserError
from ubf.data.matio import write_mat
from ubf.models.geometric import nnls_abundances
from ubf.models.losses import endmember_angles_to_data, endmember_near_data
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.models.unmixing_init import greedy_cone_pixels
from ubf.pipeline.unmixing_config import load_unmixing_config
from ubf.pipeline.unmixing_methods import METHODS
from ubf.pipeline.unmixing_train import parameter_groups, train_unmixing


def cone_scene(rng, pixels=400, bands=12, k=3, brightness=(0.5, 1.5)):
    """Brightness-scaled mixtures of k random spectra, with each pure spectrum present (scaled) once."""
    ends = rng.uniform(0.1, 1.0, (bands, k))
    abundances = rng.dirichlet(np.ones(k), pixels)
    abundances[:k] = np.eye(k)
    brightness = rng.uniform(*brightness, (pixels, 1))
    return (abundances * brightness) @ ends.T, ends


def test_cone_head_reconstruction_is_a_non_negative_combination():
    torch.manual_seed(0)
    net = UnmixingAutoencoder(out_bands=7, num_endmembers=4, encoder="pixel_mlp", simplex="relu", linear_skip=True,
                              brightness="cone")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    x = torch.rand(2, 3, 5, 6)
    logits = net.logits(x)
    positive = torch.relu(logits) + 1e-6
    abundances, recon = net(x)
    # by hand: E relu(z), abundances relu(z) / sum, brightness sum
    expected = torch.einsum("ck,nkhw->nchw", net.endmembers(), positive)
    assert torch.allclose(recon, expected, atol=1e-5)
    assert torch.allclose(abundances.sum(1), torch.ones(2, 5, 6), atol=1e-6)
    maps = net.maps(x)
    assert maps.shape == (2, 5, 5, 6) and torch.allclose(maps[:, 4], positive.sum(1), atol=1e-6)
    with pytest.raises(ValueError, match="cone"):
        UnmixingAutoencoder(brightness="cone", simplex="softmax")


def test_greedy_cone_pixels_find_a_cone_that_holds_the_scene():
    rng = np.random.default_rng(3)
    pixels, _ = cone_scene(rng)
    chosen = greedy_cone_pixels(pixels, 3, seed=0, candidates=len(pixels), evaluation=len(pixels))
    ends = pixels[chosen].T
    residual = np.abs(nnls_abundances(pixels, ends) @ ends.T - pixels).max()
    assert residual < 1e-8  # the three (scaled) pure pixels: every pixel is a non-negative combination
    assert sorted(chosen.tolist()) == [0, 1, 2]
    # the same seed, the same pixels
    assert np.array_equal(chosen, greedy_cone_pixels(pixels, 3, seed=0, candidates=len(pixels),
                                                     evaluation=len(pixels)))


def test_near_data_hinge_by_hand():
    # one pixel along x; an endmember at 30 degrees from it in the x-y plane, one on it
    pixels = torch.tensor([[1.0, 0.0, 0.0]])
    weight = torch.tensor([[math.cos(math.radians(30)), 1.0], [math.sin(math.radians(30)), 0.0],
                           [0.0, 0.0]])[:, :, None, None]
    angles = endmember_angles_to_data(weight, pixels)
    assert angles.tolist() == pytest.approx([30.0, 0.0], abs=0.05)  # float32 acos is clamped below 1: a 0.03 deg floor
    assert float(endmember_near_data(weight, pixels, 8.0)) == pytest.approx((30.0 - 8.0) ** 2, rel=1e-4)
    assert float(endmember_near_data(weight, pixels, 45.0)) == 0.0


def test_methods_lay_their_recipe_under_the_config_and_flags(tmp_path):
    cfg = load_unmixing_config(None, {"model.method": "near_data"})
    assert cfg["model"]["method"] == "near_data"
    assert (cfg["model"]["decoder_init"], cfg["model"]["brightness"], cfg["loss"]["near_data_angle"]) == \
        ("greedy_pixels", "cone", 8.0)
    # a config file's own value still wins over the method's
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"method": "vca_fcls", "mlp_hidden": 16}}))
    cfg = load_unmixing_config(str(path))
    assert cfg["model"]["decoder_init"] == "vca" and cfg["train"]["freeze_endmembers"] and cfg["model"]["mlp_hidden"] == 16
    assert load_unmixing_config(None)["model"]["encoder"] == "sspn"  # network: the paper's, unchanged
    with pytest.raises(UserError, match="unknown stage-1 method 'vcaa'"):
        load_unmixing_config(None, {"model.method": "vcaa"})
    assert set(METHODS) >= {"network", "improved", "vca_fcls", "nfindr_fcls", "near_data"}


def test_parameter_groups_freeze_or_scale_the_endmembers():
    net = UnmixingAutoencoder(out_bands=6, num_endmembers=3, encoder="pixel_mlp")
    one = parameter_groups(net, {"lr": 1e-3, "freeze_endmembers": False, "endmember_lr_scale": 1.0})
    assert len(one) == 1  # the reference's single group (older checkpoints resume)
    scaled = parameter_groups(net, {"lr": 1e-3, "freeze_endmembers": False, "endmember_lr_scale": 0.1})
    assert [g["lr"] for g in scaled] == pytest.approx([1e-3, 1e-4])
    frozen = parameter_groups(net, {"lr": 1e-3, "freeze_endmembers": True, "endmember_lr_scale": 1.0})
    assert len(frozen) == 1 and not net.decoder.weight.requires_grad


@pytest.mark.parametrize("method, brightness", [("vca_fcls", (1.0, 1.0)), ("near_data", (0.5, 1.5))])
def test_geometric_and_near_data_methods_train(tmp_path, method, brightness):
    """A 16 x 16 scene of mixtures of 3 spectra (brightness-scaled for the cone head), whose first 3 bands
    are the input: fixed geometric endmembers stay real pixels; near-data ones stay within the hinge of one."""
    rng = np.random.default_rng(5)
    pixels, _ = cone_scene(rng, pixels=256, bands=10, brightness=brightness)
    cube = pixels.reshape(16, 16, 10).astype(np.float32)
    for role in ("train", "val"):
        write_mat(str(tmp_path / role / "scene.mat"), {"Y": cube})
    cfg = load_unmixing_config(None, {"model.method": method, "data.train": str(tmp_path / "train"),
                                      "data.val": str(tmp_path / "val"), "data.test": None, "data.bands": [0, 1, 2],
                                      "model.num_endmembers": 3, "train.epochs": 2, "data.samples_per_epoch": 5})
    train_unmixing(cfg, str(tmp_path / "run"), torch.device("cpu"))
    state = torch.load(tmp_path / "run" / "checkpoint" / "latest.pth", weights_only=True)
    ends = state["model"]["decoder.weight"][:, :, 0, 0].double()
    normalised = (cube - cube.min()) / (cube.max() - cube.min())
    angles = endmember_angles_to_data(ends[:, :, None, None], torch.from_numpy(normalised.reshape(-1, 10)).double())
    limit = 0.05 if method == "vca_fcls" else cfg["loss"]["near_data_angle"] + 1.0  # 0.03 deg: the acos clamp
    assert float(angles.max()) <= limit
    record = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert record["val_PSNR"] > 25  # the input bands carry the scene: far above an untrained network


def test_improved_profile_trains_the_near_data_method_and_faithful_the_paper():
    improved = load_unmixing_config(None, profile="improved")
    assert improved["model"]["method"] == "near_data" and improved["model"]["brightness"] == "cone"
    faithful = load_unmixing_config(None)
    assert (faithful["model"]["method"], faithful["model"]["encoder"], faithful["model"]["decoder_init"]) == \
        ("network", "sspn", "random")
    # a method named on the command line wins over the profile's
    assert load_unmixing_config(None, {"model.method": "improved"}, profile="improved")["model"]["decoder_init"] == \
        "linear_simplex"
