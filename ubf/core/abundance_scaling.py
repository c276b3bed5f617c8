"""Per-channel scaling of abundance maps into the DDPM's [-1, 1] space, and back.

The reference maps abundances a in [0, 1] to 2a - 1. Maps whose values stay in a narrow band (an
unmixing model whose endmembers lie well outside the data gives every pixel a similar mixture) then
fill a small part of [-1, 1], and the network's errors, not the maps' variation, dominate what it
draws. `channel_range` scaling stretches each channel's range over the training maps, [low_k, high_k],
to [-1, 1]; samples are mapped back before anything is written, so files keep the reference's meaning
(`SR` = 2a - 1, `Abu` in [0, 1]). Works on numpy arrays and torch tensors alike (channel axis given).
"""
import numpy as np

SCALINGS = ("none", "channel_range")
# A per-pixel brightness factor (stage 1's cone head, `Bright`) travels through stage 2 as one more channel,
# b / BRIGHTNESS_SCALE in [0, 1] like an abundance (then 2u - 1 or the channel range); brightness near the
# data's scale is about 1, and above BRIGHTNESS_SCALE it is clipped.
BRIGHTNESS_SCALE = 4.0


def brightness_to_unit(brightness):
    """Brightness factors (>= 0) -> the [0, 1] channel value stage 2 learns."""
    return np.clip(np.asarray(brightness, dtype=np.float32) / BRIGHTNESS_SCALE, 0.0, 1.0)


def unit_to_brightness(unit):
    """The [0, 1] channel value of a sample -> a brightness factor (>= 0); numpy or torch."""
    return unit.clamp(0.0, 1.0) * BRIGHTNESS_SCALE if hasattr(unit, "clamp") else \
        np.clip(unit, 0.0, 1.0) * BRIGHTNESS_SCALE
RANGE_MARGIN = 0.05  # the range is widened by this share of its span on each side: samples may overshoot a little
MIN_SPAN = 1e-3      # a constant channel keeps a span this wide (no division by zero)


def channel_range(maps, margin: float = RANGE_MARGIN) -> list[list[float]]:
    """[[low_k ...], [high_k ...]] of a list of (H, W, K) abundance maps in [0, 1], widened by `margin`."""
    k = maps[0].shape[-1]
    low = np.min([np.min(np.asarray(m, dtype=np.float64).reshape(-1, k), axis=0) for m in maps], axis=0)
    high = np.max([np.max(np.asarray(m, dtype=np.float64).reshape(-1, k), axis=0) for m in maps], axis=0)
    centre, half = (low + high) / 2.0, np.maximum((high - low) * (0.5 + margin), MIN_SPAN / 2.0)
    low, high = np.clip(centre - half, 0.0, 1.0 - MIN_SPAN), np.clip(centre + half, MIN_SPAN, 1.0)
    high = np.maximum(high, low + MIN_SPAN)
    return [low.tolist(), high.tolist()]


def _shaped(values, like, axis: int):
    """`values` (K,) shaped to broadcast along `axis` of `like`, as its own array type and dtype."""
    shape = [1] * like.ndim
    shape[axis] = -1
    if isinstance(like, np.ndarray):
        return np.asarray(values, dtype=like.dtype).reshape(shape)
    import torch
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(shape)


def to_model_space(signed, value_range, axis: int = -1):
    """Abundances as 2a - 1 -> the network's space (identity when `value_range` is None)."""
    if value_range is None:
        return signed
    low, high = _shaped(value_range[0], signed, axis), _shaped(value_range[1], signed, axis)
    return 2.0 * ((signed + 1.0) / 2.0 - low) / (high - low) - 1.0


def from_model_space(x, value_range, axis: int = 1):
    """The network's space -> abundances as 2a - 1 (identity when `value_range` is None)."""
    if value_range is None:
        return x
    low, high = _shaped(value_range[0], x, axis), _shaped(value_range[1], x, axis)
    return 2.0 * (low + (x + 1.0) / 2.0 * (high - low)) - 1.0
