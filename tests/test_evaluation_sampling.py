"""One pass over a set keeps seeded samples within the caps; real sets are min-max normalised."""
import numpy as np
import pytest
import torch

from ubf.data.matio import write_mat
from ubf.evaluation.sampling import Caps, collect, collect_folder, cubes_of


def cubes(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(2.0, 5.0, size=(20 + i, 24, 4)).astype(np.float32) for i in range(count)]


def test_caps_are_respected_and_sampling_is_seeded():
    caps = Caps(pixel_cap=100, patch_cap=10, patch_size=4, block_cap=5, block_size=8, image_cap=2, seed=3)
    a = collect("x", cubes_of(cubes(3), "x"), 3, caps, keep_images=True, progress=False)
    b = collect("x", cubes_of(cubes(3), "x"), 3, caps, keep_images=True, progress=False)
    assert a.pixels.shape == (100, 4) and a.patches.shape == (10, 4, 4, 4) and a.blocks.shape == (5, 4, 8, 8)
    assert len(a.images) == 2 and a.n_pixels_total == 20 * 24 + 21 * 24 + 22 * 24
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.blocks, b.blocks)
    c = collect("x", cubes_of(cubes(3), "x"), 3, Caps(**{**caps.__dict__, "seed": 4}), keep_images=True, progress=False)
    assert not torch.equal(a.pixels, c.pixels)


def test_samples_are_taken_from_the_data():
    data = cubes(2)
    sample = collect("x", cubes_of(data, "x"), 2, Caps(pixel_cap=50, block_cap=4, block_size=5), False, progress=False)
    every = np.concatenate([d.reshape(-1, 4) for d in data])
    rows = {tuple(r) for r in every.tolist()}
    assert all(tuple(r) in rows for r in sample.pixels.tolist())


def test_real_folders_are_min_max_normalised_and_synthetic_ones_are_not(tmp_path):
    for i, cube in enumerate(cubes(2)):
        write_mat(str(tmp_path / f"c{i}.mat"), {"HSI": cube})
    caps = Caps(pixel_cap=10 ** 6)
    real = collect_folder("real", str(tmp_path), True, caps, keep_images=False, progress=False)
    synthetic = collect_folder("synthetic", str(tmp_path), False, caps, keep_images=False, progress=False)
    assert float(real.pixels.min()) == pytest.approx(0.0) and float(real.pixels.max()) == pytest.approx(1.0)
    assert float(synthetic.pixels.min()) >= 2.0


def test_real_blocks_come_from_the_kept_images():
    data = cubes(5)
    caps = Caps(pixel_cap=50, block_cap=6, block_size=6, image_cap=2, seed=1)
    sample = collect("real", cubes_of(data, "r"), 5, caps, keep_images=True, progress=False)
    kept = [img.numpy() for img in sample.images]
    for block in sample.blocks.numpy():
        corner = block[:, 0, 0]
        assert any((img.transpose(1, 2, 0) == corner).all(axis=2).any() for img in kept)
    none = collect("real", cubes_of(data, "r"), 5, Caps(image_cap=0), keep_images=True, progress=False)
    assert none.blocks.shape[0] == 0 and none.images == []
