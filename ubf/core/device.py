"""Turn a `--device auto|cpu|cuda[:N]` string into a torch.device, checked once."""
import torch

from ubf.core.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA on a machine without it is a user error."""
    name = (name or "auto").lower()
    if name.replace(",", "").isdigit():  # the reference's `--gpus 0,1`: GPU ids, the first one is used
        name = f"cuda:{name.split(',')[0]}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {name}: expected auto, cpu, cuda[:N] or GPU ids (--gpus 0)")


def configure_backends(device: torch.device) -> None:
    """On CUDA let cuDNN time its convolution algorithms for each new shape and keep the fastest
    (`cudnn.benchmark`), as both of the reference's scripts do; the shapes of a run repeat."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
