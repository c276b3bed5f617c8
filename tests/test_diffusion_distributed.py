"""Stage 2 under torchrun (Gloo, 2 CPU processes): the same global batch gives the same weights as one process.

Every process reads its half of each global batch from the shared data stream and keeps its half of
the noise drawn for the whole batch, and the summed loss is scaled by the number of processes, so the
averaged DDP gradient is the one-process gradient: with dropout off the weights, the EMA and even the
logged loss agree up to float rounding. Checkpoints carry no `module.` prefix and cross over both
ways, and `-p val` splits the samples over the processes without two of them writing the same file.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ubf.core.checkpoint import load_checkpoint
from ubf.data.abundance_dataset import AbundanceStream
from ubf.data.matio import read_mat, write_mat
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.diffusion_sample import sample_run, split_count
from ubf.pipeline.diffusion_train import train_diffusion
from reference_layouts import reference_training_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
SEED = 5
CONFIG = {
    "name": "ddp",
    "datasets": {"train": {"batch_size": 4, "num_workers": 0, "flip": "both"}, "val": {"data_len": 5}},
    "model": {
        "unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2],
                 "attn_res": [4], "res_blocks": 1, "dropout": 0.0},  # dropout masks are per process
        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2},
                          "val": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2}},
        "diffusion": {"image_size": 8, "channels": 3, "t_per_sample": True},
    },
    "train": {"n_iter": 4, "val_freq": 4, "save_checkpoint_freq": 2, "print_freq": 1, "preview_samples": 1,
              "optimizer": {"type": "adam", "lr": 1e-3},
              "ema_scheduler": {"step_start_ema": 2, "update_ema_every": 1, "ema_decay": 0.5}},
    "sample": {"sampler": "ddim", "steps": 3, "batch_size": 2},
}


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "abu"
    for i in range(7):  # batch 4: each epoch is a batch of 4 and one of 3, which two processes share 1 + 2
        write_mat(str(data / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(10, 12)).astype(np.float32)})
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(dict(CONFIG, datasets=dict(CONFIG["datasets"],
                                                            train=dict(CONFIG["datasets"]["train"], dataroot=str(data))))))
    return tmp_path, str(config)


def torchrun(*args):
    """`torchrun --standalone --nproc_per_node 2 Diffusion.py ARGS --device cpu` started in the background."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "Diffusion.py"), *args, "--device", "cpu", "--seed", str(SEED)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    return output


def checkpoint(run, step):
    (path,) = glob.glob(os.path.join(run, "checkpoint", f"I{step}_E*.pth"))
    return path


def assert_close(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_stream_shards_make_up_the_global_batches():
    whole = iter(AbundanceStream(7, seed=2, start=6, global_batch=6))
    shards = [iter(AbundanceStream(7, seed=2, start=6, global_batch=6, rank=r, world=3)) for r in range(3)]
    for _ in range(4):
        assert [next(whole) for _ in range(6)] == [next(s) for s in shards for _ in range(2)]
    assert split_count(5, 2) == [3, 2] and split_count(1, 3) == [1, 0, 0]


def test_torchrun_two_processes_match_one_and_checkpoints_cross_over(setup):
    tmp_path, config = setup
    cfg = load_diffusion_config(config)
    single = os.path.dirname(os.path.dirname(
        train_diffusion(cfg, str(tmp_path), CPU, SEED, run_dir=str(tmp_path / "single"), progress=False)))
    # three torchrun jobs at once: train from scratch, resume a one-process checkpoint, sample
    fresh = torchrun("-p", "train", "-c", config, "--run-dir", str(tmp_path / "ddp"))
    resumed = torchrun("-p", "train", "-c", config, "--run-dir", str(tmp_path / "ddp_resumed"),
                       "--resume", checkpoint(single, 2))
    sampled = torchrun("-p", "val", "-c", config, "--run-dir", str(tmp_path / "val"), "--num-samples", "5",
                       "--resume", checkpoint(single, 4))
    alone = sample_run(cfg, str(tmp_path), CPU, SEED, resume=checkpoint(single, 4), run_dir=str(tmp_path / "val1"),
                       num_samples=2, progress=False)
    finish(fresh)

    reference = load_checkpoint(checkpoint(single, 4), "diffusion")
    moved = max(float((v - load_checkpoint(checkpoint(single, 2))["model"][k]).abs().max())
                for k, v in reference["model"].items())
    assert moved > 1e-3  # two steps move the weights far more than the tolerance
    ddp = load_checkpoint(checkpoint(str(tmp_path / "ddp"), 4), "diffusion")
    assert not any(key.startswith("module.") for key in ddp["model"]) and ddp["world_size"] == 2
    seen = sum(size for _, _, size in reference_training_loop(7, 4, 4))  # the reference's DataLoader batches
    assert ddp["samples_seen"] == reference["samples_seen"] == seen == 14
    assert_close(ddp["model"], reference["model"])
    assert_close(ddp["ema"], reference["ema"])
    # rank 0 alone wrote the log, the loss records (the global loss, equal to one process's) and the preview
    log = (tmp_path / "ddp" / "logs" / "train.log").read_text()
    assert log.count("2 process(es) x batch 2") == 1, log
    losses = [json.loads(x)["loss"] for x in open(tmp_path / "ddp" / "logs" / "train_loss.jsonl")]
    expected = [json.loads(x)["loss"] for x in open(os.path.join(single, "logs", "train_loss.jsonl"))]
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert os.listdir(tmp_path / "ddp" / "results") == ["I4_preview.png"]

    # the two-process checkpoint resumes in one process, and a one-process checkpoint in two
    crossed = train_diffusion(cfg, str(tmp_path), CPU, SEED, resume=checkpoint(str(tmp_path / "ddp"), 2),
                              run_dir=str(tmp_path / "single_from_ddp"), progress=False)
    assert_close(load_checkpoint(crossed)["model"], reference["model"])
    finish(resumed)
    assert_close(load_checkpoint(checkpoint(str(tmp_path / "ddp_resumed"), 4))["model"], reference["model"])

    # sampling: 5 samples split 3 + 2, distinct numbers, rank 0's first ones equal a single process's
    finish(sampled)
    names = sorted(os.listdir(tmp_path / "val" / "mat_results"))
    assert names == ["4_1_sample_abu.mat", "4_2_sample_abu.mat", "4_3_sample_abu.mat", "4_4_sample_abu.mat",
                     "4_5_sample_abu.mat", "samples.jsonl"]
    records = sorted((json.loads(x) for x in open(tmp_path / "val" / "mat_results" / "samples.jsonl")),
                     key=lambda r: r["file"])
    assert [r["process"] for r in records] == [0, 0, 0, 1, 1]
    assert records[0]["seed"] == SEED and records[3]["seed"] != SEED
    assert os.path.isfile(tmp_path / "val" / "results" / "4_samples_1-5.png")
    assert (tmp_path / "val" / "logs" / "val.log").read_text().count("wrote 5 samples") == 1
    for n in (1, 2):
        np.testing.assert_allclose(read_mat(str(tmp_path / "val" / "mat_results" / f"4_{n}_sample_abu.mat"))["SR"],
                                   read_mat(os.path.join(alone, "mat_results", f"4_{n}_sample_abu.mat"))["SR"],
                                   atol=1e-5)
    other = read_mat(str(tmp_path / "val" / "mat_results" / "4_4_sample_abu.mat"))["SR"]
    assert not np.allclose(other, read_mat(str(tmp_path / "val" / "mat_results" / "4_1_sample_abu.mat"))["SR"])
