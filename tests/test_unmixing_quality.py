"""Stage-1 quality parts: data-driven initialisations, the linear-simplex head, the one-cycle schedule,
configs that fit any data. Real numbers from ../shared/data (skipped when absent)."""
import logging
import os

import numpy as np
import pytest
import torch

from conftest import shared_path
from ubf.data.hsi_dataset import HSICropDataset, prepare_pair
from ubf.data.matio import read_hsi, write_mat
from ubf.models.unmixing import build_unmixing_model, relu_simplex
from ubf.models.unmixing_init import enclosing_tetrahedron, linear_simplex_init, orthogonal_vertices
from ubf.pipeline.unmixing_config import load_unmixing_config
from ubf.pipeline.unmixing_train import one_cycle_lr, train_unmixing

SAMSON_RGB = [86, 53, 22]  # nearest bands to 672 / 569 / 471 nm of 156 bands evenly over 401-889 nm


def samson_halves():
    """((x, y) of the left half, (x, y) of the right half), each half min-max normalised on its own."""
    cube, _ = read_hsi(shared_path("hsi", "samson.mat"))
    half = cube.shape[1] // 2
    return prepare_pair(cube[:, :half], SAMSON_RGB), prepare_pair(cube[:, half:], SAMSON_RGB)


def lstsq_prediction(x_train, y_train, x_test):
    """The linear bar, computed here with numpy alone: [x, 1] -> y by least squares."""
    design = lambda x: np.concatenate([x.reshape(-1, 3), np.ones((x.size // 3, 1))], 1)
    coef, *_ = np.linalg.lstsq(design(x_train), y_train.reshape(-1, y_train.shape[-1]), rcond=None)
    return (design(x_test) @ coef).reshape(x_test.shape[:-1] + (y_train.shape[-1],))


def mse_psnr(truth, pred):
    return 10 * np.log10(1.0 / np.mean((truth.astype(np.float64) - pred) ** 2))


def improved_model(y_bands, count=5, seed=0):
    torch.manual_seed(seed)
    cfg = load_unmixing_config(None)["model"]
    cfg.update(encoder="pixel_mlp", simplex="relu", linear_skip=True, num_endmembers=count)
    return build_unmixing_model(cfg, 3, y_bands)


def set_linear_simplex(model, x, y, count):
    ends, mixing = linear_simplex_init(x.reshape(-1, 3), y.reshape(-1, y.shape[-1]), count)
    with torch.no_grad():
        model.skip.weight[:count, :, 0, 0] = torch.from_numpy(mixing[:, :3]).float()
        model.skip.bias[:count] = torch.from_numpy(mixing[:, 3]).float()
        model.decoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(ends)).float()[:, :, None, None])


def image(array):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float()


def test_relu_simplex_is_on_the_simplex_with_exact_zeros():
    logits = torch.tensor([[3.0, -1.0, 1.0], [-2.0, -3.0, -1.0]]).T.reshape(1, 3, 1, 2)
    a = relu_simplex(logits)
    assert torch.allclose(a.sum(1), torch.ones(1, 1, 2), atol=1e-6)
    # first pixel: (3, 0, 1) / 4 by hand; second: all negative -> uniform
    assert torch.allclose(a[0, :, 0, 0], torch.tensor([0.75, 0.0, 0.25]), atol=1e-5)
    assert torch.allclose(a[0, :, 0, 1], torch.full((3,), 1 / 3), atol=1e-5)


def test_orthogonal_vertices_finds_the_pure_pixels_of_a_synthetic_simplex():
    rng = np.random.default_rng(0)
    ends = rng.uniform(0.05, 1.0, size=(4, 30))
    abundances = rng.dirichlet(np.ones(4) * 0.7, size=500)
    pure = rng.choice(500, 4, replace=False)
    abundances[pure] = np.eye(4)
    picked = orthogonal_vertices(abundances @ ends, 4)
    assert sorted(picked) == sorted(pure)


def test_orthogonal_vertices_are_vertices_of_the_real_data_hull():
    """Each pick is not a convex combination of the other pixels: checked by a linear program."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    cube, _ = read_hsi(shared_path("hsi", "moffett.mat"))
    pixels = cube.reshape(-1, cube.shape[2]).astype(np.float64)[::3]  # 834 real spectra, 184 bands
    for index in orthogonal_vertices(pixels, 5):
        others = np.delete(pixels, index, 0)
        # find lambda >= 0, sum 1, others^T lambda = pixel: infeasible <=> the pixel is a vertex
        equality = np.concatenate([others.T, np.ones((1, len(others)))], 0)
        target = np.concatenate([pixels[index], [1.0]])
        result = scipy_optimize.linprog(np.zeros(len(others)), A_eq=equality, b_eq=target, bounds=(0, None),
                                        method="highs")
        assert result.status == 2, f"pixel {index} is inside the hull of the others"


def test_enclosing_tetrahedron_contains_every_point():
    points = np.random.default_rng(1).normal(size=(400, 3)) * [1.0, 0.2, 3.0] + 5
    vertices = enclosing_tetrahedron(points)
    homogeneous = np.concatenate([vertices.T, np.ones((1, 4))], 0)
    barycentric = np.linalg.solve(homogeneous, np.concatenate([points.T, np.ones((1, len(points)))], 0))
    assert barycentric.min() >= 0.0


def test_linear_simplex_start_is_the_least_squares_map_on_real_pixels():
    (x_train, y_train), _ = samson_halves()
    model = improved_model(y_train.shape[2], count=4)
    set_linear_simplex(model, x_train, y_train, 4)
    with torch.no_grad():
        abundances, recon = model(image(x_train))
    expected = lstsq_prediction(x_train, y_train, x_train)
    assert np.abs(recon[0].permute(1, 2, 0).numpy() - expected).max() < 1e-4
    assert abundances.min() >= 0 and torch.allclose(abundances.sum(1), torch.ones(1), atol=1e-5)


def test_improved_recipe_beats_the_linear_map_on_samson_in_seconds():
    """Left half -> right half of the real Samson scene: PSNR above and SAM below the linear bar."""
    (x_train, y_train), (x_test, y_test) = samson_halves()
    model = improved_model(y_train.shape[2])
    set_linear_simplex(model, x_train, y_train, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = image(x_train), image(y_train)
    steps = 120
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(3e-3, step, steps, 0.3)
        loss = (model(x)[1] - y).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        abundances, recon = model(image(x_test))
    pred = recon[0].permute(1, 2, 0).numpy().astype(np.float64)
    bar = lstsq_prediction(x_train, y_train, x_test)

    def mean_angle(a, b):
        cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        return np.degrees(np.arccos(np.clip(cosine, -1, 1))).mean()

    assert mse_psnr(y_test, pred) > mse_psnr(y_test, bar) + 2.0
    assert mean_angle(y_test, pred) < mean_angle(y_test, bar)
    assert abundances.min() >= 0 and torch.allclose(abundances.sum(1), torch.ones(1), atol=1e-5)
    # far outside the training inputs the abundances still lie on the simplex
    wild = torch.tensor([[-3.0, 5.0, 0.5]]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        a = model.abundances(wild)
    assert a.min() >= 0 and abs(float(a.sum()) - 1) < 1e-5


def test_one_cycle_matches_torch_one_cycle():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=50, pct_start=0.3)
    for step in range(50):
        assert one_cycle_lr(3e-3, step, 50, 0.3) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        reference.step()


def test_config_wavelengths_of_another_sensor_warn_and_small_scene_is_used_whole(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("hsisyn"), "propagate", True)  # setup_logging elsewhere turns it off
    folder = tmp_path / "scene"
    folder.mkdir()
    os.symlink(shared_path("hsi", "moffett.mat"), folder / "moffett.mat")
    with caplog.at_level(logging.WARNING, logger="hsisyn"):
        dataset = HSICropDataset(str(folder), bands=[28, 17, 7], wavelengths="chikusei-59", crop_size=64)
    assert dataset.wavelengths is None and dataset.band_indices == [28, 17, 7]
    assert dataset.crop_size == 50  # Moffett is 50 x 50
    assert "59 wavelengths" in caplog.text and "smaller than data.crop_size 64" in caplog.text
    x, y, _ = dataset[0]
    assert tuple(x.shape) == (3, 50, 50) and tuple(y.shape) == (184, 50, 50)


def test_improved_config_trains_without_a_test_split(tmp_path):
    cube, _ = read_hsi(shared_path("hsi", "moffett.mat"))
    for role, part in (("train", cube[:, :25]), ("val", cube[:, 25:])):
        (tmp_path / role).mkdir()
        write_mat(str(tmp_path / role / f"{role}.mat"), {"Y": part})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_unmixing_config(os.path.join(root, "config", "improved_unmixing.json"), {
        "data.train": str(tmp_path / "train"), "data.val": str(tmp_path / "val"),
        "data.test": str(tmp_path / "no_tests"), "data.bands": [28, 17, 7],
        "data.samples_per_epoch": 10, "train.epochs": 2})
    result = train_unmixing(cfg, str(tmp_path / "run"), torch.device("cpu"))
    assert result == {}
    with open(tmp_path / "run" / "train.log") as f:
        assert f.read().count("no test split") == 1
    assert os.path.isfile(tmp_path / "run" / "checkpoint" / "latest.pth")


def test_match_moments_moves_channel_statistics_to_the_reference():
    from ubf.pipeline.unmixing_color import match_moments
    rng = np.random.default_rng(3)
    photo = rng.uniform(0.4, 0.6, size=(64, 64, 3)).astype(np.float32)  # low-contrast, unclipped after matching
    mean_ref, std_ref = np.array([0.3, 0.5, 0.4]), np.array([0.05, 0.04, 0.03])
    out = match_moments(photo, (mean_ref, std_ref)).reshape(-1, 3).astype(np.float64)
    assert np.allclose(out.mean(0), mean_ref, atol=1e-5) and np.allclose(out.std(0), std_ref, atol=1e-5)
    # a per-channel affine map keeps each channel's pixel order
    assert (np.argsort(out[:, 0]) == np.argsort(photo.reshape(-1, 3)[:, 0])).all()


def test_infer_with_colour_matching_uses_the_checkpoint_moments(tmp_path):
    from ubf.pipeline.unmixing_infer import infer_folders
    from ubf.data.matio import read_mat
    cube, _ = read_hsi(shared_path("hsi", "moffett.mat"))
    aid = shared_path("paper", "aid")
    (tmp_path / "train").mkdir()
    write_mat(str(tmp_path / "train" / "left.mat"), {"Y": cube[:, :25]})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_unmixing_config(os.path.join(root, "config", "improved_unmixing.json"), {
        "data.train": str(tmp_path / "train"), "data.bands": [28, 17, 7],
        "data.samples_per_epoch": 5, "train.epochs": 1})
    cfg["data"]["val"] = cfg["data"]["test"] = None
    train_unmixing(cfg, str(tmp_path / "run"), torch.device("cpu"))
    ckpt = str(tmp_path / "run" / "checkpoint" / "latest.pth")
    x_train, _ = prepare_pair(cube[:, :25], [28, 17, 7])
    state = torch.load(ckpt, weights_only=False)
    assert np.allclose(state["input_moments"][0], x_train.reshape(-1, 3).mean(0), atol=1e-4)
    result = infer_folders(ckpt, [aid], None, str(tmp_path / "abu"), torch.device("cpu"), color_match="moments")
    assert len(result["written"]) == len(os.listdir(aid)) and not result["failed"]
    abu = read_mat(result["written"][0])["Abu"]
    assert abu.min() >= 0 and np.allclose(abu.sum(-1), 1, atol=1e-4)


def test_demo_config_runs_on_a_184_band_scene_with_bands(tmp_path):
    """The CPU demo config (written for 59-band Chikusei, 64-pixel crops) on Moffett halves with --bands."""
    from ubf.cli.unmixing import main as unmixing_main
    cube, _ = read_hsi(shared_path("hsi", "moffett.mat"))
    for role, part in (("train", cube[:, :25]), ("val", cube[:, 25:])):
        (tmp_path / role).mkdir()
        write_mat(str(tmp_path / role / f"{role}.mat"), {"Y": part})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    code = unmixing_main(["train", "-c", os.path.join(root, "config", "demo_unmixing.json"),
                          "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
                          "--test", str(tmp_path / "no_tests"), "--bands", "28", "17", "7",
                          "--epochs", "1", "--out", str(out)])
    assert code == 0
    state = torch.load(out / "checkpoint" / "latest.pth", weights_only=False)
    assert state["out_bands"] == 184 and state["band_indices"] == [28, 17, 7]
    with open(out / "train.log") as f:
        log = f.read()
    assert "using 25 x 25 crops" in log and "ignored" in log and log.count("no test split") == 1
