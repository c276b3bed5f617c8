"""The feature network: seeded, learns its task, cached per real set and settings."""
import os
import shutil

import numpy as np
import torch

from ubf.data.matio import read_hsi
from ubf.data.normalize import minmax
from ubf.evaluation.features import FeatureSettings, cache_key, embed_patches, load_or_train, train_feature_net
from tests.conftest import shared_path

SMALL = FeatureSettings(steps=40, batch=16, width=16, features=8)


def real_patches(size: int = 8) -> torch.Tensor:
    cube = minmax(read_hsi(shared_path("paper", "chikusei", "block_118.mat"))[0])[:64, :64]
    t = torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1)))
    return t.unfold(1, size, size).unfold(2, size, size).permute(1, 2, 0, 3, 4).reshape(-1, t.shape[0], size, size)


def test_training_is_seeded_and_lowers_the_reconstruction_error():
    patches = real_patches()
    a = train_feature_net(patches, SMALL, progress=False)
    b = train_feature_net(patches, SMALL, progress=False)
    assert torch.equal(embed_patches(a, patches), embed_patches(b, patches))
    untrained = train_feature_net(patches, FeatureSettings(steps=0, width=16, features=8), progress=False)
    with torch.no_grad():
        err = lambda net: float((net(patches) - patches).abs().mean())
        assert err(a) < 0.7 * err(untrained)
    assert embed_patches(a, patches).shape == (patches.shape[0], 2 * 8 + 1)


def test_cache_is_reused_and_keyed_by_files_and_settings(tmp_path):
    patches = real_patches()
    real = tmp_path / "real"
    real.mkdir()
    first = str(real / "a.mat")
    shutil.copy(shared_path("paper", "chikusei", "block_118.mat"), first)
    cache = str(tmp_path / "cache")
    net, key, cached = load_or_train([first], patches, SMALL, cache, progress=False)
    assert not cached and os.path.isfile(os.path.join(cache, f"features_{key}.pt"))
    again, key2, cached2 = load_or_train([first], patches, SMALL, cache, progress=False)
    assert cached2 and key2 == key
    assert torch.equal(embed_patches(net, patches), embed_patches(again, patches))
    second = str(real / "b.mat")
    shutil.copy(shared_path("paper", "chikusei", "block_282.mat"), second)
    assert cache_key([first, second], 8, 59, SMALL) != key
    assert cache_key([first], 8, 59, FeatureSettings(steps=41, batch=16, width=16, features=8)) != key
    assert cache_key([first], 16, 59, SMALL) != key
