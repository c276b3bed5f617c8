"""Data-driven starting points for the unmixing model (numpy only, no I/O).

- `farthest_points`: greedy mutually distant spectra (the `distant_pixels` option).
- `orthogonal_vertices`: ATGP / VCA-style vertex search -- each new endmember is the pixel with the
  largest component orthogonal to the span of those already chosen. Under the linear mixing model the
  pure pixels are the vertices of the data simplex, and this picks vertices of the convex hull.
- `greedy_cone_pixels`: real pixels chosen one at a time for how well non-negative combinations of them
  (the brightness "cone" model) reconstruct the data: each pick is the candidate that lowers the NNLS
  residual of an evaluation sample most. Unlike ATGP/VCA/N-FINDR, which take extreme (often rare or noisy)
  pixels, it takes the pixels that explain the scene, so the endmembers are spectra of the scene and the
  abundances stay sharp (docs/stage1_quality.md).
- `linear_simplex_init`: endmembers and an affine abundance map that reproduce the per-pixel linear
  regression (3 bands + 1 -> all bands) with abundances on the simplex, so that training starts at the
  linear bar instead of below it. See `ubf/models/unmixing.py` (`linear_skip`, `simplex="relu"`).
"""
import numpy as np

from ubf.models.geometric import nnls_abundances

# Outward face normals of a regular tetrahedron centred at the origin (they sum to zero).
TETRAHEDRON_NORMALS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / np.sqrt(3)


def farthest_points(pixels: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` mutually distant rows of (N, C) `pixels`, starting from the brightest."""
    pixels = np.asarray(pixels, dtype=np.float64)
    chosen = [int(np.argmax(np.linalg.norm(pixels, axis=1)))]
    distance = np.linalg.norm(pixels - pixels[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(pixels - pixels[chosen[-1]], axis=1))
    return np.array(chosen)


def orthogonal_vertices(pixels: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` rows of (N, C) `pixels` found by orthogonal projections (ATGP).

    The first is the pixel of largest norm; each next one maximises the norm of its residual after
    projection onto the span of the chosen spectra. A maximum of a convex function (the residual norm)
    over the data lies at a vertex of its convex hull, so every pick is an extreme pixel.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    chosen = [int(np.argmax(np.linalg.norm(pixels, axis=1)))]
    for _ in range(count - 1):
        basis, _ = np.linalg.qr(pixels[chosen].T)  # (C, k) orthonormal
        residual = pixels - (pixels @ basis) @ basis.T
        norms = np.linalg.norm(residual, axis=1)
        norms[chosen] = -1.0
        chosen.append(int(np.argmax(norms)))
    return np.array(chosen)


def enclosing_tetrahedron(points: np.ndarray, margin: float = 0.05, tries: int = 64,
                          seed: int = 0) -> np.ndarray:
    """(4, 3) vertices of a small tetrahedron that contains every row of (N, 3) `points`.

    The points are whitened; a regular tetrahedron's faces are pushed out to touch the data (plus
    `margin` of their distance from the centre), for `tries` random orientations; the orientation of
    least volume wins. Not the minimum-volume simplex, but tight in every face direction and cheap.
    """
    points = np.asarray(points, dtype=np.float64)
    centre = points.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov((points - centre).T) + 1e-9 * np.eye(3))
    whiten = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    unwhiten = np.linalg.inv(whiten)
    white = (points - centre) @ whiten
    rng = np.random.default_rng(seed)
    best, best_volume = None, np.inf
    for trial in range(tries):
        rotation = np.eye(3) if trial == 0 else np.linalg.qr(rng.normal(size=(3, 3)))[0]
        normals = TETRAHEDRON_NORMALS @ rotation
        offsets = (white @ normals.T).max(0) * (1.0 + margin) + 1e-9
        vertices = np.stack([np.linalg.solve(np.delete(normals, j, 0), np.delete(offsets, j))
                             for j in range(4)])
        vertices = vertices @ unwhiten + centre
        volume = abs(np.linalg.det(vertices[1:] - vertices[0]))
        if volume < best_volume:
            best, best_volume = vertices, volume
    return best


