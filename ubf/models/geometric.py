"""Classic geometric unmixing: endmember extraction (VCA, N-FINDR) and constrained abundances (FCLS).

numpy only, no I/O. Pixels are (N, C) rows, endmembers (C, K) columns, abundances (N, K) rows.

- `vca`: Vertex Component Analysis (Nascimento and Bioucas-Dias, IEEE TGRS 2005). The data are projected
  onto a k-dimensional signal subspace (projectively, onto the hyperplane through the data's mean
  direction, when the estimated SNR is high; by PCA to k - 1 dimensions plus a constant coordinate when
  it is low); then, k times, the pixels are projected onto a random direction orthogonal to the span of
  the endmembers found so far and the pixel with the extreme projection becomes the next endmember.
- `nfindr`: N-FINDR (Winter 1999): in the (k - 1)-dimensional PCA space, start from k random pixels and
  replace one vertex at a time by the pixel that maximises the volume of the simplex, until a sweep over
  the k vertices changes nothing.
- `fcls`: fully constrained least squares, min ||E a - y|| subject to a >= 0 and sum(a) = 1, for every
  pixel; `nnls_abundances`: the same without the sum-to-one constraint (the sum is then a per-pixel
  brightness). Both by one batched primal active-set solver (Lawson-Hanson style): pixels that share a
  passive set are solved together from the K x K Gram matrix, so 10^5 pixels take a few dozen small
  linear solves per iteration and a few iterations in all. The result is exact up to round-off (it stops
  when every Karush-Kuhn-Tucker multiplier is non-negative to `tol` times the scale of E^T E).
- `project_to_simplex`: the exact Euclidean projection onto the simplex (one home: ubf/core/simplex.py).

Both extractors return real pixels of the input (the indices say which) and are deterministic for a seed.
"""
import math

import numpy as np

from ubf.core.errors import UserError


def _check_pixels(pixels, k: int | None, who: str) -> np.ndarray:
    """(N, C) finite float64 pixels and a valid endmember count (None: no count to check), or a UserError."""
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise UserError(f"{who}: pixels must be an (N, C) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UserError(f"{who}: pixels must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise UserError(f"{who}: the pixels contain {bad} NaN/Inf values")
    count, bands = array.shape
    if k is None:
        return array
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise UserError(f"{who}: the number of endmembers must be a positive integer, got {k!r}")
    if k > count:
        raise UserError(f"{who}: {k} endmembers need at least {k} pixels, got {count}")
    if k > bands:
        raise UserError(f"{who}: {k} endmembers need at least {k} bands, got {bands}")
    return array


def _leading_eigenvectors(matrix: np.ndarray, count: int) -> np.ndarray:
    """(C, count) eigenvectors of a symmetric matrix for its largest eigenvalues, signs fixed.

    The sign of each vector is chosen so that its largest-magnitude entry is positive, so the result
    (and everything drawn in its coordinates) does not depend on the LAPACK build's sign convention.
    """
    _, vectors = np.linalg.eigh(matrix)
    vectors = vectors[:, ::-1][:, :count]
    flip = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(count)])
    return vectors * np.where(flip == 0, 1.0, flip)


def _closest_to_mean(pixels: np.ndarray) -> np.ndarray:
    """One endmember: the real pixel nearest the mean (the best single spectrum in least squares)."""
    return np.array([int(np.argmin(((pixels - pixels.mean(0)) ** 2).sum(1)))])


