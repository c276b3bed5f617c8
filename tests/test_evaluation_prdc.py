"""k-NN precision and recall: 1 for a set against itself, 0 for disjoint sets, one half when half is covered."""
import numpy as np
import pytest
import torch

from ubf.data.matio import read_hsi
from ubf.data.normalize import minmax
from ubf.evaluation.prdc import precision_recall
from tests.conftest import shared_path


def test_real_set_against_itself_has_precision_and_recall_one():
    cube = minmax(read_hsi(shared_path("paper", "chikusei", "block_282.mat"))[0])
    flat = torch.from_numpy(cube.reshape(-1, cube.shape[2]))[::4]
    assert precision_recall(flat, flat, k=3, chunk=1500) == {"precision": 1.0, "recall": 1.0}


def test_disjoint_sets_score_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(200, 3, generator=g)
    b = torch.tensor([0.0, 1.0, 0.0]) + 0.01 * torch.randn(200, 3, generator=g)
    assert precision_recall(a, b) == {"precision": 0.0, "recall": 0.0}


def test_generator_covering_one_of_two_modes_has_full_precision_half_recall():
    g = torch.Generator().manual_seed(1)
    mode_a = torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(300, 3, generator=g)
    mode_b = torch.tensor([0.0, 0.0, 1.0]) + 0.01 * torch.randn(300, 3, generator=g)
    real = torch.cat([mode_a, mode_b])
    synthetic = torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(300, 3, generator=g)
    scores = precision_recall(real, synthetic, k=5)
    assert scores["precision"] > 0.95
    assert scores["recall"] == pytest.approx(0.5, abs=0.05)


def test_brightness_does_not_count():
    x = torch.rand(100, 6, generator=torch.Generator().manual_seed(2)) + 0.1
    assert precision_recall(x, 3.0 * x) == {"precision": 1.0, "recall": 1.0}


def test_noise_lowers_precision():
    cube = minmax(read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0])
    real = torch.from_numpy(cube.reshape(-1, cube.shape[2]))[::8]
    g = torch.Generator().manual_seed(3)
    values = [precision_recall(real, real + s * torch.randn(real.shape, generator=g))["precision"]
              for s in (0.0, 0.003, 0.03)]
    assert values[0] == 1.0 and values[0] > values[1] > values[2]
    assert np.isfinite(values).all()