def barycentric_matrix(vertices: np.ndarray) -> np.ndarray:
    """(4, 4) matrix B with B @ [x; 1] = barycentric coordinates of x in the tetrahedron (4, 3)."""
    homogeneous = np.concatenate([vertices.T, np.ones((1, 4))], 0)  # columns [v_k; 1]
    return np.linalg.inv(homogeneous)


def linear_simplex_init(inputs: np.ndarray, targets: np.ndarray, count: int, margin: float = 1.0,
                        extra_share: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Endmembers (C, count) and affine abundance map (count, 4) that start the model at the linear bar.

    `inputs` (N, 3) and `targets` (N, C) are training pixels. Four endmembers sit at the linear
    regression's spectra at the vertices of a tetrahedron enclosing the inputs, with the barycentric
    coordinates as abundances. Further endmembers (count > 4) are the real training pixels that the
    regression explains worst (mutually distant residuals); together they take a constant share
    `extra_share` of every pixel, and the first four are shifted to compensate,
    e_i = (lin(v_i) - sum_j s_j e_j) / (1 - extra_share), so that `E @ a(x)` still equals the regression
    exactly for every enclosed `x`, and no endmember starts unused.
    """
    if count < 4:
        raise ValueError("linear_simplex_init needs at least 4 endmembers (a tetrahedron in RGB space)")
    inputs, targets = np.asarray(inputs, np.float64), np.asarray(targets, np.float64)
    design = np.concatenate([inputs, np.ones((len(inputs), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)  # (4, C)
    vertices = enclosing_tetrahedron(inputs, margin=margin, seed=seed)
    endmembers = np.concatenate([vertices, np.ones((4, 1))], 1) @ coef  # (4, C)
    mixing = barycentric_matrix(vertices)
    if count > 4:
        extra = targets[farthest_points(targets - design @ coef, count - 4)]  # starts at the worst-explained pixel
        shares = np.full(count - 4, extra_share / (count - 4))
        endmembers = (endmembers - shares @ extra) / (1.0 - extra_share)
        endmembers = np.concatenate([endmembers, extra], 0)
        extra_rows = np.zeros((count - 4, 4))
        extra_rows[:, 3] = shares
        mixing = np.concatenate([mixing * (1.0 - extra_share), extra_rows], 0)
    return endmembers.T, mixing


def greedy_cone_pixels(pixels: np.ndarray, count: int, seed: int = 0, targets: np.ndarray | None = None,
                       candidates: int = 300, spread: int = 150, evaluation: int = 1500, sweeps: int = 2) -> np.ndarray:
    """Indices of `count` rows of (N, C) `pixels` whose non-negative combinations best reconstruct `targets`.

    Candidates: `candidates` random pixels (the common materials), `spread` mutually distant pixels (the rare
    ones) and the 10 ATGP vertices; the
    residual is measured on `evaluation` random rows of `targets` (default: the pixels themselves; the
    linear map's predictions make the cone contain what a 3-band model can predict). Greedy forward
    selection: each step adds the candidate with the smallest mean squared NNLS residual. Seeded.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    targets = pixels if targets is None else np.asarray(targets, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pool = np.unique(np.concatenate([
        rng.choice(len(pixels), min(candidates, len(pixels)), replace=False),
        orthogonal_vertices(pixels, min(10, len(pixels))), farthest_points(pixels, min(spread, len(pixels)))]))
    sample = targets[rng.choice(len(targets), min(evaluation, len(targets)), replace=False)]
    def residual(indices: list[int]) -> float:
        ends = pixels[indices].T
        return float(np.mean((nnls_abundances(sample, ends) @ ends.T - sample) ** 2))

    chosen: list[int] = []
    for _ in range(count):
        errors = {int(i): residual(chosen + [int(i)]) for i in pool if int(i) not in chosen}
        chosen.append(min(errors, key=errors.get))
    current = residual(chosen)
    for _ in range(sweeps):
        improved = False
        for position in range(count):
            for index in pool:
                if int(index) in chosen:
                    continue
                trial = chosen[:position] + [int(index)] + chosen[position + 1:]
                error = residual(trial)
                if error < current - 1e-15:
                    chosen, current, improved = trial, error, True
        if not improved:
            break
    return np.array(chosen)
