"""Several processes with `torchrun` (PyTorch DDP); every helper is a no-op in a single process.

`torchrun --nproc_per_node N script.py ...` starts N copies of a script with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment. `init_distributed` reads them once and
joins the process group (NCCL on CUDA, Gloo on the CPU), also for N = 1 (DDP of one process: the same
code path as N GPUs, and the same numbers as a plain run); without them nothing happens and the script
runs as a single plain process. Rank 0 alone writes logs, metrics and checkpoints
(`is_main_process`); state dicts are saved from `unwrap(model)`, so they carry no `module.` prefix
and load in one process or in several alike.
"""
import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from ubf.core.errors import UserError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True once a process group is running (torchrun, any number of processes)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """torchrun's variables are set (any number of processes, one included)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def launched_with_several_processes() -> bool:
    """torchrun's variables are set and ask for more than one process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> torch.device:
    """Join the torchrun process group if there is one; returns the device this process should use.

    On CUDA each process takes GPU LOCAL_RANK (NCCL); on the CPU all processes share it (Gloo).
    Outside torchrun the given device comes back unchanged.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if not dist.is_available():
        raise UserError("torch.distributed is not available in this PyTorch build; run a single process")
    device = torchrun_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    return device


def torchrun_device(device: torch.device) -> torch.device:
    """This process's device under torchrun: CUDA means GPU LOCAL_RANK (one GPU per process); the CPU,
    and any device outside torchrun, stay as given."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                        "use --nproc_per_node <= the number of GPUs")
    return torch.device("cuda", local)


def cleanup() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: torch.device):
    """`with distributed_session(device) as device:` init on entry, cleanup on exit (also on errors)."""
    try:
        yield init_distributed(device)
    finally:
        cleanup()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (a copy; the input is unchanged). NaN on any rank gives NaN."""
    if not is_distributed():
        return value.detach().clone()
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def per_process_batch(global_batch: int, key: str = "train.batch_size") -> int:
    """Each process's share of the global batch; it must divide evenly so that N processes equal one."""
    count = world_size()
    if global_batch % count:
        raise UserError(f"{key} {global_batch} is the global batch and must be divisible by the "
                        f"{count} processes")
    return global_batch // count


def distributed_sampler(dataset: Dataset, seed: int, shuffle: bool = True, drop_last: bool = False) -> DistributedSampler:
    """The sampler of this process; in one process it yields the whole seeded permutation.

    With the same seed the permutation is the same for every world size, and process r takes every
    N-th index from position r: global batch s (the union over processes of their batch s) is
    positions [s * B, (s + 1) * B) of that permutation, the same batch one process with batch B sees.
    Call `set_epoch(epoch)` before each epoch.
    """
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP wrapper in several processes (the model must already be on `device`), the model itself otherwise."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP (or DataParallel) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def strip_module_prefix(state_dict: dict) -> dict:
    """Accept state dicts saved from a DDP wrapper by others (`module.` before every key)."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict
