"""Experiment tracking for both trainers: TensorBoard when installed, Weights & Biases when asked for.

Neither is a dependency. `start_tracking` opens what is available, says in one log line which
backends are active, and returns a `Tracker` whose calls do nothing for a missing backend, so the
training loops call it unconditionally. Scalars are logged per step (diffusion) or per epoch
(unmixing); images are (H, W, 3) uint8 arrays, e.g. the diffusion training previews.
"""
import math
import numbers
import os

import numpy as np

from ubf.core.logs import get_logger


def _tensorboard_writer(log_dir: str):
    """A `SummaryWriter` on `log_dir`, or None when the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=log_dir)


def _wandb_run(log_dir: str, config: dict, run_name: str | None, project: str):
    """A W&B run, or None (with the reason) when `wandb` is not installed or cannot start."""
    try:
        import wandb
    except ImportError:
        return None, "wandb is not installed (pip install wandb)"
    try:
        run = wandb.init(project=project, name=run_name, dir=log_dir, config=config)
    except Exception as err:  # a login or network failure must not stop the training
        return None, f"wandb could not start ({err})"
    return run, None


def _numeric(values: dict) -> dict[str, float]:
    """The finite numbers of `values` (strings, None and NaN are left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class Tracker:
    """Logs scalars and images to the open backends; every method is a no-op without one."""

    def __init__(self, tensorboard=None, wandb_run=None):
        self.tensorboard = tensorboard
        self.wandb_run = wandb_run

    @property
    def active(self) -> list[str]:
        return [name for name, backend in (("TensorBoard", self.tensorboard), ("W&B", self.wandb_run)) if backend]

    def log_scalars(self, values: dict, step: int, prefix: str = "") -> None:
        """Numbers of `values` under `prefix/key` at `step`; other values are skipped."""
        scalars = {f"{prefix}{key}": value for key, value in _numeric(values).items()}
        if not scalars:
            return
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()  # an interrupted run keeps what it logged
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image."""
        image = np.asarray(image)
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, image, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb
            self.wandb_run.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_tracking(log_dir: str, config: dict | None = None, run_name: str | None = None, wandb: bool = False,
                   project: str = "unmixing-before-fusion", enabled: bool = True) -> Tracker:
    """Open TensorBoard (if installed) in `log_dir` and W&B (if `wandb` and installed); log which are on.

    `enabled=False` (other DDP ranks) opens nothing and logs nothing.
    """
    if not enabled:
        return Tracker()
    log = get_logger()
    os.makedirs(log_dir, exist_ok=True)
    writer = _tensorboard_writer(log_dir)
    run, why_not = _wandb_run(log_dir, config or {}, run_name, project) if wandb else (None, None)
    tracker = Tracker(writer, run)
    parts = [f"TensorBoard in {log_dir} (tensorboard --logdir {log_dir})" if writer else
             "TensorBoard off (pip install tensorboard to get it)"]
    parts.append("W&B on" if run else f"W&B off ({why_not})" if why_not else "W&B off (not asked for)")
    log.info("experiment tracking: %s; %s", *parts)
    return tracker
