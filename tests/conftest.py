"""Shared fixtures: where the real data of ../shared/data lives (tests skip when it is absent)."""
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("HSISYN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))

# Small tensors: one thread is as fast on an idle machine and far faster on a loaded one.
torch.set_num_threads(1)


def shared_path(*parts: str) -> str:
    """Path into ../shared/data, skipping the calling test when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def shared_data():
    return shared_path
