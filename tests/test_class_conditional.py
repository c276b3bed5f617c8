"""Class-conditional generation: labels from folder names, label dropout, classifier-free guidance,
the class embedding hook of the UNet, checkpoints that keep their class names, and the CLI end to end."""
import copy
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ubf.cli import diffusion as Diffusion
from ubf.cli.unmixing import main as unmixing_main
from ubf.core.checkpoint import load_checkpoint
from ubf.core.errors import UserError
from ubf.data.matio import read_mat, write_mat
from ubf.models.class_embedding import ClassEmbedding
from ubf.models.guidance import GuidedDenoiser
from ubf.models.sr3_unet import SR3UNet, count_parameters, unet_from_config
from ubf.pipeline.class_labels import drop_labels, requested_labels, scene_class
from ubf.pipeline.diffusion_sample import load_weights_for_sampling
from test_diffusion_cli import TINY, write_json
from test_unmixing_infer import tiny_checkpoint


# label dropout ---------------------------------------------------------------------------------------

def test_label_dropout_hides_the_asked_share_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(20000) % 3
    dropped = drop_labels(labels, 0.2, 20000, generator)
    hidden = dropped == -1
    # binomial(20000, 0.2): standard deviation 0.0028, so +-0.012 is more than 4 sigma
    assert abs(float(hidden.float().mean()) - 0.2) < 0.012
    assert torch.equal(dropped[~hidden], labels[~hidden])
    assert not bool((drop_labels(labels, 0.0, 20000, generator) == -1).any())


