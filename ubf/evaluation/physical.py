"""Physical checks of synthetic HSIs, streamed file by file.

Under the linear mixing model abundances are non-negative and sum to one per pixel, and a synthetic
HSI is `End @ Abu` per pixel. Reported (all pixels of all files, not a sample):
- `abundance_sum_error_mean` / `_max`: |sum_k Abu - 1| per pixel, mean and worst;
- `abundance_negative_fraction`: fraction of abundance entries below 0;
- `mixing_rmse`: RMSE between `HSI` and `Abu @ End^T` (0 when the file is what it claims to be);
- `spectra_min`, `spectra_max`, `spectra_negative_fraction`, `spectra_above_one_fraction`: value range
  of the HSIs (reflectance-like data lives in [0, 1]);
- `files_with_abundances`: how many files had `Abu` (the abundance keys are absent without any).
"""
import numpy as np

from ubf.data.matio import endmember_matrix


class PhysicalStats:
    """Accumulates the checks over cubes (H, W, C), abundances (H, W, K) and endmembers (C, K)."""

    def __init__(self):
        self.values = 0
        self.negative = 0
        self.above_one = 0
        self.lo, self.hi = np.inf, -np.inf
        self.abundance_pixels = 0
        self.abundance_entries = 0
        self.abundance_negative = 0
        self.sum_error_total = 0.0
        self.sum_error_max = 0.0
        self.mixing_sq = 0.0
        self.mixing_values = 0
        self.files_with_abundances = 0

    def add(self, cube: np.ndarray, abundances: np.ndarray | None = None, endmembers: np.ndarray | None = None) -> None:
        cube = np.asarray(cube, dtype=np.float64)
        self.values += cube.size
        self.negative += int((cube < 0).sum())
        self.above_one += int((cube > 1).sum())
        self.lo, self.hi = min(self.lo, float(cube.min())), max(self.hi, float(cube.max()))
        if abundances is None:
            return
        abundances = np.asarray(abundances, dtype=np.float64)
        if abundances.ndim != 3 or abundances.shape[:2] != cube.shape[:2]:
            return
        self.files_with_abundances += 1
        error = np.abs(abundances.sum(axis=2) - 1.0)
        self.abundance_pixels += error.size
        self.sum_error_total += float(error.sum())
        self.sum_error_max = max(self.sum_error_max, float(error.max()))
        self.abundance_entries += abundances.size
        self.abundance_negative += int((abundances < 0).sum())
        if endmembers is not None:
            endmembers = endmember_matrix(endmembers).astype(np.float64)
            if endmembers.shape == (cube.shape[2], abundances.shape[2]):
                mixed = abundances @ endmembers.T
                self.mixing_sq += float(((mixed - cube) ** 2).sum())
                self.mixing_values += cube.size

    def result(self) -> dict[str, float]:
        if self.values == 0:
            return {}
        out = {"spectra_min": self.lo, "spectra_max": self.hi,
               "spectra_negative_fraction": self.negative / self.values,
               "spectra_above_one_fraction": self.above_one / self.values,
               "files_with_abundances": self.files_with_abundances}
        if self.abundance_pixels:
            out.update({"abundance_sum_error_mean": self.sum_error_total / self.abundance_pixels,
                        "abundance_sum_error_max": self.sum_error_max,
                        "abundance_negative_fraction": self.abundance_negative / self.abundance_entries})
        if self.mixing_values:
            out["mixing_rmse"] = float(np.sqrt(self.mixing_sq / self.mixing_values))
        return out
