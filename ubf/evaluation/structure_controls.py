"""Synthetic-structure controls: abundance maps with spatial structure that no RGB image gave, matched
in their statistics to a set of inferred maps (numpy only).

The study's claim is that abundance maps inferred from RGB images carry *realistic* spatial structure.
These controls have structure of the same scale and the same per-pixel statistics but come from a
generator, so a downstream gain of RGB-derived maps over them is a gain of the RGB origin itself:

- `map_statistics(maps)`: per-endmember mean share, mean largest abundance (how pure pixels are), a
  correlation length (the lag in pixels where the radially averaged spatial autocorrelation, pooled
  over channels and maps with each channel weighted by its variance, falls to 1/e), and the brightness
  mean/std when brightness maps are given;
- `dead_leaves_maps`: occluding random disks, radii from a power law p(r) ~ r^-2 between r_min = 1 px
  and an r_max fitted (bisection) so that the correlation length matches (when even r_max = 4 x the map
  side falls short, the power is lowered instead). The power 2 spreads the visible area evenly over
  the radii; the scale-invariant 3 needs r_max near the map size for blobs of a few pixels, and then a
  few leaves cover whole maps: the correlation length of a set of 8 maps of 150 x 150 varied by
  +/- 15 % between draws, against +/- 3 % at 2. Each disk is filled with the
  abundance vector of a pixel drawn from the source maps (and that pixel's brightness), so shares and
  sharpness match by construction;
- `gaussian_field_maps`: one smooth Gaussian random field per endmember (Gaussian covariance, the
  filter width fitted so that the correlation length matches), mapped onto the simplex by
  softmax(z / T + b), the temperature T and offsets b fitted to the shares and the mean largest
  abundance; brightness, when the source has it, a log-normal field of the same smoothness with the
  source's mean and std.

`write_control_set(kind, ...)` writes either set as abundance files (`Abu` (H, W, K), `SR` = 2 Abu - 1,
optional `Bright` (H, W)) that `Evaluate.py downstream --abundances` and `Synthesis.py` read.
Maps are (H, W, K) float arrays, as in the files.
"""
import json
import os

import numpy as np

from ubf.core.errors import UserError
from ubf.core.fs import atomic_output, ensure_folder
from ubf.core.logs import get_logger
from ubf.data.hsi_dataset import list_mat_files
from ubf.data.matio import mat_keys, read_mat, write_mat

ALPHA = 2.0           # dead leaves: the power of the radius law (2: the visible area spreads evenly over radii)
R_MIN = 1.0           # dead leaves: smallest radius in pixels
E_FOLD = float(np.exp(-1.0))


# statistics --------------------------------------------------------------------------------------

def radial_autocovariance(channel: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocovariance of a mean-removed (H, W) channel at integer radii 0..max_lag: the unbiased estimate
    (each lag's sum divided by its number of pixel pairs), radially averaged (lags rounded to integers)."""
    h, w = channel.shape
    x = channel - channel.mean()
    shape = (2 * h, 2 * w)  # zero padding: no wrap-around
    power = np.fft.irfft2(np.abs(np.fft.rfft2(x, shape)) ** 2, shape)
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones_like(x), shape)) ** 2, shape)
    lags_y = np.fft.fftfreq(2 * h, 1.0 / (2 * h))[:, None]
    lags_x = np.fft.fftfreq(2 * w, 1.0 / (2 * w))[None, :]
    radius = np.rint(np.hypot(lags_y, lags_x)).astype(int)
    keep = (radius <= max_lag) & (pairs > 0.5)
    sums = np.bincount(radius[keep], (power / np.maximum(pairs, 1.0))[keep], minlength=max_lag + 1)
    return sums / np.maximum(np.bincount(radius[keep], minlength=max_lag + 1), 1)


