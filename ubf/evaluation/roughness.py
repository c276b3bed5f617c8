"""High-frequency energy of abundance maps: the speckle detector of the generation scores.

A failed DDPM sample is salt-and-pepper noise in every channel; a good one is as smooth as the
training maps. `laplacian_energy` measures that per channel (mean absolute 4-neighbour Laplacian
over the interior pixels), and a sample counts as noisy when its most energetic channel exceeds the
most energetic channel of the noisiest crop of the training maps (same crop size), so a smooth
training set sets a strict bar and a textured one a lenient bar.
"""
import numpy as np
import torch


def laplacian_energy(maps: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) maps -> (N, K) mean |x[i-1,j] + x[i+1,j] + x[i,j-1] + x[i,j+1] - 4 x[i,j]|."""
    x = torch.as_tensor(maps).double()
    if x.ndim != 4 or x.shape[-1] < 3 or x.shape[-2] < 3:
        raise ValueError(f"expected (N, K, H, W) maps of at least 3 x 3 pixels, got {tuple(x.shape)}")
    centre = x[..., 1:-1, 1:-1]
    lap = x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * centre
    return lap.abs().mean(dim=(-2, -1))


def crop_energies(maps, size: int, stride: int | None = None) -> torch.Tensor:
    """Per-crop max-over-channels energy (M,) of every `size` x `size` crop (step `stride`, default
    size // 4) of a list of (K, H, W) maps, edge crops included."""
    stride = stride or max(1, size // 4)
    values = []
    for m in maps:
        m = torch.as_tensor(m).double()
        height, width = m.shape[-2:]
        if height < size or width < size:
            raise ValueError(f"a map of {height} x {width} is smaller than the crop size {size}")
        tops = sorted(set(list(range(0, height - size + 1, stride)) + [height - size]))
        lefts = sorted(set(list(range(0, width - size + 1, stride)) + [width - size]))
        crops = torch.stack([m[:, t:t + size, l:l + size] for t in tops for l in lefts])
        values.append(laplacian_energy(crops).max(dim=1).values)
    return torch.cat(values)


def noisy_fraction(samples: torch.Tensor, training_maps, stride: int | None = None) -> dict:
    """Share of samples (N, K, S, S) whose max-channel energy exceeds the noisiest training crop's.

    Returns {'noisy_sample_fraction', 'hf_threshold' (the noisiest crop), 'hf_training_median',
    'hf_sample_median', 'hf_sample_max'}; all maps must be on the same scale (e.g. [0, 1]).
    """
    samples = torch.as_tensor(samples)
    energy = laplacian_energy(samples).max(dim=1).values
    reference = crop_energies(training_maps, samples.shape[-1], stride)
    threshold = float(reference.max())
    return {"noisy_sample_fraction": float((energy > threshold).double().mean()),
            "hf_threshold": threshold, "hf_training_median": float(reference.median()),
            "hf_sample_median": float(energy.median()), "hf_sample_max": float(energy.max())}


def as_channels_first(maps_hwk: np.ndarray) -> torch.Tensor:
    """(H, W, K) array as stored in .mat files -> (K, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(maps_hwk, dtype=np.float64).transpose(2, 0, 1)))
