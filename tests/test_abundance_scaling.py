"""Per-channel abundance scaling for the DDPM (model.diffusion.abundance_scaling = "channel_range")."""
import glob
import json
import os

import numpy as np
import pytest
import torch

from ubf.cli import diffusion as Diffusion
from ubf.core.abundance_scaling import channel_range, from_model_space, to_model_space
from ubf.data.abundance_dataset import AbundanceDataset, training_range
from ubf.data.matio import read_mat, write_mat
from tests.test_diffusion_cli import TINY, write_json


def narrow_maps(folder, n=3, seed=0):
    """Abundances confined to narrow bands: channel k in [0.1 + 0.2 k, 0.15 + 0.2 k] (not on the simplex:
    the scaling does not care, and the bands make the expected ranges exact)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        maps = np.stack([rng.uniform(0.1 + 0.2 * k, 0.15 + 0.2 * k, (10, 12)) for k in range(3)], -1)
        write_mat(os.path.join(folder, f"a{i}.mat"), {"Abu": maps.astype(np.float32)})


def test_range_is_each_channels_span_widened_by_the_margin():
    a = np.zeros((4, 4, 2))
    a[..., 0] = np.linspace(0.2, 0.4, 16).reshape(4, 4)
    a[..., 1] = 0.5  # a constant channel keeps a minimum span
    (low, high) = channel_range([a], margin=0.05)
    assert low[0] == pytest.approx(0.19) and high[0] == pytest.approx(0.41)
    assert low[1] == pytest.approx(0.5 - 5e-4) and high[1] == pytest.approx(0.5 + 5e-4)


def test_model_space_round_trip_and_stretch():
    value_range = [[0.19, 0.0], [0.41, 1.0]]
    signed = np.array([[2 * 0.2 - 1, -1.0], [2 * 0.4 - 1, 1.0]], dtype=np.float64)  # (pixels, K): 2a - 1
    x = to_model_space(signed, value_range, axis=-1)
    # 0.2 lies 0.01 above the low end of a 0.22 span: -1 + 2 * 0.01 / 0.22; a full-range channel is unchanged
    np.testing.assert_allclose(x[:, 0], [-1 + 2 * 0.01 / 0.22, 1 - 2 * 0.01 / 0.22])
    np.testing.assert_allclose(x[:, 1], signed[:, 1])
    np.testing.assert_allclose(from_model_space(x, value_range, axis=-1), signed, atol=1e-12)
    batch = torch.tensor(x.T[None, :, :, None])  # (1, K, 2, 1) as the sampler returns them
    np.testing.assert_allclose(from_model_space(batch, value_range, axis=1)[0, :, :, 0].numpy(), signed.T, atol=1e-12)
    assert to_model_space(signed, None) is signed


def test_dataset_stretches_narrow_maps_over_the_model_space(tmp_path):
    narrow_maps(str(tmp_path))
    files = sorted(glob.glob(str(tmp_path / "*.mat")))
    value_range = training_range(files)
    plain = AbundanceDataset(files, 8, 3)[0].numpy()
    scaled = AbundanceDataset(files, 8, 3, value_range)[0].numpy()
    for k in range(3):
        assert plain[k].max() - plain[k].min() <= 0.1 + 1e-6  # 2 x 0.05: a tenth of [-1, 1]
        assert scaled[k].min() >= -1 and scaled[k].max() <= 1
        assert scaled[k].max() - scaled[k].min() > 1.2  # most of [-1, 1]


def test_trained_range_travels_with_the_checkpoint_and_bounds_the_samples(tmp_path):
    """A DDPM trained with channel_range saves the training range; its samples, mapped back, can
    never leave it (x_0 is clipped to [-1, 1] in the network's space), wherever the untrained
    network puts them. Without the scaling they spread over [-1, 1]."""
    data = str(tmp_path / "abu")
    narrow_maps(data)
    low = [0.1 + 0.2 * k for k in range(3)]
    for scaling in ("channel_range", "none"):
        config = write_json(tmp_path / f"{scaling}.json",
                            {**TINY, "model": {**TINY["model"], "diffusion": {**TINY["model"]["diffusion"],
                                                                             "abundance_scaling": scaling}}})
        out = str(tmp_path / scaling)
        Diffusion.main(["-p", "train", "-c", config, "--data", data, "--root", out, "--n-iter", "2", "--device", "cpu"])
        (run,) = glob.glob(os.path.join(out, "tiny_*"))
        saved = json.load(open(os.path.join(run, "config.json")))["model"]["diffusion"]
        Diffusion.main(["-p", "val", "-c", config, "--root", out, "--num-samples", "4", "--device", "cpu",
                        "--sampler", "ancestral"])
        sr = np.stack([read_mat(p)["SR"] for p in sorted(glob.glob(os.path.join(run, "mat_results", "*.mat")))])
        abundance = (sr + 1) / 2
        if scaling == "channel_range":
            (lo, hi) = saved["abundance_range"]
            np.testing.assert_allclose(lo, [v - 0.05 * 0.05 for v in low], atol=2e-3)
            for k in range(3):
                assert lo[k] - 1e-5 <= abundance[..., k].min() and abundance[..., k].max() <= hi[k] + 1e-5
        else:
            assert "abundance_range" not in saved
            assert abundance.min() < 0.05 and abundance.max() > 0.95  # noise-like samples fill [0, 1]
