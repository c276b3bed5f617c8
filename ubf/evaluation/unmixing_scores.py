"""What synthesis needs from stage 1, one score each (numpy/scipy, no I/O).

Abundance maps are (H, W, K) arrays (or (N, K) rows of pixels), endmembers (C, K) columns, HSIs (H, W, C)
or (N, C), all on one scale (the normalised scale the model reconstructs).

- map contrast: `max_abundance_mean` (mean over pixels of the largest abundance; 1/K for uniform maps,
  1 for pure pixels) and `spatial_std` (each endmember's standard deviation over the pixels of an
  image; 0 for a flat map), both per image, then the mean over images;
- endmember distance to the data: `NearestPixels` / `distance_to_data`, for every endmember the
  smallest spectral angle (degrees) to any real pixel, and the smallest Euclidean distance divided by
  the data's RMS pixel norm sqrt(mean ||y||^2);
- against a reference: `endmember_sad` (spectral angle distance after the one-to-one matching of least
  total angle) and `abundance_rmse` (after the one-to-one matching of least total squared error, and
  `merged`: each estimated map assigned to one reference map, maps of a group summed, the grouping of
  least error; the fair score when the model has more endmembers than the reference);
- `reference_abundances`, `reference_endmembers`: a stored reference (benchmark or Jasper-style layout)
  as (H, W, K) maps and (C, K) endmembers.

Reconstruction PSNR and SAM stay in ubf/core/metrics.py.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

from ubf.core.errors import UserError
from ubf.core.metrics import spectral_angles

MERGE_LIMIT = 200_000  # groupings tried at most by the merged abundance score (K_ref ** K)


def _maps(abundances) -> np.ndarray:
    """(H, W, K) or (N, K) -> (N, K) float64 pixels."""
    array = np.asarray(abundances, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"abundance maps must be (H, W, K) or (N, K), got shape {array.shape}")
    return array.reshape(-1, array.shape[-1])


def _images(maps) -> list:
    """One array or a list of arrays -> a list."""
    return [maps] if isinstance(maps, np.ndarray) else list(maps)


def max_abundance_mean(maps) -> float:
    """Mean over the pixels of each image of its largest abundance, then the mean over images."""
    return float(np.mean([_maps(image).max(axis=1).mean() for image in _images(maps)]))


def spatial_std(maps) -> np.ndarray:
    """(K,) standard deviation of each endmember's map over the pixels of an image, mean over images."""
    return np.mean([_maps(image).std(axis=0) for image in _images(maps)], axis=0)


class MapContrast:
    """Accumulates `max_abundance_mean` and `spatial_std` image by image (same K for all)."""

    def __init__(self):
        self.largest, self.spreads = [], []

    def add(self, abundances) -> None:
        pixels = _maps(abundances)
        if self.spreads and pixels.shape[1] != self.spreads[0].size:
            raise ValueError(f"abundance maps with {pixels.shape[1]} endmembers after {self.spreads[0].size}")
        self.largest.append(float(pixels.max(axis=1).mean()))
        self.spreads.append(pixels.std(axis=0))

    def result(self) -> dict:
        """max_abundance_mean, spatial_std_mean and spatial_std (K,) over the images added."""
        spread = np.mean(self.spreads, axis=0)
        return {"max_abundance_mean": float(np.mean(self.largest)), "spatial_std_mean": float(spread.mean()),
                "spatial_std": spread}


class NearestPixels:
    """For each endmember, the nearest real pixel by spectral angle and by Euclidean distance.

    Pixels arrive in any number of (H, W, C) or (N, C) blocks and are scanned `chunk` rows at a time; the
    winning pixel's angle is then recomputed with the stable formula of `core.metrics.spectral_angles`
    (a cosine near 1 loses the small angles). All-zero pixels have no angle and are skipped for it.
    """

    def __init__(self, endmembers, chunk: int = 65536):
        ends = np.asarray(endmembers, dtype=np.float64)
        if ends.ndim != 2:
            raise ValueError(f"endmembers must be (C, K), got shape {ends.shape}")
        self.ends, self.chunk = ends, chunk
        self.unit = ends / np.maximum(np.linalg.norm(ends, axis=0), 1e-300)
        k = ends.shape[1]
        self.best_cos, self.best_angle_pixel = np.full(k, -np.inf), np.zeros((k, ends.shape[0]))
        self.best_sq, self.energy, self.count = np.full(k, np.inf), 0.0, 0

    def add(self, pixels) -> None:
        pixels = np.asarray(pixels)
        pixels = pixels.reshape(-1, pixels.shape[-1])
        if pixels.shape[1] != self.ends.shape[0]:
            raise ValueError(f"pixels have {pixels.shape[1]} bands, the endmembers {self.ends.shape[0]}")
        end_sq = (self.ends ** 2).sum(0)
        for start in range(0, len(pixels), self.chunk):
            block = pixels[start:start + self.chunk].astype(np.float64)
            norms_sq = (block ** 2).sum(1)
            self.energy += float(norms_sq.sum())
            self.count += len(block)
            dots = block @ self.ends
            distances = np.maximum(norms_sq[:, None] - 2.0 * dots + end_sq[None, :], 0.0)
            self.best_sq = np.minimum(self.best_sq, distances.min(0))
            keep = norms_sq > 0
            if not keep.any():
                continue
            cosines = (block[keep] @ self.unit) / np.sqrt(norms_sq[keep])[:, None]
            winner = cosines.argmax(0)
            better = cosines[winner, np.arange(len(winner))] > self.best_cos
            self.best_cos = np.where(better, cosines[winner, np.arange(len(winner))], self.best_cos)
            self.best_angle_pixel[better] = block[keep][winner[better]]

    def result(self) -> dict:
        """sam_deg (K,), distance_rel (K,) (Euclidean distance / RMS pixel norm) and pixels (the count)."""
        if self.count == 0:
            raise ValueError("no pixels were added")
        found = np.isfinite(self.best_cos)
        angles = np.full(self.ends.shape[1], np.nan)
        if found.any():
            angles[found] = spectral_angles(self.ends.T[found], self.best_angle_pixel[found]).numpy()
        rms = np.sqrt(self.energy / self.count)
        return {"sam_deg": angles, "distance_rel": np.sqrt(self.best_sq) / max(rms, 1e-300), "pixels": self.count}


