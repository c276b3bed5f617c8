"""Speed options of the diffusion training (issue 16): the same numbers with and without them."""
import json

import numpy as np
import pytest
import torch

from ubf.core.checkpoint import load_checkpoint
from ubf.data.matio import write_mat
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.diffusion_train import autocast_usable, cpu_supports_bf16, train_diffusion

TINY = {
    "name": "tiny",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0}},
    "model": {
        "unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                 "channel_multiplier": [1, 2], "attn_res": [4], "res_blocks": 1, "dropout": 0.0},
        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2},
                          "val": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2}},
        "diffusion": {"image_size": 8, "channels": 3},
    },
    "train": {"n_iter": 3, "val_freq": 100, "save_checkpoint_freq": 100, "print_freq": 1, "preview_samples": 0},
    "sample": {"sampler": "ddim", "steps": 4, "batch_size": 2},
}


@pytest.fixture
def abundance_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mat(str(tmp_path / "abu" / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)})
    return str(tmp_path / "abu")


def train(tmp_path, abundance_dir, name, **overrides):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    cfg = load_diffusion_config(str(path), {"datasets.train.dataroot": abundance_dir, **overrides})
    return load_checkpoint(train_diffusion(cfg, str(tmp_path / name), torch.device("cpu"), seed=5, progress=False))


def test_channels_last_and_matmul_attention_train_the_same_weights(tmp_path, abundance_dir):
    plain = train(tmp_path, abundance_dir, "plain")
    for name, overrides in (("cl", {"train.channels_last": True}), ("mm", {"model.unet.fused_attention": False})):
        other = train(tmp_path, abundance_dir, name, **overrides)
        assert other["model"].keys() == plain["model"].keys()
        for key, value in plain["model"].items():
            assert other["model"][key].shape == value.shape
            torch.testing.assert_close(other["model"][key], value, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")
    # the weights moved: equal weights above are not equal by default
    moved = train(tmp_path, abundance_dir, "lr", **{"train.optimizer.lr": 1e-2})
    assert not torch.allclose(moved["model"]["downs.0.weight"], plain["model"]["downs.0.weight"], atol=1e-4)


def test_old_checkpoints_without_the_attention_key_resume(tmp_path, abundance_dir):
    first = train(tmp_path, abundance_dir, "a")
    del first["config"]["model"]["unet"]["fused_attention"]
    from ubf.pipeline.diffusion_train import check_resume_compatible
    path = tmp_path / "tiny.json"
    cfg = load_diffusion_config(str(path), {"datasets.train.dataroot": abundance_dir})
    check_resume_compatible(first, cfg, "old.pth")  # no error


def test_bf16_autocast_only_where_it_has_kernels():
    cpu = torch.device("cpu")
    assert not autocast_usable(None, cpu)
    assert not autocast_usable(torch.float16, cpu)  # fp16 autocast is a CUDA option here
    assert autocast_usable(torch.bfloat16, cpu) == cpu_supports_bf16()
    assert autocast_usable(torch.float16, torch.device("cuda"))


class CountingDiffusion:
    """Stands in for GaussianDiffusion: records batch sizes, runs out of memory above `limit`."""

    def __init__(self, limit: int):
        self.limit, self.batches = limit, []

    def sample(self, n, device, **_):
        if n > self.limit:
            raise torch.OutOfMemoryError("fake")
        self.batches.append(n)
        return torch.zeros(n, 3, 4, 4)


def test_batch_size_zero_fills_the_device_and_halves_on_out_of_memory():
    from ubf.pipeline.diffusion_sample import AUTO_BATCH, draw_samples
    cpu = torch.device("cpu")
    run = lambda diffusion, count, batch: [b.shape[0] for b in draw_samples(
        diffusion, count, batch, cpu, "ddim", 2, 0.0, torch.Generator(), progress=False)]
    assert run(CountingDiffusion(10 ** 6), 5, 0) == [5]
    cap = AUTO_BATCH["cpu"]
    assert run(CountingDiffusion(10 ** 6), 2 * cap + 3, 0) == [cap, cap, 3]
    assert run(CountingDiffusion(10 ** 6), 5, 2) == [2, 2, 1]  # an explicit batch is kept
    assert run(CountingDiffusion(3), 7, 0) == [3, 3, 1]  # 7 -> 3 after two halvings
    with pytest.raises(torch.OutOfMemoryError):
        run(CountingDiffusion(0), 2, 0)
