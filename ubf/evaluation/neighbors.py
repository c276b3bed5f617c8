"""Nearest-neighbour searches in torch with bounded memory.

Every search walks queries and references in chunks, so the largest temporary is one
(query_chunk, reference_chunk) matrix whatever the set sizes: hundreds of 256 x 256 HSIs reduce to
pixel samples of 10^4-10^5 spectra, and their pairwise matrices never exist whole.
"""
import torch

DEFAULT_CHUNK = 4096


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of (N, C) scaled to unit length (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def max_cosine(queries: torch.Tensor, references: torch.Tensor, chunk: int = DEFAULT_CHUNK,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """For each (N, C) query, the highest cosine similarity to any (M, C) reference and its index.

    Returns (values (N,), indices (N,)) on the CPU. Memory: one chunk x chunk similarity block.
    """
    device = torch.device(device)
    refs = l2_normalise(references.to(device, torch.float32))
    best = torch.full((queries.shape[0],), -2.0)
    where = torch.zeros(queries.shape[0], dtype=torch.long)
    for q0, q1 in _chunks(queries.shape[0], chunk):
        q = l2_normalise(queries[q0:q1].to(device, torch.float32))
        run_val = torch.full((q1 - q0,), -2.0, device=device)
        run_idx = torch.zeros(q1 - q0, dtype=torch.long, device=device)
        for r0, r1 in _chunks(refs.shape[0], chunk):
            value, index = (q @ refs[r0:r1].T).max(dim=1)
            better = value > run_val
            run_val = torch.where(better, value, run_val)
            run_idx = torch.where(better, index + r0, run_idx)
        best[q0:q1] = run_val.clamp(-1.0, 1.0).cpu()
        where[q0:q1] = run_idx.cpu()
    return best, where


def kth_neighbour_distance(points: torch.Tensor, k: int, chunk: int = DEFAULT_CHUNK,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Distance from each of (N, C) points to its k-th nearest other point of the same set, (N,).

    The point itself is excluded by index, so duplicates count as neighbours at distance 0.
    """
    n = points.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k = {k} needs 1 <= k < number of points ({n})")
    device = torch.device(device)
    x = points.to(device, torch.float64)
    sq = (x * x).sum(dim=1)
    out = torch.empty(n, dtype=torch.float64)
    for q0, q1 in _chunks(n, chunk):
        running = torch.full((q1 - q0, k), float("inf"), dtype=torch.float64, device=device)
        rows = torch.arange(q0, q1, device=device)
        for r0, r1 in _chunks(n, chunk):
            # |r|^2 - 2 q.r in one fused call: the squared distance less |q|^2, which ranks alike
            partial = torch.addmm(sq[None, r0:r1], x[q0:q1], x[r0:r1].T, alpha=-2.0)
            inside = (rows >= r0) & (rows < r1)
            if inside.any():  # the query itself sits in this reference chunk
                partial[inside.nonzero().squeeze(1), rows[inside] - r0] = float("inf")
            merged = torch.cat([running, partial.topk(min(k, r1 - r0), dim=1, largest=False).values], dim=1)
            running = merged.topk(k, dim=1, largest=False).values
        out[q0:q1] = (running[:, -1] + sq[q0:q1]).clamp_min(0.0).sqrt().cpu()
    return out


def within_any_ball(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                    chunk: int = DEFAULT_CHUNK, device: torch.device | str = "cpu",
                    tolerance: float = 1e-9) -> torch.Tensor:
    """(N,) bool: does each (N, C) query lie in some ball of (M, C) centres with (M,) radii?

    `tolerance` (on squared distances) absorbs round-off, so a query equal to a centre counts as inside
    even when that centre's radius is 0.
    """
    device = torch.device(device)
    c = centres.to(device, torch.float64)
    # |q - c|^2 <= r^2  <=>  (|c|^2 - r^2) - 2 q.c <= -|q|^2 : one fused matrix call per block
    offset = (c * c).sum(dim=1) - radii.to(device, torch.float64) ** 2 - tolerance
    inside = torch.zeros(queries.shape[0], dtype=torch.bool)
    for q0, q1 in _chunks(queries.shape[0], chunk):
        q = queries[q0:q1].to(device, torch.float64)
        bound = -(q * q).sum(dim=1, keepdim=True)
        hit = torch.zeros(q1 - q0, dtype=torch.bool, device=device)
        for r0, r1 in _chunks(c.shape[0], chunk):
            hit |= (torch.addmm(offset[None, r0:r1], q, c[r0:r1].T, alpha=-2.0) <= bound).any(dim=1)
            if bool(hit.all()):
                break
        inside[q0:q1] = hit.cpu()
    return inside