def test_label_dropout_of_two_processes_is_the_dropout_of_one():
    labels = torch.arange(8)
    whole = drop_labels(labels, 0.5, 8, torch.Generator().manual_seed(3))
    halves = [drop_labels(labels[r * 4:(r + 1) * 4], 0.5, 8, torch.Generator().manual_seed(3), rank=r) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


# guidance --------------------------------------------------------------------------------------------

class ToyDenoiser(torch.nn.Module):
    """eps = x * (label + 2) for a class label, x * 1 without one (label -1): easy to compute by hand."""

    def forward(self, x, noise_level, class_labels=None):
        factor = (class_labels.float() + 2.0).clamp(min=1.0) + 0 * noise_level.reshape(-1)
        return x * factor.reshape(-1, 1, 1, 1)


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_predictions():
    x = torch.randn(3, 2, 4, 4)
    level = torch.full((3,), 0.5)
    labels = torch.tensor([0, 1, 2])
    by_hand_conditional = x * torch.tensor([2.0, 3.0, 4.0]).reshape(-1, 1, 1, 1)
    for scale, expected in ((0.0, x), (1.0, by_hand_conditional),
                            # eps_u + 3 (eps_c - eps_u) = x (1 + 3 (label + 1))
                            (3.0, x * torch.tensor([4.0, 7.0, 10.0]).reshape(-1, 1, 1, 1))):
        guided = GuidedDenoiser(ToyDenoiser(), scale)
        with guided.conditioned_on(labels):
            torch.testing.assert_close(guided(x, level), expected)
    with pytest.raises(RuntimeError, match="no class labels"):
        GuidedDenoiser(ToyDenoiser(), 2.0)(x, level)


# the UNet hook ---------------------------------------------------------------------------------------

def small_model_cfg(class_names=()):
    cfg = copy.deepcopy(TINY["model"])
    cfg["unet"].update({"with_noise_level_emb": True})
    cfg["diffusion"]["class_names"] = list(class_names)
    return cfg


def test_unconditional_unet_is_unchanged_and_conditional_adds_one_table():
    plain = unet_from_config(small_model_cfg())
    assert plain.class_embedding is None
    assert not any("class" in key for key in plain.state_dict())
    conditional = unet_from_config(small_model_cfg(["farmland", "forest"]))
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra == {"class_embedding.table.weight"}
    # (2 classes + the "no class" row) x inner_channel 8
    assert count_parameters(conditional) - count_parameters(plain) == 3 * 8


def test_class_vectors_shift_the_noise_level_embedding():
    torch.manual_seed(0)
    conditional = unet_from_config(small_model_cfg(["a", "b"])).eval()
    plain = unet_from_config(small_model_cfg()).eval()
    plain.load_state_dict({k: v for k, v in conditional.state_dict().items() if not k.startswith("class_")})
    x, level = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.9])
    # with a zero table every label predicts what the unconditional UNet predicts
    with torch.no_grad():
        conditional.class_embedding.table.weight.zero_()
    torch.testing.assert_close(conditional(x, level, torch.tensor([0, 1])), plain(x, level))
    with torch.no_grad():
        conditional.class_embedding.table.weight.normal_()
    a, b = conditional(x, level, torch.tensor([0, 0])), conditional(x, level, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    # None and -1 are both the "no class" row
    torch.testing.assert_close(conditional(x, level), conditional(x, level, torch.tensor([-1, -1])))
    # the hook adds the class vector to the noise-level embedding: the same as a shifted embedding by hand
    emb = ClassEmbedding(2, 8)
    assert emb(torch.tensor([-1, 1]), 2).shape == (2, 8)
    with pytest.raises(ValueError, match="out of range"):
        emb(torch.tensor([2]), 1)


def test_reference_parameter_count_untouched():
    assert count_parameters(SR3UNet(image_size=64)) == 93_872_069


# labels from folders and requests --------------------------------------------------------------------

def test_scene_class_is_the_parent_folder():
    assert scene_class(os.path.join("AID", "farmland", "farmland_1.jpg")) == "farmland"
    assert scene_class(os.path.join("root", "a", "b", "x.png")) == "b"


def test_requested_labels_even_mix_and_refusals():
    names = ["farmland", "forest", "port"]
    assert requested_labels(names, None, 4) is None
    assert requested_labels(names, "forest", 3) == [1, 1, 1]
    assert requested_labels(names, "all", 7) == [0, 1, 2, 0, 1, 2, 0]
    assert requested_labels(names, "port,farmland", 3) == [2, 0, 2]
    with pytest.raises(UserError, match="unknown class desert; known: all, farmland, forest, port"):
        requested_labels(names, "desert", 2)
    with pytest.raises(UserError, match="trained without classes"):
        requested_labels([], "forest", 2)


def test_infer_writes_the_class_of_each_folder(tmp_path):
    ckpt = tmp_path / "unmix.pth"
    tiny_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    for scene in ("farmland", "forest"):
        folder = tmp_path / "rgb" / scene
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{scene}_{i}.png")
    out = tmp_path / "abu"
    assert unmixing_main(["infer", "--ckpt", str(ckpt), "--rgb", str(tmp_path / "rgb"), "--out", str(out),
                          "--device", "cpu"]) == 0
    classes = {os.path.basename(m): str(read_mat(m)["class"][0]) for m in glob.glob(str(out / "*.mat"))}
    assert classes == {"farmland__farmland_0.mat": "farmland", "farmland__farmland_1.mat": "farmland",
                       "forest__forest_0.mat": "forest", "forest__forest_1.mat": "forest"}
    manifest = [json.loads(line) for line in open(out / "manifest.jsonl")]
    assert sorted((os.path.basename(e["input"]), e["class"]) for e in manifest) == [
        ("farmland_0.png", "farmland"), ("farmland_1.png", "farmland"),
        ("forest_0.png", "forest"), ("forest_1.png", "forest")]


# end to end ------------------------------------------------------------------------------------------

@pytest.fixture
def two_class_dir(tmp_path):
    """Class 'left' puts all abundance on endmember 0, class 'right' on endmember 1."""
    folder = tmp_path / "abu"
    for i in range(4):
        for name, k in (("left", 0), ("right", 1)):
            abu = np.full((8, 8, 3), 0.02, dtype=np.float32)
            abu[..., k] = 0.96
            write_mat(str(folder / f"{name}_{i}.mat"), {"Abu": abu, "class": name})
    return str(folder)


def class_config(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["diffusion"].update({"class_conditional": True, "class_dropout": 0.2, "loss_type": "l2_mean",
                                      "t_per_sample": True})
    cfg["model"]["unet"]["dropout"] = 0.0
    cfg["train"].update({"n_iter": 30, "val_freq": 1000, "save_checkpoint_freq": 1000, "print_freq": 10,
                         "optimizer": {"type": "adam", "lr": 3e-3},
                         "ema_scheduler": {"step_start_ema": 1000, "update_ema_every": 1, "ema_decay": 0.9}})
    cfg["datasets"]["train"]["batch_size"] = 8
    cfg["sample"].update({"steps": 10, "batch_size": 4})
    return write_json(tmp_path / "classes.json", cfg)


def test_two_classes_train_and_sample_end_to_end(tmp_path, two_class_dir, capsys):
    config, out = class_config(tmp_path), str(tmp_path / "runs")
    Diffusion.main(["-p", "train", "-c", config, "--data", two_class_dir, "--root", out, "--device", "cpu",
                    "--seed", "0"])
    (ckpt,) = glob.glob(os.path.join(out, "tiny_*", "checkpoint", "*.pth"))
    state = load_checkpoint(ckpt, "diffusion")
    assert state["config"]["model"]["diffusion"]["class_names"] == ["left", "right"]
    unet, model_cfg, _, _ = load_weights_for_sampling(ckpt, state["config"], torch.device("cpu"))
    assert unet.class_embedding is not None and unet.class_embedding.num_classes == 2

    Diffusion.main(["-p", "val", "-c", config, "--root", out, "--resume", ckpt, "--num-samples", "8", "--device",
                    "cpu", "--class", "all", "--guidance", "2"])
    mats = sorted(glob.glob(os.path.join(out, "tiny_*", "mat_results", "*.mat")),
                  key=lambda p: int(os.path.basename(p).split("_")[1]))
    samples = [read_mat(m) for m in mats]
    classes = [str(s["class"][0]) for s in samples]
    assert classes == ["left", "right"] * 4
    records = [json.loads(x) for x in open(os.path.join(os.path.dirname(mats[0]), "samples.jsonl"))]
    assert [r["class"] for r in records] == classes and records[0]["guidance"] == 2.0
    assert os.path.isfile(os.path.join(out, os.path.basename(os.path.dirname(os.path.dirname(ckpt))), "results",
                                       "30_samples_1-8.png"))

    with pytest.raises(SystemExit):
        Diffusion.main(["-p", "val", "-c", config, "--root", out, "--resume", ckpt, "--device", "cpu",
                        "--class", "middle"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--class middle: unknown class middle; known: all, left, right")


def test_unconditional_stays_the_default_and_refuses_classes(tmp_path, two_class_dir, capsys):
    config, out = write_json(tmp_path / "tiny.json", TINY), str(tmp_path / "runs")
    Diffusion.main(["-p", "train", "-c", config, "--data", two_class_dir, "--root", out, "--device", "cpu",
                    "--n-iter", "2"])
    (ckpt,) = glob.glob(os.path.join(out, "tiny_*", "checkpoint", "*.pth"))
    state = load_checkpoint(ckpt, "diffusion")
    assert state["config"]["model"]["diffusion"]["class_names"] == []
    assert not any(k.startswith("class_") for k in state["model"])
    for extra, message in ((["--class", "left"], "trained without classes"), (["--guidance", "3"], "needs --class")):
        with pytest.raises(SystemExit):
            Diffusion.main(["-p", "val", "-c", config, "--root", out, "--resume", ckpt, "--device", "cpu", *extra])
        assert message in capsys.readouterr().err


def test_training_refuses_files_without_a_class(tmp_path):
    folder = tmp_path / "abu"
    write_mat(str(folder / "x.mat"), {"Abu": np.full((8, 8, 3), 1 / 3, dtype=np.float32)})
    config = class_config(tmp_path)
    with pytest.raises(SystemExit):
        Diffusion.main(["-p", "train", "-c", config, "--data", str(folder), "--root", str(tmp_path / "r"),
                        "--device", "cpu"])


def test_class_conditional_resume_is_bit_exact(tmp_path, two_class_dir):
    """Label dropout draws from the checkpointed training generator, so a resumed run repeats the same drops."""
    from ubf.pipeline.diffusion_config import load_diffusion_config
    from ubf.pipeline.diffusion_train import train_diffusion

    def cfg(n_iter):
        return load_diffusion_config(class_config(tmp_path), {"datasets.train.dataroot": two_class_dir,
                                                              "train.n_iter": n_iter, "train.print_freq": 1})
    cpu = torch.device("cpu")
    straight = train_diffusion(cfg(4), str(tmp_path / "a"), cpu, seed=5, progress=False)
    first = train_diffusion(cfg(2), str(tmp_path / "b"), cpu, seed=5, progress=False)
    resumed = train_diffusion(cfg(4), str(tmp_path / "b"), cpu, seed=5, resume=first, progress=False)
    a, b = load_checkpoint(straight, "diffusion"), load_checkpoint(resumed, "diffusion")
    assert b["config"]["model"]["diffusion"]["class_names"] == ["left", "right"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert not torch.equal(a["model"]["class_embedding.table.weight"],
                           load_checkpoint(first, "diffusion")["model"]["class_embedding.table.weight"])
