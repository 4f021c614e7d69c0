"""Pure Lloyd-Max scalar quantizers: the levels that minimize E[(X - Q(X))^2] for a known density.

TurboQuant (Zandieh et al., 2025, arXiv 2504.19874) quantizes each coordinate of a randomly
rotated unit vector with the Lloyd-Max quantizer of that coordinate's law. For a uniform point
on the sphere S^{d-1} one coordinate has density f_d(t) ∝ (1 - t^2)^((d-3)/2) on [-1, 1] (a
scaled Beta((d-1)/2, (d-1)/2); ≈ N(0, 1/d) for large d), so the levels depend on d and the bits
only: computed once here, cached, never calibrated on data.

Lloyd's iteration on a fine grid of the density: boundaries halfway between levels, each level
the conditional mean of its cell, until the levels move less than `tol`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch


def lloyd_max(density: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float, n_levels: int, *,
              grid_points: int = 1 << 20, tol: float = 1e-12, max_iter: int = 50000) -> torch.Tensor:
    """Sorted levels [n_levels] (float64) of the MSE-optimal quantizer of `density` on [lo, hi].

    density: unnormalized, evaluated on float64 grid points. Cell masses and first moments are
    differences of prefix sums over the grid, so one iteration costs O(levels log grid) and the
    (slow, linear) convergence of Lloyd's iteration can run to a tight tolerance.
    """
    if n_levels < 1:
        raise ValueError(f"n_levels={n_levels} must be >= 1")
    step = (hi - lo) / grid_points
    t = lo + step * (torch.arange(grid_points, dtype=torch.float64) + 0.5)
    w = density(t).to(torch.float64).clamp_min(0)
    w = w / w.sum()
    zero = torch.zeros(1, dtype=torch.float64)
    cum_w, cum_wt = torch.cat([zero, torch.cumsum(w, 0)]), torch.cat([zero, torch.cumsum(w * t, 0)])
    # Start from the quantiles at the cell centres (a good, symmetric start for symmetric laws).
    targets = (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels
    levels = t[torch.searchsorted(cum_w[1:], targets).clamp_max(grid_points - 1)]
    ends = torch.tensor([0, grid_points])
    for _ in range(max_iter):
        cuts = torch.searchsorted(t, (levels[1:] + levels[:-1]) / 2)  # first grid point of each cell
        bounds = torch.cat([ends[:1], cuts, ends[1:]])
        mass = cum_w[bounds[1:]] - cum_w[bounds[:-1]]
        moment = cum_wt[bounds[1:]] - cum_wt[bounds[:-1]]
        new = torch.where(mass > 0, moment / mass.clamp_min(1e-300), levels)
        if (new - levels).abs().max().item() < tol:
            return new
        levels = new
    return levels


def gaussian_levels(bits: int) -> torch.Tensor:
    """Lloyd-Max levels of N(0, 1) at `bits` bits (float64; the classic table, for checks)."""
    return lloyd_max(lambda t: torch.exp(-t * t / 2), -10.0, 10.0, 1 << bits)


@lru_cache(maxsize=None)
def _sphere_levels(dim: int, bits: int) -> tuple[float, ...]:
    if dim == 2:  # arcsine law: the density has integrable poles at +-1; the grid copes
        density = lambda t: (1 - t * t).clamp_min(1e-300) ** -0.5  # noqa: E731
    else:
        density = lambda t: (1 - t * t).clamp_min(0) ** ((dim - 3) / 2)  # noqa: E731
    # For large d the law sits within a few 1/sqrt(d) of 0: a grid over [-1, 1] would waste its
    # points, so it spans 12 standard deviations (the mass outside is < 1e-30).
    half = min(1.0, 12.0 / math.sqrt(dim))
    return tuple(lloyd_max(density, -half, half, 1 << bits).tolist())


def sphere_levels(dim: int, bits: int) -> torch.Tensor:
    """Lloyd-Max levels [2**bits] (float32, sorted) for one coordinate of a uniform unit vector
    in R^dim (what a random rotation makes of any unit vector). Cached per (dim, bits)."""
    if dim < 2 or not 1 <= bits <= 8:
        raise ValueError(f"dim={dim} (allowed: >= 2) / bits={bits} (allowed: 1..8)")
    return torch.tensor(_sphere_levels(dim, bits), dtype=torch.float32)


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """uint8 index of the nearest of sorted `levels` [L] for every element of x (any shape)."""
    edges = ((levels[1:] + levels[:-1]) / 2).to(device=x.device, dtype=torch.float32)
    return torch.bucketize(x.float().contiguous(), edges).to(torch.uint8)


__all__ = ["gaussian_levels", "lloyd_max", "nearest_level", "sphere_levels"]