def estimate_snr(pixels, k: int) -> float:
    """VCA's signal-to-noise estimate in dB of (N, C) pixels for a k-dimensional signal subspace.

    P_y is the mean pixel energy, P_x that of the data projected onto the k leading principal components
    plus the mean's; SNR = 10 log10((P_x - k/C P_y) / (P_y - P_x)). +inf when the subspace holds all
    the energy (noise-free data, k = C), -inf when the estimate has no signal left.
    """
    pixels = _check_pixels(pixels, k, "estimate_snr")
    count, bands = pixels.shape
    mean = pixels.mean(0)
    centred = pixels - mean
    basis = _leading_eigenvectors(centred.T @ centred / count, k)
    power_y = float((pixels ** 2).sum() / count)
    power_x = float(((centred @ basis) ** 2).sum() / count + mean @ mean)
    noise = power_y - power_x
    signal = power_x - k / bands * power_y
    if noise <= 1e-12 * max(power_y, 1e-300):
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def vca(pixels, k: int, seed: int = 0, snr_db: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertex Component Analysis: (endmembers (C, k), indices (k,)) of k extreme pixels of (N, C) `pixels`.

    `snr_db` replaces the SNR estimate (it only decides between the projective and the PCA projection;
    the threshold is 15 + 10 log10(k) dB, as in the paper). k = 1 gives the pixel nearest the mean.
    """
    pixels = _check_pixels(pixels, k, "vca")
    if k == 1:
        chosen = _closest_to_mean(pixels)
        return pixels[chosen].T.copy(), chosen
    count = pixels.shape[0]
    snr = estimate_snr(pixels, k) if snr_db is None else float(snr_db)
    if snr > 15.0 + 10.0 * math.log10(k):
        # projective projection: the k-dim subspace through the origin, each pixel scaled onto the
        # hyperplane <x, u> = 1 (u the mean direction), which maps the data simplex to a simplex
        basis = _leading_eigenvectors(pixels.T @ pixels / count, k)
        coords = pixels @ basis
        scale = coords @ coords.mean(0)
        tiny = 1e-12 * max(float(np.abs(scale).max()), 1e-300)
        scale = np.where(np.abs(scale) < tiny, np.copysign(tiny, scale), scale)
        points = coords / scale[:, None]
    else:
        # PCA to k - 1 dimensions and a constant k-th coordinate at the largest radius
        mean = pixels.mean(0)
        centred = pixels - mean
        coords = centred @ _leading_eigenvectors(centred.T @ centred / count, k - 1)
        radius = float(np.sqrt((coords ** 2).sum(1)).max())
        points = np.concatenate([coords, np.full((count, 1), radius)], axis=1)
    rng = np.random.default_rng(seed)
    spanned = np.zeros((k, k))
    spanned[-1, 0] = 1.0  # the first direction is orthogonal to the constant coordinate
    chosen = []
    for step in range(k):
        direction = rng.standard_normal(k)
        direction -= spanned @ (np.linalg.pinv(spanned) @ direction)
        direction /= max(float(np.linalg.norm(direction)), 1e-300)
        projection = np.abs(points @ direction)
        projection[chosen] = -1.0  # a chosen pixel projects to 0; never pick it twice
        index = int(np.argmax(projection))
        chosen.append(index)
        spanned[:, step] = points[index]
    chosen = np.array(chosen)
    return pixels[chosen].T.copy(), chosen


def _cofactors(matrix: np.ndarray, column: int) -> np.ndarray:
    """Cofactors of `column` of a square matrix: det(M with that column set to v) = v @ cofactors."""
    size = matrix.shape[0]
    rest = np.delete(matrix, column, axis=1)
    signs = (-1.0) ** (np.arange(size) + column)
    return np.array([signs[row] * np.linalg.det(np.delete(rest, row, axis=0)) for row in range(size)])


def nfindr(pixels, k: int, seed: int = 0, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """N-FINDR: (endmembers (C, k), indices (k,)) of the k pixels spanning the largest simplex found.

    Works in the (k - 1)-dimensional PCA space; starts from k distinct random pixels (`seed`); each sweep
    replaces every vertex in turn by the pixel that maximises the volume with the other k - 1 fixed;
    stops after a sweep without a change or after `max_iter` sweeps. k = 1 gives the pixel nearest the mean.
    """
    pixels = _check_pixels(pixels, k, "nfindr")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise UserError(f"nfindr: max_iter must be a positive integer, got {max_iter!r}")
    if k == 1:
        chosen = _closest_to_mean(pixels)
        return pixels[chosen].T.copy(), chosen
    count = pixels.shape[0]
    centred = pixels - pixels.mean(0)
    coords = centred @ _leading_eigenvectors(centred.T @ centred / count, k - 1)
    lifted = np.concatenate([np.ones((count, 1)), coords], axis=1)  # volume = |det [1; z]| / (k-1)!
    rng = np.random.default_rng(seed)
    chosen = rng.choice(count, size=k, replace=False)
    vertices = lifted[chosen].T.copy()  # (k, k), one vertex per column
    volume = abs(float(np.linalg.det(vertices)))
    for _ in range(max_iter):
        changed = False
        for position in range(k):
            volumes = np.abs(lifted @ _cofactors(vertices, position))
            best = int(np.argmax(volumes))
            if volumes[best] > volume * (1.0 + 1e-10) and volumes[best] > 0.0:
                chosen[position], volume, changed = best, float(volumes[best]), True
                vertices[:, position] = lifted[best]
        if not changed:
            break
    return pixels[chosen].T.copy(), chosen


def _check_endmembers(endmembers, bands: int, who: str) -> np.ndarray:
    array = np.asarray(endmembers)
    if array.ndim != 2 or array.shape[0] != bands:
        raise UserError(f"{who}: endmembers must be a (C, K) array with C = {bands} bands, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UserError(f"{who}: endmembers must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if array.shape[1] < 1:
        raise UserError(f"{who}: no endmembers (K = 0)")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{who}: the endmembers contain NaN/Inf values")
    return array


def _passive_solutions(gram: np.ndarray, linear: np.ndarray, passive: np.ndarray, sum_to_one: bool) -> np.ndarray:
    """(n, K) minimisers of 0.5 a'Ga - b'a over a supported on each row's passive set (and sum a = 1).

    Rows with the same passive set share one (m + 1)-square KKT solve: [G_PP 1; 1' 0] [a; nu] = [b_P; 1]
    (without the last row and column for the non-negative problem).
    """
    count, k = linear.shape
    out = np.zeros((count, k))
    groups, inverse = np.unique(passive, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(groups)))])
    for group, mask in enumerate(groups):
        rows = order[bounds[group]:bounds[group + 1]]
        support = np.flatnonzero(mask)
        m = support.size
        if m == 0:
            continue
        system = gram[np.ix_(support, support)]
        rhs = linear[np.ix_(rows, support)].T
        if sum_to_one:
            system = np.block([[system, np.ones((m, 1))], [np.ones((1, m)), np.zeros((1, 1))]])
            rhs = np.vstack([rhs, np.ones((1, rows.size))])
        try:
            solution = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:  # dependent endmembers: one of the minimisers
            solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
        out[np.ix_(rows, support)] = solution[:m].T
    return out


def _active_set(gram: np.ndarray, linear: np.ndarray, sum_to_one: bool, tol: float, max_iter: int | None) -> np.ndarray:
    """min 0.5 a'Ga - b'a s.t. a >= 0 (and sum a = 1), every row of `linear` (N, K) at once.

    Primal active set: the iterate stays feasible; each pixel solves on its passive set, steps back to the
    boundary (dropping the blocking index) when that solution leaves the feasible set, else frees the
    index with the most negative multiplier, until none is below -tol * scale.
    """
    count, k = linear.shape
    if sum_to_one:  # the simplex's centre: feasible and > 0 everywhere
        current = np.full((count, k), 1.0 / k)
        passive = np.ones((count, k), dtype=bool)
    else:  # start at the unconstrained solution's positive part, a feasible point with a > 0 on its support
        unconstrained = _passive_solutions(gram, linear, np.ones((count, k), dtype=bool), False)
        passive = unconstrained > 0.0
        current = np.where(passive, unconstrained, 0.0)
    threshold = tol * max(float(np.abs(gram).max()), 1e-300)
    todo = np.arange(count)
    limit = max_iter if max_iter is not None else 10 * k + 50
    for _ in range(limit):
        if todo.size == 0:
            break
        a, free, b = current[todo], passive[todo], linear[todo]
        target = _passive_solutions(gram, b, free, sum_to_one)
        blocked = (free & (target <= 0.0)).any(axis=1)
        # infeasible: step from a towards the passive solution until an entry reaches zero
        if blocked.any():
            rows = np.flatnonzero(blocked)
            a_b, t_b, f_b = a[rows], target[rows], free[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(f_b & (t_b <= 0.0), a_b / (a_b - t_b), np.inf)
            hit = np.argmin(ratio, axis=1)
            step = np.clip(ratio[np.arange(rows.size), hit], 0.0, 1.0)
            a_b = a_b + step[:, None] * (t_b - a_b)
            a_b[np.arange(rows.size), hit] = 0.0
            f_b &= a_b > 0.0
            a[rows], free[rows] = np.where(f_b, a_b, 0.0), f_b
        # feasible: accept, then free the index with the most negative multiplier, if any
        settled = np.flatnonzero(~blocked)
        done = np.zeros(todo.size, dtype=bool)
        if settled.size:
            a_s, f_s = target[settled], free[settled]
            gradient = a_s @ gram - b[settled]
            if sum_to_one:  # on the passive set gradient + nu = 0; the multipliers are gradient + nu
                nu = -(gradient * f_s).sum(1) / np.maximum(f_s.sum(1), 1)
                gradient = gradient + nu[:, None]
            gradient[f_s] = np.inf
            enter = np.argmin(gradient, axis=1)
            finished = gradient[np.arange(settled.size), enter] >= -threshold
            f_s[np.flatnonzero(~finished), enter[~finished]] = True
            a[settled], free[settled] = a_s, f_s
            done[settled[finished]] = True
        current[todo], passive[todo] = a, free
        todo = todo[~done]
    return current


def _abundances(pixels, endmembers, sum_to_one: bool, tol: float, max_iter: int | None, who: str) -> np.ndarray:
    pixels = _check_pixels(pixels, None, who)
    endmembers = _check_endmembers(endmembers, pixels.shape[1], who)
    if not tol > 0:
        raise UserError(f"{who}: tol must be positive, got {tol}")
    return _active_set(endmembers.T @ endmembers, pixels @ endmembers, sum_to_one, tol, max_iter)


def fcls(pixels, endmembers, tol: float = 1e-10, max_iter: int | None = None) -> np.ndarray:
    """Fully constrained least-squares abundances (N, K) of (N, C) pixels for (C, K) endmembers.

    Per pixel: min ||E a - y||^2 with a >= 0 and sum(a) = 1, solved exactly (active set) in float64.
    `max_iter` bounds the active-set iterations (default 10 K + 50, never reached in the tests and scenes
    measured); a pixel still unsettled then keeps its last iterate, which is always feasible.
    """
    return _abundances(pixels, endmembers, True, tol, max_iter, "fcls")


def nnls_abundances(pixels, endmembers, tol: float = 1e-10, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least-squares abundances (N, K): min ||E a - y||^2 with a >= 0 only.

    Their per-pixel sum is a brightness: a pixel that is s times a mixture gets s times its abundances.
    """
    return _abundances(pixels, endmembers, False, tol, max_iter, "nnls_abundances")


def project_to_simplex(values) -> np.ndarray:
    """Closest point (Euclidean) on {a >= 0, sum a = 1} for every row of (N, K) values, exact (sort-based)."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] < 1:
        raise UserError(f"project_to_simplex: values must be an (N, K) array, got shape {array.shape}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise UserError("project_to_simplex: the values contain NaN/Inf")
    from ubf.core.simplex import project_to_simplex as project  # the one implementation (torch inside)
    return project(array, dim=-1)


__all__ = ["vca", "nfindr", "fcls", "nnls_abundances", "project_to_simplex", "estimate_snr"]
