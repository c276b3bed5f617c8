"""Euclidean projection onto the probability simplex, shared by diffusion sampling and synthesis.

Abundances under the linear mixing model are non-negative and sum to one per pixel. Sampled or
edited abundances drift off that set; `project_to_simplex` returns, for every vector along `dim`,
the closest point (in the Euclidean sense) with entries >= 0 summing to 1. This is the exact
sort-and-threshold algorithm (Held, Wolfe and Crowder 1974; Duchi et al. 2008): with `u` sorted in
decreasing order and `c_j` its cumulative sums, `rho` is the largest `j` with
`u_j - (c_j - 1) / j > 0`, `theta = (c_rho - 1) / rho`, and the projection is `max(v - theta, 0)`.
"""
import numpy as np
import torch


def _project_last_dim(v: torch.Tensor) -> torch.Tensor:
    """Project every row of a (..., K) floating tensor onto the simplex along the last axis."""
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = torch.cumsum(u, dim=-1) - 1.0
    j = torch.arange(1, k + 1, dtype=v.dtype, device=v.device)
    # the condition holds for j = 1..rho and fails after, so counting it gives rho
    rho = (u - cumulative / j > 0).sum(dim=-1, keepdim=True).clamp(min=1)
    theta = torch.gather(cumulative, -1, rho - 1) / rho.to(v.dtype)
    return torch.clamp(v - theta, min=0.0)


def project_to_simplex(x, dim: int = -1):
    """Closest point on {a >= 0, sum(a) = 1} for every vector along `dim`.

    Accepts a torch tensor (any device, floating dtype; returned with the same device and dtype) or a
    numpy array (returned as numpy of the same floating dtype; integer input becomes float64).
    Typical shapes: abundances (H, W, K) with dim=-1, or (N, K, H, W) with dim=1.
    """
    is_numpy = not isinstance(x, torch.Tensor)
    if is_numpy:
        array = np.asarray(x)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        tensor = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    if tensor.ndim == 0:
        raise ValueError("project_to_simplex needs at least one axis")
    if tensor.shape[dim] == 0:
        raise ValueError("project_to_simplex: the simplex axis is empty")
    moved = tensor.movedim(dim, -1)
    # half precision loses the cumulative sums; compute in float32 at least
    work = moved.float() if moved.dtype in (torch.float16, torch.bfloat16) else moved
    projected = _project_last_dim(work).to(moved.dtype).movedim(-1, dim)
    if is_numpy:
        return projected.numpy()
    return projected.contiguous()