def correlation_profile(maps: list[np.ndarray]) -> np.ndarray:
    """The spatial autocorrelation at radii 0..L (L = half the smallest side) pooled over every channel
    of every map: the summed autocovariances over the summed variances (a variance-weighted mean of the
    channels' autocorrelations; averaging before taking the 1/e lag keeps the estimate stable)."""
    max_lag = max(1, min(min(m.shape[:2]) for m in maps) // 2)
    total = np.zeros(max_lag + 1)
    for m in maps:
        a = np.asarray(m, dtype=np.float64)
        for k in range(a.shape[2]):
            if a[..., k].var() > 0:
                total += radial_autocovariance(a[..., k], max_lag)
    if not total[0] > 0:
        raise UserError("the abundance maps are constant: no correlation length")
    return total / total[0]


def e_folding_lag(profile: np.ndarray) -> float:
    """The first lag where the profile falls below 1/e (linear between integer lags); the last lag when
    it never does."""
    below = np.nonzero(profile < E_FOLD)[0]
    if not below.size:
        return float(len(profile) - 1)
    i = int(below[0])
    a, b = profile[i - 1], profile[i]
    return float(i - 1 + (a - E_FOLD) / (a - b)) if a != b else float(i)


def correlation_length(maps: list[np.ndarray]) -> float:
    """Blob size in pixels: the lag where the pooled autocorrelation (`correlation_profile`) falls to 1/e."""
    return e_folding_lag(correlation_profile(maps))


def _check_maps(maps) -> list[np.ndarray]:
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    if not maps:
        raise UserError("no abundance maps given")
    k = maps[0].shape[-1]
    for m in maps:
        if m.ndim != 3 or m.shape[2] != k:
            raise UserError(f"abundance maps must be (H, W, K) with one K; got {m.shape} beside K = {k}")
    return maps


def map_statistics(maps, brightness=None, max_maps: int = 64, seed: int = 0, profile=None) -> dict:
    """Shares, mean largest abundance, correlation length (on at most `max_maps` maps drawn with `seed`, or
    from `profile` when the caller already has the maps' `correlation_profile`) and, with `brightness` (one
    (H, W) map per abundance map), the brightness mean and std."""
    maps = _check_maps(maps)
    pixels = sum(m.shape[0] * m.shape[1] for m in maps)
    shares = sum(m.reshape(-1, m.shape[2]).sum(0, dtype=np.float64) for m in maps) / pixels
    mean_max = sum(float(m.max(axis=2).sum(dtype=np.float64)) for m in maps) / pixels
    if profile is None:
        picked = maps if len(maps) <= max_maps else \
            [maps[i] for i in sorted(np.random.default_rng(seed).choice(len(maps), max_maps, replace=False))]
        length = correlation_length(picked)
    else:
        length = e_folding_lag(np.asarray(profile))
    stats = {"k": int(maps[0].shape[2]), "n_maps": len(maps), "shares": shares.tolist(), "mean_max": mean_max,
             "correlation_length": length}
    if brightness is not None:
        values = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in brightness])
        stats.update(bright_mean=float(values.mean()), bright_std=float(values.std()))
    return stats


