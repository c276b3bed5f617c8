"""Config, abundance dataset, resume exactness and the Diffusion.py CLI on tiny fabricated data."""
import copy
import glob
import json
import os

import numpy as np
import pytest
import torch

from ubf.cli import diffusion as Diffusion
from ubf.core.checkpoint import load_checkpoint
from ubf.core.errors import UserError
from ubf.data.abundance_dataset import AbundanceDataset, AbundanceStream, list_abundance_files
from ubf.data.matio import read_mat, write_mat
from ubf.models.sr3_unet import count_parameters, unet_from_config
from ubf.pipeline.diffusion_config import load_diffusion_config
from ubf.pipeline.diffusion_train import train_diffusion
from reference_layouts import reference_training_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the reference's RS_256_abu_DDPM.json layout, comments and unused keys included
REFERENCE_CONFIG = """{
    "name": "RS-256",
    "phase": "train", // train or val
    "gpu_ids": [1, 2],
    "path": { //set the path
        "log": "logs", "tb_logger": "tb_logger", "results": "results", "mat_results": "mat_results",
        "checkpoint": "checkpoint",
        "resume_state": null // for validation
    },
    "datasets": {"train": {"data_len": -1}, "val": {"data_len": 50}},
    "model": {
        "which_model_G": "sr3", "finetune_norm": false,
        "unet": {"in_channel": 5, "out_channel": 5, "inner_channel": 64, "channel_multiplier": [1, 2, 4, 8, 8],
                 "attn_res": [16], "res_blocks": 2, "dropout": 0.2},
        "beta_schedule": {
            "train": {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 1e-2},
            "val": {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 1e-2}
        },
        "diffusion": {"image_size": 256, "channels": 5, "conditional": false}
    },
    "train": {
        "n_iter": 30000000, "val_freq": 1e4, "save_checkpoint_freq": 1e4, "print_freq": 200,
        "optimizer": {"type": "adam", "lr": 1e-4},
        "ema_scheduler": {"step_start_ema": 5000, "update_ema_every": 1, "ema_decay": 0.9999}
    },
    "wandb": {"project": "MSF-Diff"}
}"""

TINY = {
    "name": "tiny",
    "datasets": {"train": {"batch_size": 2, "num_workers": 0, "flip": "both"}, "val": {"data_len": 3}},
    "model": {
        "unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                 "channel_multiplier": [1, 2], "attn_res": [4], "res_blocks": 1, "dropout": 0.1},
        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2},
                          "val": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-3, "linear_end": 0.2}},
        "diffusion": {"image_size": 8, "channels": 3},
    },
    "train": {"n_iter": 5, "val_freq": 4, "save_checkpoint_freq": 100, "print_freq": 2, "preview_samples": 2,
              "ema_scheduler": {"step_start_ema": 2, "update_ema_every": 1, "ema_decay": 0.9}},
    "sample": {"sampler": "ddim", "steps": 4, "batch_size": 2},
}



def write_json(path, data) -> str:
    with open(path, "w") as f:
        f.write("// tiny test config\n" + json.dumps(data, indent=1))
    return str(path)


@pytest.fixture
def abundance_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "abu"
    for i in range(3):
        write_mat(str(folder / f"a{i}.mat"), {"Abu": rng.dirichlet(np.ones(3), size=(10, 12)).astype(np.float32)})
    return str(folder)


# config --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Chikusei_256_DDPM", "ARAD_256_DDPM", "Harvard_256_DDPM", "HSRS-SC_256_DDPM",
                                  "demo_DDPM", "cpu_DDPM"])
def test_shipped_configs_load(name):
    cfg = load_diffusion_config(os.path.join(ROOT, "config", f"{name}.json"))
    assert cfg["model"]["diffusion"]["channels"] == cfg["model"]["unet"]["in_channel"] == 5
    if name not in ("demo_DDPM", "cpu_DDPM"):
        with torch.device("meta"):
            assert count_parameters(unet_from_config(cfg["model"])) == 97_808_069
        assert cfg["model"]["beta_schedule"]["train"]["n_timestep"] == 2000
    else:
        # the demo leaves loss and prediction to the profile; the sampler is the reference's ancestral one
        assert cfg["sample"]["sampler"] == "ancestral" and cfg["model"]["diffusion"]["image_size"] == 32
        loss, prediction = cfg["model"]["diffusion"]["loss_type"], cfg["model"]["diffusion"]["prediction"]
        if name == "cpu_DDPM":
            assert (loss, prediction) == ("l2_mean", "v")
        else:
            assert loss.startswith("l1") and prediction == "eps"


