"""The per-pixel brightness of stage 1's cone head through every stage: infer stores it, stage 2 learns it
as channel K + 1 and writes it back, synthesis multiplies it (checked against values computed here)."""
import json
import os

import numpy as np
import pytest
import torch

from ubf.core.abundance_scaling import BRIGHTNESS_SCALE, brightness_to_unit
from ubf.core.checkpoint import save_checkpoint
from ubf.data.abundance_dataset import AbundanceDataset, training_range
from ubf.data.matio import read_mat, write_mat
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline.diffusion_sample import write_samples
from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis
from ubf.pipeline.unmixing_infer import infer_folders
from ubf.pipeline.unmixing_config import load_unmixing_config


def abundance_file(path, rng, size=12, k=3):
    abundance = rng.dirichlet(np.ones(k), (size, size)).astype(np.float32)
    bright = rng.uniform(0.2, 3.0, (size, size)).astype(np.float32)
    write_mat(path, {"Abu": abundance, "Bright": bright})
    return abundance, bright


def test_stage2_reads_brightness_as_one_more_channel(tmp_path):
    rng = np.random.default_rng(0)
    abundance, bright = abundance_file(str(tmp_path / "a.mat"), rng)
    data = AbundanceDataset([str(tmp_path / "a.mat")], 8, 4, brightness=True)
    item = data[(0, 0.0, 0.0, False, False)].numpy()
    assert item.shape == (4, 8, 8)
    np.testing.assert_allclose(item[:3], abundance[:8, :8].transpose(2, 0, 1) * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(item[3], np.clip(bright[:8, :8] / BRIGHTNESS_SCALE, 0, 1) * 2 - 1, atol=1e-6)
    low, high = training_range([str(tmp_path / "a.mat")], brightness=True)
    assert len(low) == 4 and low[3] <= bright.min() / BRIGHTNESS_SCALE + 1e-6
    # K + 1 channels are what the config must say
    with pytest.raises(Exception, match="channels is 3"):
        AbundanceDataset([str(tmp_path / "a.mat")], 8, 3, brightness=True)
    write_mat(str(tmp_path / "b.mat"), {"Abu": abundance})
    with pytest.raises(Exception, match="Bright"):
        AbundanceDataset([str(tmp_path / "b.mat")], 8, 4, brightness=True)


def test_samples_store_the_brightness_channel_apart(tmp_path):
    paths = {"mat_results": str(tmp_path / "mat"), "results": str(tmp_path / "png")}
    os.makedirs(paths["mat_results"])
    os.makedirs(paths["results"])
    sr = -torch.ones(1, 4, 6, 6)  # abundances 0 ...
    sr[0, 0] = 1.0  # ... but channel 0 = 1
    sr[0, 3] = 0.0  # unit 0.5: brightness BRIGHTNESS_SCALE / 2
    written = write_samples(sr, paths, 10, 1, project=True, record={}, brightness=True)
    saved = read_mat(written[0])
    assert saved["SR"].shape == (6, 6, 3) and saved["Abu"].shape == (6, 6, 3)
    np.testing.assert_allclose(saved["Bright"], BRIGHTNESS_SCALE / 2, atol=1e-6)
    np.testing.assert_allclose(saved["Abu"][..., 0], 1.0, atol=1e-6)


def test_synthesis_multiplies_the_brightness(tmp_path):
    rng = np.random.default_rng(1)
    abundance, bright = abundance_file(str(tmp_path / "abu" / "m.mat"), rng)
    ends = rng.uniform(0, 1, (9, 3)).astype(np.float32)
    net = UnmixingAutoencoder(out_bands=9, num_endmembers=3, encoder="pixel_mlp")
    with torch.no_grad():
        net.decoder.weight.copy_(torch.from_numpy(ends)[:, :, None, None])
    cfg = load_unmixing_config(None, {"model.encoder": "pixel_mlp"})
    ckpt = str(tmp_path / "u.pth")
    save_checkpoint({"stage": "unmixing", "model": net.state_dict(), "config": cfg, "out_bands": 9, "in_channels": 3,
                     "band_indices": [0, 1, 2], "wavelengths": None, "epoch": 0}, ckpt)
    run_synthesis(str(tmp_path / "abu"), ckpt, str(tmp_path / "out"), torch.device("cpu"),
                  SynthesisOptions(endmembers="raw", simplex=False))
    hsi = read_mat(str(tmp_path / "out" / "HSI" / "m.mat"))["HSI"]
    np.testing.assert_allclose(hsi, bright[..., None] * (abundance @ ends.T), rtol=1e-5, atol=1e-6)


def cone_model(seed: int, hidden: int) -> UnmixingAutoencoder:
    """A per-pixel cone-head model (K = 3, 6 bands) with a non-trivial head and positive endmembers."""
    torch.manual_seed(seed)
    net = UnmixingAutoencoder(out_bands=6, num_endmembers=3, encoder="pixel_mlp", mlp_hidden=hidden, simplex="relu",
                              linear_skip=True, brightness="cone")
    with torch.no_grad():
        net.skip.weight.normal_()
        net.skip.bias.fill_(0.5)
        net.decoder.weight.uniform_(0.1, 1.0)
    return net


def test_infer_writes_the_cone_heads_brightness(tmp_path):
    from PIL import Image
    net = cone_model(seed=0, hidden=128)
    cfg = load_unmixing_config(None, {"model.method": "near_data"})
    cfg["model"]["num_endmembers"] = 3
    ckpt = str(tmp_path / "u.pth")
    save_checkpoint({"stage": "unmixing", "model": net.state_dict(), "config": cfg, "out_bands": 6, "in_channels": 3,
                     "band_indices": [2, 1, 0], "wavelengths": None, "epoch": 0}, ckpt)
    image = (np.random.default_rng(2).uniform(0, 1, (10, 12, 3)) * 255).astype(np.uint8)
    os.makedirs(tmp_path / "rgb")
    Image.fromarray(image).save(tmp_path / "rgb" / "x.png")
    infer_folders(ckpt, [str(tmp_path / "rgb")], [], str(tmp_path / "abu"), torch.device("cpu"))
    saved = read_mat(str(tmp_path / "abu" / "x.mat"))
    x = torch.from_numpy(saved["GT"].transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        expected = (torch.relu(net.logits(x)) + 1e-6).sum(1)[0].numpy()
    np.testing.assert_allclose(saved["Bright"], expected, rtol=1e-5)
    np.testing.assert_allclose(saved["Y"], np.clip(saved["Bright"][..., None] * (saved["Abu"] @ net.endmembers()
                                                   .detach().numpy().T), 0, 1), rtol=1e-5, atol=1e-6)
    assert brightness_to_unit(np.array([BRIGHTNESS_SCALE * 2]))[0] == 1.0  # clipped, not wrapped


def test_reconstruction_score_of_a_brightness_model_multiplies_the_brightness():
    """Evaluate.py reconstruction's reconstruct(): brightness x (E a), computed here from the cone head's
    definition (c = relu(z), a = c / sum c, brightness = sum c); the abundances it returns are the K maps."""
    from ubf.evaluation.reconstruction import reconstruct
    net = cone_model(seed=1, hidden=16)
    image = np.random.default_rng(3).uniform(0, 1, (8, 9, 3)).astype(np.float32)
    recon, abundances = reconstruct(net.eval(), image, torch.device("cpu"), 0, 0)
    with torch.no_grad():
        c = torch.relu(net.logits(torch.from_numpy(image.transpose(2, 0, 1))[None]))[0] + 1e-6
    expected = np.einsum("ck,khw->hwc", net.endmembers().detach().numpy(), c.numpy())
    assert abundances.shape == (8, 9, 3)
    np.testing.assert_allclose(abundances.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(recon, expected, rtol=1e-4, atol=1e-6)