def pixel_pool(maps, brightness=None, cap: int = 200_000, seed: int = 0):
    """(abundance vectors (N, K), brightness (N,) or None): up to `cap` pixels drawn uniformly from all maps,
    clipped at 0 and renormalised to sum 1 (a no-op on maps already on the simplex)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1, m.shape[2]) for m in maps])
    bright = None if brightness is None else \
        np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in brightness])
    if len(flat) > cap:
        pick = np.random.default_rng([seed, 1]).choice(len(flat), cap, replace=False)
        flat, bright = flat[pick], None if bright is None else bright[pick]
    flat = np.clip(flat, 0.0, None)
    sums = flat.sum(1, keepdims=True)
    flat = np.where(sums > 0, flat / np.where(sums > 0, sums, 1.0), 1.0 / flat.shape[1])
    return flat, bright


def _size(size) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if h < 8 or w < 8:
        raise UserError(f"control maps of {h} x {w} pixels: at least 8 x 8")
    return int(h), int(w)


# dead leaves -------------------------------------------------------------------------------------

def power_law_radii(u: np.ndarray, r_min: float, r_max: float, alpha: float = ALPHA) -> np.ndarray:
    """Radii with density ~ r^-alpha on [r_min, r_max] from uniform numbers `u` (inverse CDF)."""
    if abs(alpha - 1.0) < 1e-12:
        return r_min * (r_max / r_min) ** u
    a, b = r_min ** (1 - alpha), r_max ** (1 - alpha)
    return (a + u * (b - a)) ** (1 / (1 - alpha))


def _power_integral(beta: float, a: float, b: float) -> float:
    return float(np.log(b / a)) if abs(beta - 1.0) < 1e-12 else (b ** (1 - beta) - a ** (1 - beta)) / (1 - beta)


def touching_disks(n: int, h: int, w: int, r_min: float, r_max: float, alpha: float, rng: np.random.Generator):
    """(centre y, centre x, radius) of `n` disks of a plane covered uniformly by disks with radii ~ r^-alpha,
    drawn among those whose bounding square meets the h x w canvas: a disk of radius r does with weight
    (h + 2r)(w + 2r), so the radius law is r^-alpha (h w + 2 (h + w) r + 4 r^2), a mixture of three power
    laws, and the centre is uniform on the canvas grown by r."""
    betas = (alpha, alpha - 1.0, alpha - 2.0)
    weights = np.array([h * w, 2.0 * (h + w), 4.0]) * [_power_integral(b, r_min, r_max) for b in betas]
    component = rng.choice(3, size=n, p=weights / weights.sum())
    u = rng.random(n)
    r = np.empty(n)
    for c, beta in enumerate(betas):
        chosen = component == c
        r[chosen] = power_law_radii(u[chosen], r_min, r_max, beta)
    return rng.uniform(-r, h + r), rng.uniform(-r, w + r), r


def dead_leaves_labels(h: int, w: int, r_max: float, rng: np.random.Generator, r_min: float = R_MIN,
                       alpha: float = ALPHA) -> np.ndarray:
    """(h, w) int labels of the visible disk at each pixel, disks falling front to back (the first disk
    to cover a pixel is the one seen there) until every pixel is covered; batches of disks of growing size."""
    labels = np.full(h * w, -1, dtype=np.int64)
    drawn, batch = 0, 8  # small first batches: when large disks dominate, a few cover the canvas
    for _ in range(200):
        if labels.min() >= 0:
            break
        batch = min(2 * batch, 16384)
        cy, cx, r = touching_disks(batch, h, w, r_min, r_max, alpha, rng)
        y0, y1 = np.maximum(np.ceil(cy - r), 0).astype(np.int64), np.minimum(np.floor(cy + r), h - 1).astype(np.int64)
        x0, x1 = np.maximum(np.ceil(cx - r), 0).astype(np.int64), np.minimum(np.floor(cx + r), w - 1).astype(np.int64)
        ny, nx = np.maximum(y1 - y0 + 1, 0), np.maximum(x1 - x0 + 1, 0)
        boxes = ny * nx
        disk = np.repeat(np.arange(batch), boxes)
        local = np.arange(boxes.sum()) - np.repeat(np.cumsum(boxes) - boxes, boxes)
        y = y0[disk] + local // np.maximum(nx[disk], 1)
        x = x0[disk] + local % np.maximum(nx[disk], 1)
        inside = (y - cy[disk]) ** 2 + (x - cx[disk]) ** 2 <= r[disk] ** 2
        pixel, disk = y[inside] * w + x[inside], disk[inside]
        free = labels[pixel] < 0
        pixel, disk = pixel[free], disk[free]
        order = np.lexsort((disk, pixel))  # by pixel, then the disk that fell first
        pixel, disk = pixel[order], disk[order]
        first = np.ones(len(pixel), dtype=bool)
        first[1:] = pixel[1:] != pixel[:-1]
        labels[pixel[first]] = drawn + disk[first]
        drawn += batch
    missing = labels < 0  # only after 200 batches: each left pixel its own leaf
    labels[missing] = drawn + np.arange(int(missing.sum()))
    return labels.reshape(h, w)


def _dead_leaves(h, w, r_max, pool, bright_pool, rng, alpha: float = ALPHA):
    labels = dead_leaves_labels(h, w, r_max, rng, alpha=alpha)
    _, inverse = np.unique(labels.ravel(), return_inverse=True)
    picks = rng.integers(0, len(pool), inverse.max() + 1)
    maps = pool[picks][inverse].reshape(h, w, pool.shape[1]).astype(np.float32)
    bright = None if bright_pool is None else bright_pool[picks][inverse].reshape(h, w).astype(np.float32)
    return maps, bright


def _bisect(measured, target: float, low: float, high: float, increasing: bool, iterations: int) -> float:
    """The point of [low, high] where `measured` crosses `target` (bisection; measured monotone)."""
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if (measured(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def fit_dead_leaves(target: float, pool, h: int, w: int, seed: int, trials: int = 8,
                    iterations: int = 12) -> tuple[float, float]:
    """(r_max, alpha) whose maps have the target correlation length, measured on `trials` maps of h x w
    drawn with the same random numbers at every try: r_max by bisection in log r_max between 1.5 r_min
    and 4 x the map side at alpha = ALPHA; when even the largest r_max falls short, r_max stays there and
    alpha is lowered (larger leaves more often) by bisection in [1.2, ALPHA]."""
    def measured(r_max, alpha):
        rng = np.random.default_rng([seed, 7])
        return correlation_length([_dead_leaves(h, w, r_max, pool, None, rng, alpha)[0] for _ in range(trials)])

    largest = 4.0 * max(h, w)
    if measured(largest, ALPHA) >= target:
        log_r = _bisect(lambda x: measured(float(np.exp(x)), ALPHA), target, np.log(1.5 * R_MIN), np.log(largest),
                        True, iterations)
        return float(np.exp(log_r)), ALPHA
    return largest, _bisect(lambda a: measured(largest, a), target, 1.2, ALPHA, False, iterations)


def dead_leaves_maps(stats_source_maps, count: int, size, seed: int, brightness=None) -> tuple[list, list | None, dict]:
    """`count` dead-leaves maps of `size` (side or (H, W)): (maps (H, W, K), brightness maps or None, fit)."""
    h, w = _size(size)
    stats = map_statistics(stats_source_maps, brightness, seed=seed)
    pool, bright_pool = pixel_pool(stats_source_maps, brightness, seed=seed)
    r_max, alpha = fit_dead_leaves(stats["correlation_length"], pool, h, w, seed)
    rng = np.random.default_rng([seed, 11])
    maps, brights = [], []
    for _ in range(count):
        m, b = _dead_leaves(h, w, r_max, pool, bright_pool, rng, alpha)
        maps.append(m)
        brights.append(b)
    return maps, brights if bright_pool is not None else None, {"source": stats, "r_min": R_MIN, "r_max": r_max,
                                                                 "alpha": alpha}


# Gaussian random fields --------------------------------------------------------------------------

def gaussian_fields(h: int, w: int, n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w, n) independent stationary Gaussian fields of unit variance whose covariance is Gaussian:
    white noise filtered by a Gaussian of std `scale` pixels (on a canvas padded by 4 scale, then cut)."""
    pad = int(np.ceil(4 * scale))
    hh, ww = h + 2 * pad, w + 2 * pad
    fy = np.fft.fftfreq(hh)[:, None]
    transfer = np.exp(-2 * np.pi ** 2 * scale ** 2 * (fy ** 2 + np.fft.rfftfreq(ww)[None, :] ** 2))
    # the field's variance is the mean of |H|^2 over the whole frequency grid (numpy's FFT scaling)
    std = np.sqrt(np.mean(np.exp(-4 * np.pi ** 2 * scale ** 2 * (fy ** 2 + np.fft.fftfreq(ww)[None, :] ** 2))))
    noise = rng.standard_normal((n, hh, ww))
    fields = np.fft.irfft2(np.fft.rfft2(noise) * transfer, (hh, ww)) / std
    return np.moveaxis(fields[:, pad:pad + h, pad:pad + w], 0, -1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_softmax(shares, mean_max: float, seed: int, samples: int = 10_000) -> tuple[float, np.ndarray]:
    """(T, b) so that softmax(z / T + b) of i.i.d. standard normal z (the fields' marginal at a pixel) has
    the given mean shares and mean largest abundance: offsets by fixed-point iteration, T by bisection
    in log T on [0.01, 100]."""
    shares = np.clip(np.asarray(shares, dtype=np.float64), 1e-6, None)
    shares = shares / shares.sum()
    z = np.random.default_rng([seed, 13]).standard_normal((samples, len(shares)))

    def offsets(t, b, rounds):
        for _ in range(rounds):
            b = b + np.log(shares / softmax(z / t + b).mean(0))
        return b

    low, high, b = np.log(1e-2), np.log(1e2), np.log(shares)
    for _ in range(16):  # a larger T is a softer mixture: a smaller mean largest abundance
        middle = 0.5 * (low + high)
        b = offsets(float(np.exp(middle)), b, 15)  # warm-started from the previous T's offsets
        if softmax(z / float(np.exp(middle)) + b).max(-1).mean() < mean_max:
            high = middle
        else:
            low = middle
    t = float(np.exp(0.5 * (low + high)))
    return t, offsets(t, b, 40)


def _field_maps(h, w, k, scale, t, b, rng):
    return softmax(gaussian_fields(h, w, k, scale, rng) / t + b).astype(np.float32)


def fit_field_scale(target: float, k: int, t: float, b, h: int, w: int, seed: int, trials: int = 4,
                    iterations: int = 4) -> float:
    """The filter width whose softmax maps have the target correlation length: the 1/e lag of a pointwise
    map of a Gaussian-covariance field grows in proportion to the width, so rescale and measure again."""
    scale = max(target / 2.0, 0.3)
    for _ in range(iterations):
        rng = np.random.default_rng([seed, 17])
        measured = correlation_length([_field_maps(h, w, k, scale, t, b, rng) for _ in range(trials)])
        scale = max(scale * target / max(measured, 1e-3), 0.3)
    return float(scale)


def gaussian_field_maps(stats_source_maps, count: int, size, seed: int, brightness=None
                        ) -> tuple[list, list | None, dict]:
    """`count` Gaussian-field maps of `size`: (maps (H, W, K), brightness maps or None, fit)."""
    h, w = _size(size)
    stats = map_statistics(stats_source_maps, brightness, seed=seed)
    k = stats["k"]
    t, b = fit_softmax(stats["shares"], stats["mean_max"], seed)
    scale = fit_field_scale(stats["correlation_length"], k, t, b, h, w, seed)
    rng = np.random.default_rng([seed, 19])
    maps = [_field_maps(h, w, k, scale, t, b, rng) for _ in range(count)]
    brights = None
    if brightness is not None:  # log-normal with the source's mean and std
        sigma2 = np.log1p((stats["bright_std"] / max(stats["bright_mean"], 1e-12)) ** 2)
        mu = np.log(max(stats["bright_mean"], 1e-12)) - sigma2 / 2
        brights = [np.exp(mu + np.sqrt(sigma2) * gaussian_fields(h, w, 1, scale, rng)[..., 0]).astype(np.float32)
                   for _ in range(count)]
    return maps, brights, {"source": stats, "temperature": t, "offsets": b.tolist(), "scale": scale}


# files -------------------------------------------------------------------------------------------

CONTROLS = {"dead_leaves": dead_leaves_maps, "gaussian_field": gaussian_field_maps}


def read_abundance_maps(folder: str) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(Abu (H, W, K) of every .mat file of `folder`, their Bright (H, W) when every file has one, else None):
    the source of a control, e.g. the maps of `Unmixing.py infer`."""
    maps, brights = [], []
    for path in list_mat_files(folder):
        keys = mat_keys(path)
        if "Abu" not in keys:
            raise UserError(f"{path}: no 'Abu' (found: {', '.join(keys)})")
        data = read_mat(path, ["Abu", "Bright"])
        abu = np.asarray(data["Abu"], dtype=np.float32)
        if abu.ndim != 3:
            raise UserError(f"{path}: 'Abu' has shape {abu.shape}, expected H x W x K")
        maps.append(abu)
        brights.append(np.asarray(data["Bright"], dtype=np.float32).reshape(abu.shape[:2]) if "Bright" in data else None)
    if not maps:
        raise UserError(f"{folder}: no .mat abundance files found")
    return maps, brights if all(b is not None for b in brights) else None


def write_control_set(kind: str, source_maps, out_dir: str, count: int, size, seed: int, brightness=None,
                      overwrite: bool = False) -> dict:
    """Generate `count` maps of the control `kind` matched to `source_maps` and write them into `out_dir`
    as `<kind>_NNNN.mat` (`Abu`, `SR` = 2 Abu - 1, `Bright` when the source has brightness) with
    `control.json` (the source's and the generated maps' statistics and the fitted parameters)."""
    if kind not in CONTROLS:
        raise UserError(f"structure control {kind!r}: expected one of {', '.join(CONTROLS)}")
    if count < 1:
        raise UserError(f"structure control count {count}: at least 1")
    names = [os.path.join(out_dir, f"{kind}_{i:04d}.mat") for i in range(count)]
    summary_path = os.path.join(out_dir, "control.json")
    existing = [p for p in names + [summary_path] if os.path.exists(p)]
    if existing and not overwrite:
        raise UserError(f"{existing[0]}: exists already ({len(existing)} files would be replaced); use overwrite")
    maps, brights, fit = CONTROLS[kind](source_maps, count, size, seed, brightness)
    ensure_folder(out_dir)
    for i, (path, abu) in enumerate(zip(names, maps)):
        variables = {"Abu": abu, "SR": (2.0 * abu - 1.0).astype(np.float32)}
        if brights is not None:
            variables["Bright"] = brights[i]
        write_mat(path, variables, overwrite=overwrite)
    summary = {"kind": kind, "count": count, "size": list(_size(size)), "seed": seed, **fit,
               "generated": map_statistics(maps, brights, seed=seed)}
    with atomic_output(summary_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    get_logger().info("structure control %s: %d maps of %s in %s; correlation length %.2f (source %.2f), mean "
                      "largest abundance %.3f (source %.3f)", kind, count, "x".join(map(str, _size(size))), out_dir,
                      summary["generated"]["correlation_length"], fit["source"]["correlation_length"],
                      summary["generated"]["mean_max"], fit["source"]["mean_max"])
    return summary
