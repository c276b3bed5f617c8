"""The one min-max normaliser (per file, as the reference does)."""
import numpy as np


def minmax(array: np.ndarray, lo=None, hi=None) -> np.ndarray:
    """Scale to [0, 1] by the array's own min and max (or given ones).

    A constant array (max == min, where the reference divides by zero) maps to zeros instead of NaN.
    """
    array = np.asarray(array, dtype=np.float32)
    lo = float(array.min()) if lo is None else float(lo)
    hi = float(array.max()) if hi is None else float(hi)
    if hi - lo <= 1e-12:
        return np.zeros_like(array)
    return (array - lo) / (hi - lo)
