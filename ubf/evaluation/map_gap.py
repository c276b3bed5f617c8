"""How far a set of abundance maps is from a reference set (numpy and scipy only).

The study pre-trains a downstream model on HSIs rendered from abundance maps (RGB-inferred, DDPM-sampled
or a control) and fine-tunes it on the real scene. Whatever the pre-training maps do not share with the
scene's own maps the fine-tuning has to undo, so this module measures that gap in the maps themselves, with
the scene's maps (stage 1 run over its real HSI) as the reference:

- per pixel, the energy distance of the abundance vectors and the 1-D Wasserstein distance of the
  brightness (`Bright`, when both sets have it), on pixels sub-sampled with an explicit seed;
- a floor for both: the same distances between the two spatial halves of the reference's maps (each map
  cut across its longer side), i.e. how far another region of the same scene is; a set near the floor is
  as close to the scene as the scene is to itself. Random halves of the pixels would give only the
  sub-sampling noise, far below that: neighbouring pixels are alike, so one crop holds few independent blobs;
- spatially, the correlation length and the pooled autocorrelation profile (structure_controls.py).

Energy distance (Szekely & Rizzo): D(X, Y) = sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) with Euclidean norms,
zero only for equal distributions; in one dimension it is sqrt(2 integral (F - G)^2), the value of
scipy.stats.energy_distance. The means run over all pairs (the V-statistic, as scipy's CDF form).
"""
import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from ubf.core.errors import UserError
from ubf.evaluation.structure_controls import correlation_profile, map_statistics


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two samples of vectors ((N, D) and (M, D); 1-D arrays are D = 1)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise UserError(f"energy distance of {x.shape[1]}-D and {y.shape[1]}-D samples")
    value = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    return float(np.sqrt(max(value, 0.0)))


def sample_pixels(maps, brightness, count: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` pixels drawn without replacement from all maps: (abundance vectors (n, K), brightness or None)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1, m.shape[2]) for m in maps])
    bright = None if brightness is None else \
        np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in brightness])
    pick = np.random.default_rng(seed).choice(len(flat), min(count, len(flat)), replace=False)
    return flat[pick], None if bright is None else bright[pick]


def spatial_halves(maps, brightness) -> tuple[tuple, tuple]:
    """((first halves, their brightness), (second halves, theirs)): every map cut across its longer side."""
    first, second, first_b, second_b = [], [], [], []
    for index, m in enumerate(maps):
        axis = 0 if m.shape[0] >= m.shape[1] else 1
        cut = m.shape[axis] // 2
        first.append(np.take(m, range(cut), axis=axis))
        second.append(np.take(m, range(cut, 2 * cut), axis=axis))
        if brightness is not None:
            first_b.append(np.take(brightness[index], range(cut), axis=axis))
            second_b.append(np.take(brightness[index], range(cut, 2 * cut), axis=axis))
    return (first, first_b or None), (second, second_b or None)


def pixel_distances(a, a_bright, b, b_bright) -> dict:
    """Energy distance of the abundance vectors, Wasserstein distance of the brightness (when both have it)."""
    out = {"abundance_energy": energy_distance(a, b)}
    if a_bright is not None and b_bright is not None:
        out["brightness_wasserstein"] = float(wasserstein_distance(a_bright, b_bright))
    return out


def map_gap(reference: tuple, sets: dict, pixels: int = 2000, seed: int = 0, max_lag: int = 40) -> dict:
    """Each of `sets` ({name: (maps, brightness or None)}) against `reference` ((maps, brightness)).

    Returns {"reference": {...}, "floor": {...}, name: {...}}: per set its map statistics (mean largest
    abundance, correlation length, brightness mean/std), its pixel distances to the reference and its
    autocorrelation profile up to `max_lag` pixels. Every set is compared on `pixels` drawn pixels with
    pixels drawn from the first spatial half of the reference's maps; the floor is the distance of those to
    pixels of the second half (`spatial_halves`)."""
    ref_maps, ref_bright = reference
    if any(min(m.shape[:2]) < 2 for m in ref_maps) or pixels < 2:
        raise UserError("the reference maps are too small to cut in halves for a distance floor")
    (first_maps, first_bright), (second_maps, second_bright) = spatial_halves(ref_maps, ref_bright)
    half = min(pixels, sum(m.shape[0] * m.shape[1] for m in first_maps))
    first, first_b = sample_pixels(first_maps, first_bright, half, seed)
    second, second_b = sample_pixels(second_maps, second_bright, half, seed + 1)

    def describe(maps, bright) -> dict:
        profile = correlation_profile(maps)  # over every map, computed once for the length and the curve
        return map_statistics(maps, bright, seed=seed, profile=profile) | {"profile": profile[:max_lag + 1].tolist()}

    out = {"reference": describe(ref_maps, ref_bright), "pixels": half, "seed": seed,
           "floor": pixel_distances(first, first_b, second, second_b)}
    for index, (name, (maps, bright)) in enumerate(sets.items()):
        k = ref_maps[0].shape[2]
        if maps[0].shape[2] != k:
            raise UserError(f"set {name}: {maps[0].shape[2]} endmembers, the reference has {k}")
        drawn, drawn_b = sample_pixels(maps, bright, half, seed + 2 + index)
        out[name] = describe(maps, bright) | pixel_distances(drawn, drawn_b, first, first_b)
    return out
