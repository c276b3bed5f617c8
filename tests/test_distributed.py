"""DDP on the CPU (Gloo, 2 processes under torchrun): the same global batch gives the same weights as one process.

The trainer splits `train.batch_size` over the processes and every process draws from the same seeded
permutation, so global batch s is the same in one process and in two; DDP averages the two halves'
gradients, which equals the gradient of the whole batch. Checkpoints carry no `module.` prefix, so a
two-process checkpoint resumes in one process and the other way round.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io as sio
import torch

from ubf.core import distributed
from ubf.core.checkpoint import load_checkpoint
from ubf.core.errors import UserError
from ubf.pipeline.unmixing_config import load_unmixing_config
from ubf.pipeline.unmixing_train import train_unmixing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
OVERRIDES = {"data.crop_size": 16, "data.samples_per_epoch": 8, "data.augment": True, "data.bands": [5, 3, 1],
             "model.widths": [4, 4], "model.n_blocks": 1,
             "model.decoder_init": "distant_pixels", "train.batch_size": 4, "train.lr": 5e-3, "train.seed": 7,
             "train.log_every": 1}


def mixed_crops(folder, count=2, size=24, bands=8, seed=0):
    """Crops that follow the linear mixing model: smooth softmax abundances times 3 random endmembers."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    ends = rng.random((3, bands))
    for index in range(count):
        logits = rng.normal(size=(size // 4, size // 4, 3)).repeat(4, 0).repeat(4, 1) * 3
        abundances = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
        sio.savemat(folder / f"crop_{index}.mat", {"Y": (abundances @ ends).astype(np.float32)})
    return str(folder)


def write_config(tmp_path, train_dir, epochs):
    """The overrides as a JSON config file, for the CLI."""
    cfg = {"data": {"val": None, "test": None}}
    for dotted, value in dict(OVERRIDES, **{"data.train": train_dir, "train.epochs": epochs}).items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    path = tmp_path / f"config_{epochs}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def one_process(train_dir, out_dir, epochs, resume=None):
    cfg = load_unmixing_config(None, dict(OVERRIDES, **{"data.train": train_dir, "train.epochs": epochs}))
    cfg["data"].update(val=None, test=None)  # a None override means "unset"; the config file says null
    train_unmixing(cfg, out_dir, CPU, resume=resume)
    return load_checkpoint(os.path.join(out_dir, "checkpoint", "latest.pth"), "unmixing")


def torchrun(config, out_dir, resume=None):
    """`torchrun --standalone --nproc_per_node 2 Unmixing.py train ...` started in the background."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "Unmixing.py"), "train", "-c", config, "--out", out_dir, "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.Popen(command + (["--resume", resume] if resume else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    return output


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.is_main_process()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.init_distributed(CPU) == CPU
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, CPU) is model and distributed.unwrap(model) is model
    value = torch.tensor([1.5, float("nan")])
    reduced = distributed.all_reduce_mean(value)
    assert reduced is not value and reduced[0] == 1.5 and torch.isnan(reduced[1])
    assert distributed.per_process_batch(16) == 16
    sampler = distributed.distributed_sampler(list(range(10)), seed=3)
    sampler.set_epoch(2)
    assert sorted(sampler) == list(range(10))
    assert distributed.strip_module_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert distributed.strip_module_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}
    distributed.barrier()
    distributed.cleanup()


def test_two_process_shards_make_up_the_one_process_batches():
    """Positions [s*B, (s+1)*B) of the one-process order are exactly the union of the shards' batch s."""
    whole = list(torch.utils.data.DistributedSampler(range(24), num_replicas=1, rank=0, seed=5))
    shards = [list(torch.utils.data.DistributedSampler(range(24), num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    for step in range(3):  # global batch 8 = 2 processes x 4
        union = shards[0][step * 4:(step + 1) * 4] + shards[1][step * 4:(step + 1) * 4]
        assert sorted(union) == sorted(whole[step * 8:(step + 1) * 8])


def test_uneven_global_batch_is_a_user_error(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="batch_size 16 is the global batch and must be divisible by the 3"):
        distributed.per_process_batch(16)


def test_torchrun_two_processes_match_one_and_checkpoints_cross_over(tmp_path):
    train_dir = mixed_crops(tmp_path / "train")
    # both torchrun jobs start at once: 1 epoch from scratch, and 2 epochs resumed from a one-process epoch 1
    single_1 = one_process(train_dir, str(tmp_path / "single_1"), epochs=1)
    ddp_fresh = torchrun(write_config(tmp_path, train_dir, 1), str(tmp_path / "ddp_1"))
    ddp_resumed = torchrun(write_config(tmp_path, train_dir, 2), str(tmp_path / "ddp_2"),
                           resume=str(tmp_path / "single_1" / "checkpoint" / "latest.pth"))
    single_2 = one_process(train_dir, str(tmp_path / "single_2"), epochs=2)
    finish(ddp_fresh)
    finish(ddp_resumed)

    ddp_1 = load_checkpoint(str(tmp_path / "ddp_1" / "checkpoint" / "latest.pth"), "unmixing")
    assert not any(key.startswith("module.") for key in ddp_1["model"])
    moved = {k: (v - single_1["model"][k]).abs().max() for k, v in single_2["model"].items()}
    assert max(moved.values()) > 1e-3  # training moves the weights far more than the tolerance below
    assert_same_weights(ddp_1["model"], single_1["model"])
    ddp_2 = load_checkpoint(str(tmp_path / "ddp_2" / "checkpoint" / "latest.pth"), "unmixing")
    assert ddp_2["epoch"] == 1
    assert_same_weights(ddp_2["model"], single_2["model"])
    # the two-process checkpoint resumes in one process
    resumed = one_process(train_dir, str(tmp_path / "single_from_ddp"), epochs=2,
                          resume=str(tmp_path / "ddp_1" / "checkpoint" / "latest.pth"))
    assert_same_weights(resumed["model"], single_2["model"])
    # rank 0 alone wrote: one metrics line per epoch, one start line in the log
    for run, epochs in (("ddp_1", 1), ("ddp_2", 1)):
        assert len((tmp_path / run / "metrics.jsonl").read_text().splitlines()) == epochs
        log = (tmp_path / run / "train.log").read_text()
        assert log.count("2 process(es) x batch 2") == 1, log
