import pytest
import torch

from ubf.core.device import resolve_device
from ubf.core.errors import UserError


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_and_reference_gpu_ids_without_cuda_are_user_errors():
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="--device cuda:1: CUDA is not available"):
        resolve_device("1")  # the reference's --gpus 1