def test_reference_config_loads_unchanged(tmp_path):
    path = tmp_path / "RS_256_abu_DDPM.json"
    path.write_text(REFERENCE_CONFIG)
    cfg = load_diffusion_config(str(path))
    assert cfg["train"]["val_freq"] == 10000 and isinstance(cfg["train"]["val_freq"], int)
    assert cfg["datasets"]["train"]["dataroot"] == "dataset/inferred_abu/"
    assert cfg["datasets"]["train"]["batch_size"] == 8 and cfg["model"]["unet"]["norm_groups"] == 32
    assert cfg["wandb"] == {"project": "MSF-Diff"}


def test_config_typo_names_the_key(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["model"]["unet"]["inner_chanel"] = 8
    with pytest.raises(UserError, match=r"unknown key 'model.unet.inner_chanel'.*inner_channel"):
        load_diffusion_config(write_json(tmp_path / "bad.json", bad))
    bad = copy.deepcopy(TINY)
    bad["sample"]["sampler"] = "dpm"
    with pytest.raises(UserError, match="sample.sampler"):
        load_diffusion_config(write_json(tmp_path / "bad2.json", bad))


# data ----------------------------------------------------------------------------------------------

def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(UserError, match="not found.*Unmixing.py infer"):
        list_abundance_files(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .mat files.*Unmixing.py infer"):
        list_abundance_files(str(tmp_path / "empty"))


def test_dataset_values_crops_and_k_check(tmp_path):
    abu = np.arange(10 * 12 * 3, dtype=np.float32).reshape(10, 12, 3) / 360.0
    write_mat(str(tmp_path / "a.mat"), {"Abu": abu})
    write_mat(str(tmp_path / "s.mat"), {"SR": abu * 2 - 1})
    files = [str(tmp_path / "a.mat"), str(tmp_path / "s.mat")]
    ds = AbundanceDataset(files, 8, 3)
    item = ds[(0, 0.0, 0.99, False, False)]  # last column offset: 12 - 8 = 4
    np.testing.assert_allclose(item.numpy(), (abu[:8, 4:12] * 2 - 1).transpose(2, 0, 1), atol=1e-6)
    flipped = ds[(0, 0.0, 0.99, True, True)]
    torch.testing.assert_close(flipped, item.flip(1, 2))
    torch.testing.assert_close(ds[(1, 0.0, 0.99, False, False)], item)  # SR is already in [-1, 1]
    with pytest.raises(UserError, match="K = 3 .*channels is 5"):
        AbundanceDataset(files, 8, 5)
    with pytest.raises(UserError, match="smaller than model.diffusion.image_size"):
        AbundanceDataset(files, 16, 3)


def test_stream_restarts_exactly():
    full = AbundanceStream(5, seed=3, flip="both")
    it = iter(full)
    items = [next(it) for _ in range(17)]
    later = iter(AbundanceStream(5, seed=3, start=11, flip="both"))
    assert [next(later) for _ in range(6)] == items[11:]
    assert sorted(i[0] for i in items[:5]) == list(range(5))  # each epoch is a permutation
    none = iter(AbundanceStream(5, seed=3, flip="none"))
    assert not any(i[3] or i[4] for i in (next(none) for _ in range(20)))


# training ------------------------------------------------------------------------------------------

def tiny_cfg(tmp_path, abundance_dir, **train):
    path = write_json(tmp_path / "tiny.json", TINY)
    return load_diffusion_config(path, {"datasets.train.dataroot": abundance_dir,
                                        **{f"train.{k}": v for k, v in train.items()}})


def test_resume_is_bit_exact(tmp_path, abundance_dir):
    straight = train_diffusion(tiny_cfg(tmp_path, abundance_dir, n_iter=5), str(tmp_path / "a"), torch.device("cpu"),
                               seed=11, progress=False)
    first = train_diffusion(tiny_cfg(tmp_path, abundance_dir, n_iter=3), str(tmp_path / "b"), torch.device("cpu"),
                            seed=11, progress=False)
    resumed = train_diffusion(tiny_cfg(tmp_path, abundance_dir, n_iter=5), str(tmp_path / "b"), torch.device("cpu"),
                              seed=11, resume=first, progress=False)
    assert os.path.dirname(resumed) == os.path.dirname(first)  # continues in the same run folder
    a, b = load_checkpoint(straight, "diffusion"), load_checkpoint(resumed, "diffusion")
    # 3 files, batch 2: the reference's DataLoader gives batches of 2 and 1 per epoch
    seen = sum(size for _, _, size in reference_training_loop(3, 2, 5))
    assert a["step"] == b["step"] == 5 and a["samples_seen"] == b["samples_seen"] == seen == 8
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    moments = lambda s: [v for st in s["optimizer"]["state"].values() for v in st.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))
    # a different seed gives different weights: the comparison above can fail
    other = train_diffusion(tiny_cfg(tmp_path, abundance_dir, n_iter=5), str(tmp_path / "c"), torch.device("cpu"),
                            seed=12, progress=False)
    assert not torch.equal(load_checkpoint(other)["model"]["downs.0.weight"], a["model"]["downs.0.weight"])


def test_resume_with_another_model_is_refused(tmp_path, abundance_dir):
    first = train_diffusion(tiny_cfg(tmp_path, abundance_dir, n_iter=1), str(tmp_path / "a"), torch.device("cpu"),
                            seed=0, progress=False)
    cfg = tiny_cfg(tmp_path, abundance_dir, n_iter=2)
    cfg["model"]["unet"]["inner_channel"] = 16
    with pytest.raises(UserError, match="inner_channel"):
        train_diffusion(cfg, str(tmp_path / "a"), torch.device("cpu"), seed=0, resume=first, progress=False)


# CLI -----------------------------------------------------------------------------------------------

def test_cli_train_then_val(tmp_path, abundance_dir, capsys):
    config = write_json(tmp_path / "tiny.json", TINY)
    out = str(tmp_path / "runs")
    Diffusion.main(["-p", "train", "-c", config, "--data", abundance_dir, "--root", out, "--n-iter", "4",
                    "--device", "cpu", "--seed", "1"])
    (run,) = glob.glob(os.path.join(out, "tiny_*"))
    assert sorted(os.listdir(os.path.join(run, "checkpoint"))) == ["I4_E2.pth"]
    assert os.path.isfile(os.path.join(run, "results", "I4_preview.png"))
    lines = [json.loads(x) for x in open(os.path.join(run, "logs", "train_loss.jsonl"))]
    assert [x["step"] for x in lines] == [2, 4] and all(np.isfinite(x["loss"]) for x in lines)
    assert json.load(open(os.path.join(run, "config.json")))["seed"] == 1

    Diffusion.main(["-p", "val", "-c", config, "--root", out, "--num-samples", "3", "--device", "cpu",
                    "--profile", "improved"])
    mats = sorted(glob.glob(os.path.join(run, "mat_results", "*.mat")))
    assert [os.path.basename(m) for m in mats] == [f"4_{i}_sample_abu.mat" for i in (1, 2, 3)]
    sample = read_mat(mats[0])
    assert sample["SR"].shape == sample["Abu"].shape == (8, 8, 3)
    assert sample["SR"].min() >= -1 and sample["SR"].max() <= 1
    assert sample["Abu"].min() >= 0
    np.testing.assert_allclose(sample["Abu"].sum(-1), 1.0, atol=1e-5)
    assert os.path.isfile(os.path.join(run, "results", "4_samples_1-3.png"))

    # a second run numbers after the existing files; by default (faithful) Abu = (SR + 1) / 2 as sampled
    Diffusion.main(["-p", "val", "-c", config, "--root", out, "--num-samples", "2", "--device", "cpu",
                    "--sampler", "ancestral", "--batch-size", "1"])
    raw = read_mat(os.path.join(run, "mat_results", "4_5_sample_abu.mat"))
    np.testing.assert_allclose(raw["Abu"], (raw["SR"] + 1) / 2, atol=1e-6)
    assert not np.allclose(raw["Abu"].sum(-1), 1.0, atol=1e-3)
    records = [json.loads(x) for x in open(os.path.join(run, "mat_results", "samples.jsonl"))]
    assert [r["sampler"] for r in records] == ["ddim"] * 3 + ["ancestral"] * 2
    assert records[0]["weights"] == "EMA weights" and records[0]["projected"] is True
    assert records[-1]["weights"] == "raw weights" and records[-1]["projected"] is False
    assert len(glob.glob(os.path.join(run, "mat_results", "*.mat"))) == 5


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    bad = copy.deepcopy(TINY)
    bad["train"]["n_itr"] = 3
    with pytest.raises(SystemExit) as exit_info:
        Diffusion.main(["-p", "train", "-c", write_json(tmp_path / "bad.json", bad), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "unknown key 'train.n_itr'" in capsys.readouterr().err
    config = write_json(tmp_path / "tiny.json", TINY)
    with pytest.raises(SystemExit):
        Diffusion.main(["-p", "train", "-c", config, "--data", str(tmp_path / "none"), "--device", "cpu",
                        "--root", str(tmp_path / "runs")])
    assert "Unmixing.py infer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Diffusion.main(["-p", "val", "-c", config, "--root", str(tmp_path / "empty"), "--device", "cpu"])
    assert "no checkpoint of 'tiny'" in capsys.readouterr().err


def test_val_reads_reference_gen_weights(tmp_path):
    """The reference saves its GaussianDiffusion state dict (schedule buffers + `denoise_fn.` UNet) as
    I<step>_E<epoch>_gen.pth; the file is built here from the reference's key names and shapes."""
    from reference_layouts import ddpm_layout, random_state, reference_buffers
    cfg = copy.deepcopy(TINY)
    cfg["model"]["unet"]["dropout"] = 0.0
    config = write_json(tmp_path / "tiny.json", cfg)
    layout = ddpm_layout(in_channel=3, out_channel=3, inner=8, groups=4, mults=(1, 2), attn_res=(4,), res_blocks=1,
                         image_size=8, timesteps=30)
    unet_keys = {k: v for k, v in layout.items() if k.startswith("denoise_fn.")}
    state = {**reference_buffers(1e-3, 0.2, 30), **random_state(unet_keys, seed=0, scale=0.1)}
    assert set(state) == set(layout)
    torch.save(state, tmp_path / "I10_E1_gen.pth")
    out = str(tmp_path / "runs")
    # the reference's resume_state is the prefix without _gen.pth
    Diffusion.main(["-p", "val", "-c", config, "--resume", str(tmp_path / "I10_E1"), "--root", out, "--num-samples", "1",
                    "--device", "cpu", "--sampler", "ddim", "--steps", "3", "--raw"])
    (mat,) = glob.glob(os.path.join(out, "tiny_*", "mat_results", "10_1_sample_abu.mat"))
    record = json.loads(open(os.path.join(os.path.dirname(mat), "samples.jsonl")).readline())
    assert record["weights"] == "reference weights" and record["step"] == 10
    # the same sample from our UNet holding those tensors under the reference's names minus `denoise_fn.`
    from ubf.models.diffusion import GaussianDiffusion, NoiseSchedule
    model_cfg = load_diffusion_config(config)["model"]
    unet = unet_from_config(model_cfg)
    unet.load_state_dict({k[len("denoise_fn."):]: v for k, v in state.items()
                          if k.startswith("denoise_fn.")})
    diffusion = GaussianDiffusion(unet.eval(), 8, 3, NoiseSchedule.from_config(model_cfg["beta_schedule"]["val"]))
    seed = load_diffusion_config(config)["seed"]
    expected = diffusion.sample(1, torch.device("cpu"), sampler="ddim", steps=3, eta=0.0,
                                generator=torch.Generator().manual_seed(seed), progress=False).clamp(-1, 1)
    assert np.allclose(read_mat(mat)["SR"], expected[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_training_never_overwrites_checkpoints(tmp_path, abundance_dir):
    cfg = tiny_cfg(tmp_path, abundance_dir, n_iter=2)
    first = train_diffusion(cfg, str(tmp_path / "a"), torch.device("cpu"), seed=0, progress=False)
    run = os.path.dirname(os.path.dirname(first))
    with pytest.raises(UserError, match="would overwrite"):
        train_diffusion(cfg, str(tmp_path / "a"), torch.device("cpu"), seed=0, run_dir=run, progress=False)
