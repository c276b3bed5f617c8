"""Colour-statistics matching of external RGB images to the encoder's training composites.

The encoder is trained on min-max-scaled band composites of real HSI crops; camera photos reach it
with another white balance and tone curve. Matching each image's per-channel mean and standard
deviation to those of the training composites (then clipping to [0, 1]) moves it into the input
range the encoder has seen, without touching its spatial content. The training moments are stored in
the unmixing checkpoint (`input_moments`); `infer.color_match: "moments"` turns this on.
"""
import numpy as np


def composite_moments(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (3,), (3,) over all pixels of a list of (H, W, 3) images."""
    pixels = np.concatenate([np.asarray(i, dtype=np.float64).reshape(-1, 3) for i in images])
    return pixels.mean(0), pixels.std(0)


def match_moments(image: np.ndarray, reference) -> np.ndarray:
    """(H, W, 3) image with each channel's mean/std moved to `reference` ((mean, std) or a list of images)."""
    mean_ref, std_ref = reference if isinstance(reference, tuple) else composite_moments(reference)
    mean, std = composite_moments([image])
    out = (np.asarray(image, dtype=np.float64) - mean) / np.maximum(std, 1e-6) * np.asarray(std_ref) + np.asarray(mean_ref)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
