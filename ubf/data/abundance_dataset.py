"""Abundance maps from stage 1 (`Unmixing.py infer`) as DDPM training data.

Every `.mat` file of a folder holds `Abu` (H, W, K) in [0, 1] (or `SR` in [-1, 1], the key of
sampled abundances). Items are (K, S, S) float32 tensors in [-1, 1], S = image_size: a crop when the
map is larger than S, optionally flipped. With `brightness`, each file's per-pixel brightness factor
`Bright` (H, W) (stage 1's cone head) is one more channel, K + 1, scaled as
`core.abundance_scaling.brightness_to_unit` says.

All randomness (file order, crop offsets, flips) comes from `AbundanceStream`, which derives it from
(seed, epoch) alone: the stream can restart at any sample index and continue exactly, whatever the
number of DataLoader workers, which is what makes a resumed training run identical to an
uninterrupted one.

Batches (`AbundanceStream.batches`, `datasets.train.batching`): "epoch" (the default) cuts each epoch
into batches as the reference's `DataLoader(shuffle=True)` does: every file once per epoch, distinct
files within a step and a short last batch (5 files, batch 8: one batch of 5 per epoch). "stream" (the
earlier behaviour) always takes `batch_size` items, running on across epoch boundaries.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ubf.core.abundance_scaling import brightness_to_unit, channel_range, to_model_space
from ubf.core.errors import UserError
from ubf.core.fs import require_folder
from ubf.core.logs import get_logger
from ubf.data.matio import ABUNDANCE_KEYS, LazyMatArray

FLIPS = ("none", "horizontal", "both")
BATCHING = ("epoch", "stream")
# Abundances may leave [0, 1] a little (raw DDPM samples); beyond this margin they are something else.
RANGE_SLACK = 0.5
_HOW_TO_MAKE = "create abundance files with `python Unmixing.py infer` or point --data at them"
ABUNDANCE_HINT = "the training data must be abundance maps (`Abu`, as `python Unmixing.py infer` writes them)"


def list_abundance_files(root: str, limit: int = -1) -> list[str]:
    """Sorted `.mat` files of `root` (the first `limit` when limit > 0); a clear error when none."""
    require_folder(root, "abundance folder", _HOW_TO_MAKE)
    names = [name for name in os.listdir(root) if name.lower().endswith(".mat")]
    hidden = [name for name in names if name.startswith(".")]
    if hidden:  # temporary files of a writer, or files named to be skipped: say so rather than skip silently
        get_logger().warning("%s: %d hidden .mat file(s) not used (e.g. %s); rename them without the leading dot "
                             "to train on them", root, len(hidden), sorted(hidden)[0])
    files = sorted(os.path.join(root, name) for name in names if not name.startswith("."))
    if not files:
        raise UserError(f"{root}: no .mat files ({_HOW_TO_MAKE})")
    return files[:limit] if limit and limit > 0 else files


class AbundanceDataset(Dataset):
    """Crops of abundance maps: item -> (K, S, S) float32 in [-1, 1].

    An item is an index or a tuple (index, u_row, u_col, flip_h, flip_v) from `AbundanceStream`,
    u in [0, 1) choosing the crop offset. The first file is checked on construction so that a wrong
    K or a too small map fails before training starts.
    """

    def __init__(self, files: list[str], image_size: int, channels: int, value_range=None, brightness: bool = False):
        self.files = list(files)
        self.image_size = image_size
        self.channels = channels
        self.brightness = brightness
        self.value_range = value_range  # [[low_k], [high_k]]: model.diffusion.abundance_scaling "channel_range"
        self.read(0, 0.0, 0.0)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int, u_row: float, u_col: float) -> np.ndarray:
        """The (S, S, K) crop of file `index` mapped to [-1, 1]."""
        path, size = self.files[index], self.image_size
        with LazyMatArray(path, candidates=ABUNDANCE_KEYS, hint=ABUNDANCE_HINT) as array:
            if len(array.shape) != 3:
                raise UserError(f"{path}: '{array.key}' has shape {array.shape}, expected H x W x K")
            height, width, k = array.shape
            if k + int(self.brightness) != self.channels:
                raise UserError(f"{path}: '{array.key}' has K = {k} abundance maps{' (+1 brightness)' if self.brightness else ''}"
                                f" but the config's model.diffusion.channels is {self.channels}")
            if height < size or width < size:
                raise UserError(f"{path}: '{array.key}' is {height} x {width}, smaller than "
                                f"model.diffusion.image_size = {size}")
            top = min(int(u_row * (height - size + 1)), height - size)
            left = min(int(u_col * (width - size + 1)), width - size)
            crop = np.asarray(array.window(slice(top, top + size), slice(left, left + size)), dtype=np.float32)
            key = array.key
        if self.brightness:
            bright = read_brightness(path, (slice(top, top + size), slice(left, left + size)), (height, width))
        if not np.all(np.isfinite(crop)):
            raise UserError(f"{path}: '{key}' contains NaN/Inf values")
        # `SR` (sampled abundances) is stored in [-1, 1] already
        crop = crop if key == "SR" else crop * 2.0 - 1.0
        low, high = float(crop.min()), float(crop.max())
        if low < -1.0 - 2 * RANGE_SLACK or high > 1.0 + 2 * RANGE_SLACK:
            span = (low, high) if key == "SR" else ((low + 1) / 2, (high + 1) / 2)
            expected = "[-1, 1]" if key == "SR" else "[0, 1]"
            raise UserError(f"{path}: '{key}' has values from {span[0]:.3g} to {span[1]:.3g}, far outside {expected}; "
                            "these are not abundances (store abundance maps, e.g. from `Unmixing.py infer`)")
        if self.brightness:
            crop = np.concatenate([crop, brightness_to_unit(bright)[..., None] * 2.0 - 1.0], axis=2)
        return to_model_space(crop, self.value_range).astype(np.float32, copy=False)

    def __getitem__(self, item) -> torch.Tensor:
        if isinstance(item, (tuple, list)):
            index, u_row, u_col, flip_h, flip_v = item
        else:
            index, u_row, u_col, flip_h, flip_v = int(item), 0.0, 0.0, False, False
        crop = self.read(int(index), float(u_row), float(u_col))
        if flip_h:
            crop = crop[:, ::-1]
        if flip_v:
            crop = crop[::-1]
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))


def read_brightness(path: str, window, shape) -> np.ndarray:
    """The `Bright` (h, w) brightness factors of an abundance file inside `window` (rows, cols), checked
    against the shape of its maps."""
    with LazyMatArray(path, candidates=("Bright",), hint="model.diffusion.brightness needs the per-pixel brightness "
                      "'Bright' beside the abundances (a stage-1 model with brightness writes it)") as b:
        if tuple(b.shape[:2]) != tuple(shape) or len(b.shape) != 2:
            raise UserError(f"{path}: 'Bright' has shape {b.shape}, expected {shape[0]} x {shape[1]} like the abundances")
        bright = np.asarray(b.window(*window), dtype=np.float32)
    if not np.all(np.isfinite(bright)) or bright.min() < 0:
        raise UserError(f"{path}: 'Bright' holds negative or NaN/Inf values")
    return bright


def training_range(files: list[str], brightness: bool = False) -> list[list[float]]:
    """Per-channel [low, high] of the abundances (and the brightness channel) of every file
    (`core.abundance_scaling.channel_range`)."""
    maps = []
    for path in files:
        with LazyMatArray(path, candidates=ABUNDANCE_KEYS, hint=ABUNDANCE_HINT) as array:
            values = np.asarray(array.window(slice(None), slice(None)), dtype=np.float32)
            values = np.clip((values + 1.0) / 2.0 if array.key == "SR" else values, 0.0, 1.0)
            shape = array.shape[:2]
        if brightness:
            bright = read_brightness(path, (slice(0, shape[0]), slice(0, shape[1])), shape)
            values = np.concatenate([values, brightness_to_unit(bright)[..., None]], axis=2)
        maps.append(values)
    return channel_range(maps)


class AbundanceStream(Sampler):
    """An endless stream of (index, u_row, u_col, flip_h, flip_v) items, starting at sample `start`.

    Epoch e is a permutation of the files plus crop and flip draws, all from a generator seeded
    with (seed, e): sample number s is item s % n of epoch s // n, however the stream was started.

    Several processes (torchrun) share one stream: with `global_batch` B split over `world` processes,
    global batch j is samples [start + j B, start + (j + 1) B) and process `rank` takes the contiguous
    slice [rank B / world, (rank + 1) B / world) of it, so the union of the processes' batch j is the
    batch j of one process. Iterating the stream gives this process's items one by one in that
    "stream" grouping; `batches` gives whole batches in either grouping (`per_epoch`, see the module
    docstring), for a DataLoader's `batch_sampler`.
    """

    def __init__(self, num_files: int, seed: int, start: int = 0, flip: str = "both",
                 global_batch: int | None = None, rank: int = 0, world: int = 1, per_epoch: bool = False):
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}")
        if world > 1 and (global_batch is None or global_batch % world or not 0 <= rank < world):
            raise ValueError("global_batch must be divisible by world and 0 <= rank < world")
        self.num_files = num_files
        self.seed = int(seed)
        self.start = int(start)
        self.flip = flip
        self.global_batch, self.rank, self.world = global_batch, int(rank), int(world)
        self.per_epoch = bool(per_epoch)

    def epoch_items(self, epoch: int) -> list[tuple]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = self.num_files
        order = torch.randperm(n, generator=generator).tolist()
        offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64).tolist()
        flips = (torch.rand(n, 2, generator=generator) < 0.5).tolist()
        allow_h, allow_v = self.flip in ("horizontal", "both"), self.flip == "both"
        return [(order[i], offsets[i][0], offsets[i][1], flips[i][0] and allow_h, flips[i][1] and allow_v)
                for i in range(n)]

    def __iter__(self):
        items = self._all_items()
        if self.world == 1:
            yield from items
            return
        share = self.global_batch // self.world
        first, last = self.rank * share, (self.rank + 1) * share
        for offset, item in enumerate(items):
            if first <= offset % self.global_batch < last:
                yield item

    def _all_items(self, start: int | None = None):
        epoch, position = divmod(self.start if start is None else start, self.num_files)
        while True:
            items = self.epoch_items(epoch)
            yield from items[position:]
            epoch, position = epoch + 1, 0

    def batch_at(self, sample: int) -> tuple[int, int]:
        """(first sample, size) of the global batch that the step after `sample` samples takes.

        "stream": `global_batch` samples from `sample` on. "epoch": what is left of the epoch, at most
        `global_batch`; under several processes a remainder smaller than the number of processes
        cannot give each one a row, so it is left out of that epoch (the batch starts the next one).
        """
        if not self.per_epoch:
            return sample, self.global_batch
        n = self.num_files
        while True:
            left = n - sample % n
            size = min(self.global_batch, left)
            if size >= self.world:
                return sample, size
            sample += left

    def rows(self, size: int) -> slice:
        """This process's contiguous rows of a global batch of `size` (equal shares when it divides)."""
        return slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)

    def batches(self):
        """Endless lists of this process's items, one list per training step (see `batch_at`)."""
        sample = self.start
        items, position = self._all_items(sample), sample
        while True:
            first, size = self.batch_at(sample)
            for _ in range(first - position):  # a remainder left out under several processes
                next(items)
            batch = [next(items) for _ in range(size)]
            yield batch[self.rows(size)]
            sample = position = first + size

    def epoch_of(self, samples_seen: int) -> int:
        """The epoch number a run is at after `samples_seen` samples, as its checkpoint names it.

        "epoch": the reference's count (its loop adds one as each pass over the files begins, so
        the step that finishes epoch e, or any step inside it, is in epoch e): ceil(samples / n).
        "stream": the number of finished passes, samples // n (what this project wrote before).
        """
        if self.per_epoch:
            return -(-samples_seen // self.num_files)
        return samples_seen // self.num_files


class EpochBatches(Sampler):
    """`AbundanceStream.batches` as a DataLoader `batch_sampler` (an iterable of index lists)."""

    def __init__(self, stream: AbundanceStream):
        self.stream = stream

    def __iter__(self):
        return self.stream.batches()
