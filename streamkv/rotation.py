"""Pure rotation math for the rotated peers (TurboQuant-style, QuaRot-style): Hadamard matrices,
seeded random signs, and per-head rotation of flattened [B, S, H*D] keys/values.

A randomized Hadamard R = H diag(s) / sqrt(d) (H the Sylvester Hadamard, s random +-1) is
orthogonal, costs nothing to store (it is regenerated from its seed), and spreads an outlier
channel over all d coordinates, which is what makes a per-token scalar quantizer work after it.
Only powers of two are built here: methods refuse other head sizes in `model_problems`.
"""

from __future__ import annotations

import torch


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard(d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sylvester Hadamard [d, d] of +-1 entries (H H^T = d I); d a power of two."""
    if not is_power_of_two(d):
        raise ValueError(f"d={d}: a Sylvester Hadamard matrix needs a power of two")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(d: int, seed: int) -> torch.Tensor:
    """d seeded +-1 values (float32), the same for the same seed on every machine (CPU generator)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (d,), generator=g).float() * 2 - 1


def randomized_hadamard(d: int, seed: int | None) -> torch.Tensor:
    """Orthogonal R [d, d] = H diag(signs) / sqrt(d); seed None: the plain normalized Hadamard."""
    h = hadamard(d) / d ** 0.5
    return h if seed is None else h * random_signs(d, seed)


def head_rotations(n_heads: int, d: int, seed: int | None) -> torch.Tensor:
    """[H, d, d]: one randomized Hadamard per KV head, seeds seed, seed+1, ... (None: all plain)."""
    return torch.stack([randomized_hadamard(d, None if seed is None else seed + h) for h in range(n_heads)])


def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """y = R_h x for every token and head: x [B, S, H*D], rotations [H, D, D] -> [B, S, H*D] fp32."""
    b, s, c = x.shape
    h, d, _ = rotations.shape
    return torch.einsum("bshj,hij->bshi", x.float().reshape(b, s, h, d), rotations).reshape(b, s, c)


def unrotate(y: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x = R_h^T y (the inverse of `rotate`, R orthogonal): [B, S, H*D] -> [B, S, H*D] fp32."""
    b, s, c = y.shape
    h, d, _ = rotations.shape
    return torch.einsum("bshi,hij->bshj", y.float().reshape(b, s, h, d), rotations).reshape(b, s, c)


__all__ = ["hadamard", "head_rotations", "is_power_of_two", "random_signs", "randomized_hadamard", "rotate",
           "unrotate"]