def distance_to_data(endmembers, hsis, chunk: int = 65536) -> dict:
    """`NearestPixels` over one HSI or a list of them (see there for the keys)."""
    nearest = NearestPixels(endmembers, chunk)
    for hsi in _images(hsis):
        nearest.add(hsi)
    return nearest.result()


def _angle_matrix(estimated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(K_est, K_ref) spectral angles in degrees between the columns of two (C, K) matrices."""
    k_est, k_ref = estimated.shape[1], reference.shape[1]
    left = np.repeat(estimated.T, k_ref, axis=0)
    right = np.tile(reference.T, (k_est, 1))
    return spectral_angles(left, right).numpy().reshape(k_est, k_ref)


def endmember_sad(estimated, reference) -> dict:
    """Spectral angle distance between (C, K_est) estimated and (C, K_ref) reference endmembers.

    One-to-one matching of least total angle (scipy's linear_sum_assignment); with K_est != K_ref only
    min(K_est, K_ref) pairs are matched. Returns sad_mean_deg, sad_deg (per reference endmember; NaN
    where unmatched) and match (the estimated index of each reference endmember, -1 where unmatched).
    """
    estimated, reference = np.asarray(estimated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if estimated.ndim != 2 or reference.ndim != 2 or estimated.shape[0] != reference.shape[0]:
        raise ValueError(f"endmembers must be (C, K) with the same C, got {estimated.shape} and {reference.shape}")
    angles = _angle_matrix(estimated, reference)
    rows, cols = linear_sum_assignment(angles)
    per_ref, match = np.full(reference.shape[1], np.nan), np.full(reference.shape[1], -1)
    per_ref[cols], match[cols] = angles[rows, cols], rows
    return {"sad_mean_deg": float(angles[rows, cols].mean()), "sad_deg": per_ref, "match": match}


class AbundanceErrors:
    """Squared errors between every estimated and every reference map, summed over images.

    One matching for all images (the model's endmembers are the same everywhere). `result()` gives:
    rmse (the matched maps, one-to-one, least total squared error), rmse_per_reference (K_ref,), match
    (estimated index per reference map, -1 unmatched), and, when K_est > K_ref, rmse_merged with
    merge_groups (the reference map each estimated map was summed into), or None when K_ref ** K_est
    exceeds MERGE_LIMIT.
    """

    def __init__(self):
        self.pair_sq = None      # (K_est, K_ref) sum over pixels of (a_i - r_j)^2
        self.gram = None         # (K_est, K_est) sum of a a'
        self.cross = None        # (K_est, K_ref) sum of a r'
        self.ref_sq = None       # (K_ref,) sum of r_j^2
        self.pixels = 0

    def add(self, estimated, reference) -> None:
        est, ref = _maps(estimated), _maps(reference)
        if est.shape[0] != ref.shape[0]:
            raise ValueError(f"{est.shape[0]} estimated pixels against {ref.shape[0]} reference pixels")
        if self.pair_sq is not None and (est.shape[1], ref.shape[1]) != self.pair_sq.shape:
            raise ValueError(f"maps of {est.shape[1]} / {ref.shape[1]} endmembers after "
                             f"{self.pair_sq.shape[0]} / {self.pair_sq.shape[1]}")
        pair_sq = np.zeros((est.shape[1], ref.shape[1]))
        for j in range(ref.shape[1]):
            pair_sq[:, j] = ((est - ref[:, j:j + 1]) ** 2).sum(0)
        parts = (pair_sq, est.T @ est, est.T @ ref, (ref ** 2).sum(0))
        if self.pair_sq is None:
            self.pair_sq, self.gram, self.cross, self.ref_sq = parts
        else:
            self.pair_sq, self.gram, self.cross, self.ref_sq = (a + b for a, b in
                                                                zip((self.pair_sq, self.gram, self.cross,
                                                                     self.ref_sq), parts))
        self.pixels += est.shape[0]

    def _merged(self):
        """(rmse, groups) of the best grouping of estimated maps onto reference maps (every group non-empty)."""
        k_est, k_ref = self.gram.shape[0], self.ref_sq.size
        if k_ref ** k_est > MERGE_LIMIT:
            return None, None
        groups = np.indices((k_ref,) * k_est).reshape(k_est, -1).T          # every assignment (G, K_est)
        members = np.eye(k_ref)[groups]                                       # (G, K_est, K_ref) one-hot
        members = members[(members.sum(axis=1) > 0).all(axis=1)]              # no reference map left empty
        # sum_j ||A w_j - r_j||^2 = sum_j (w_j' S w_j - 2 w_j' T_j + |r_j|^2), S = A'A, T = A'R
        quadratic = (members * np.einsum("ik,gkj->gij", self.gram, members)).sum(axis=(1, 2))
        error = quadratic - 2.0 * (members * self.cross).sum(axis=(1, 2)) + self.ref_sq.sum()
        best = int(np.argmin(error))
        rmse = float(np.sqrt(max(float(error[best]), 0.0) / (self.pixels * k_ref)))
        return rmse, members[best].argmax(axis=1)

    def result(self) -> dict:
        if self.pair_sq is None:
            raise ValueError("no abundance maps were added")
        rows, cols = linear_sum_assignment(self.pair_sq)
        k_ref = self.pair_sq.shape[1]
        per_ref, match = np.full(k_ref, np.nan), np.full(k_ref, -1)
        per_ref[cols] = np.sqrt(self.pair_sq[rows, cols] / self.pixels)
        match[cols] = rows
        out = {"rmse": float(np.sqrt(self.pair_sq[rows, cols].sum() / (self.pixels * len(rows)))),
               "rmse_per_reference": per_ref, "match": match, "rmse_merged": None, "merge_groups": None}
        if self.pair_sq.shape[0] > k_ref:
            out["rmse_merged"], out["merge_groups"] = self._merged()
        return out


def abundance_rmse(estimated, reference) -> dict:
    """`AbundanceErrors` of one pair of maps, (H, W, K_est) / (H, W, K_ref) or (N, K) (keys: see there)."""
    errors = AbundanceErrors()
    errors.add(estimated, reference)
    return errors.result()


def reference_abundances(array, height: int, width: int, where: str) -> np.ndarray:
    """A stored reference abundance array as (H, W, K) float64 for an (H, W) image, or a UserError.

    Accepted: (H, W, K) as stored by the unmixing benchmark (`S_GT`) and the demo (`Abu`); (K, H*W) or
    (H*W, K) with pixels in MATLAB column-major order, as `Y` of the benchmark and `A` of Jasper Ridge.
    `where` names the file and key in the message.
    """
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise UserError(f"{where}: reference abundances are not a real numeric array")
    values = values.astype(np.float64)
    pixels = height * width
    if values.ndim == 3 and values.shape[:2] == (height, width):
        maps = values
    elif values.ndim == 2 and pixels in values.shape:
        rows = values.T if values.shape[1] == pixels and values.shape[0] != pixels else values  # (H*W, K)
        maps = rows.reshape(width, height, -1).transpose(1, 0, 2)  # column-major pixel order
    else:
        raise UserError(f"{where}: reference abundances of shape {values.shape} do not fit a {height} x {width} "
                        "image (expected H x W x K, or K x H*W in column-major order)")
    if not np.all(np.isfinite(maps)):
        raise UserError(f"{where}: reference abundances contain NaN/Inf values")
    return maps


def reference_endmembers(array, bands: int, key: str, where: str) -> np.ndarray | None:
    """A stored reference endmember matrix as (C, K) float64, or None when it is not one (wrong rank or size).

    The benchmark's `GT` is K x C, Jasper Ridge's `M` C x K; the axis of length C decides, and for a square
    matrix the key does (`M`: columns are endmembers, anything else: rows).
    """
    values = np.asarray(array)
    if values.ndim != 2 or bands not in values.shape or not np.issubdtype(values.dtype, np.number):
        return None
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise UserError(f"{where}: reference endmembers contain NaN/Inf values")
    columns = values.shape[0] == bands and (values.shape[1] != bands or key == "M")
    return values if columns else values.T


__all__ = ["max_abundance_mean", "spatial_std", "MapContrast", "NearestPixels", "distance_to_data", "endmember_sad",
           "AbundanceErrors", "abundance_rmse", "reference_abundances", "reference_endmembers",
           "MERGE_LIMIT"]
