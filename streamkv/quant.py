"""Pure quantization math: affine quantize/dequantize, scale ranges, bit packing, RoPE.

Every function here is a pure tensor function so the properties that matter (round-trip
error within half a step, exact packing) are tested directly. Shapes are stated at the
boundaries; `C` is the flattened channel axis (KV heads x head_dim).
"""

from __future__ import annotations

import torch

# Keep scales away from zero so an all-zero channel/token dequantizes to exact zeros.
EPS = 1e-8


def max_code(bits: int) -> int:
    return (1 << bits) - 1


# --- scale ranges -------------------------------------------------------------------------
def symmetric_range(absmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, step) mapping [-absmax, absmax] onto all 2**bits codes.

    Zero sits between two codes for even level counts; the error stays <= step / 2 for every
    in-range value, and one scale per group is stored (no zero point).
    """
    a = absmax.float().clamp_min(EPS)
    return -a, 2.0 * a / max_code(bits)


def minmax_range(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, step) of an asymmetric (zero-point) grid spanning [lo, hi]."""
    lo = lo.float()
    return lo, ((hi.float() - lo) / max_code(bits)).clamp_min(EPS)


# --- affine quantization -------------------------------------------------------------------
def quantize(x: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """codes = clamp(round((x - lo) / step), 0, 2**bits - 1) as uint8; lo/step broadcast to x."""
    q = torch.round((x.float() - lo) / step)
    return q.clamp_(0, max_code(bits)).to(torch.uint8)


def dequantize(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """code * step + lo, rounded twice (a multiply, then an add: no fused multiply-add, so
    every path that dequantizes gives the same bits)."""
    return codes.to(torch.float32, copy=True).mul_(step).add_(lo).to(dtype)


# --- bit packing (along the last axis) -------------------------------------------------------
def packed_size(n: int, bits: int) -> int:
    """Bytes per row of `n` codes: whole codes per byte for 1/2/4/8 bits; for other widths
    groups of 8 codes take exactly `bits` bytes."""
    if 8 % bits == 0:
        per = 8 // bits
        return (n + per - 1) // per
    return ((n + 7) // 8) * bits


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., n] (each < 2**bits) -> packed uint8 [..., packed_size(n, bits)]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} cannot be packed (allowed: 1..8)")
    n = codes.shape[-1]
    pad = (-n) % (8 // bits if 8 % bits == 0 else 8)
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    if 8 % bits == 0:  # 1, 2, 4, 8: whole codes per byte, a shift and a sum
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
        grouped = codes.reshape(*codes.shape[:-1], -1, per)
        return (grouped << shifts).sum(-1, dtype=torch.uint8)  # disjoint bits: sum == or
    # 3 bits (or any other width): expand to a bit stream, regroup by bytes.
    planes = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = (codes.unsqueeze(-1) >> planes) & 1  # [..., n, bits]
    stream = stream.reshape(*codes.shape[:-1], -1, 8)  # [..., n*bits/8, 8]
    weights = torch.arange(8, device=codes.device, dtype=torch.uint8)
    return (stream << weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: packed uint8 [..., packed_size(n, bits)] -> uint8 codes [..., n]."""
    if bits == 8:
        return packed[..., :n]
    if 8 % bits == 0:  # code k of each byte written straight to its slot: no broadcast temporaries
        per = 8 // bits
        codes = torch.empty(*packed.shape, per, dtype=torch.uint8, device=packed.device)
        for k in range(per):
            torch.bitwise_and(packed >> (k * bits) if k else packed, max_code(bits), out=codes[..., k])
        return codes.view(*packed.shape[:-1], -1)[..., :n]
    weights = torch.arange(8, device=packed.device, dtype=torch.uint8)
    stream = (packed.unsqueeze(-1) >> weights) & 1  # [..., bytes, 8]
    stream = stream.reshape(*packed.shape[:-1], -1, bits)  # [..., n_padded, bits]
    planes = torch.arange(bits, device=packed.device, dtype=torch.uint8)
    return (stream << planes).sum(-1, dtype=torch.uint8)[..., :n]


# --- segment reductions ---------------------------------------------------------------------
def segment_amax(x: torch.Tensor, segment_of: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Max over the channels of each segment: x [..., c], segment_of [c] -> [..., n_segments]."""
    out = torch.full((*x.shape[:-1], n_segments), float("-inf"), dtype=x.dtype, device=x.device)
    return out.scatter_reduce(-1, segment_of.expand_as(x), x, "amax", include_self=True)


def segment_amin(x: torch.Tensor, segment_of: torch.Tensor, n_segments: int) -> torch.Tensor:
    return -segment_amax(-x, segment_of, n_segments)


# --- RoPE ------------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, D] (as Llama's rotary embedding returns them)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def apply_rope_flat_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int) -> None:
    """In place, fp32 x [B, T, H*D] (flat heads) rotated as `apply_rope` rotates [B, H, T, D]
    (the same products and sums, so the same bits) without its full-size temporaries."""
    b, t, c = x.shape
    half = c // n_heads // 2
    v = x.view(b, t, n_heads, 2, half)
    x1, x2 = v[..., 0, :], v[..., 1, :]
    cos, sin = cos.float().unsqueeze(2), sin.float().unsqueeze(2)  # [B, T, 1, D]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    first = x1 * c1
    first.sub_(x2 * s1)  # x1 cos - x2 sin
    x1_sin = x1 * s2
    x2.mul_(c2).add_(x1_sin)  # x2 cos + x1 sin
    x1.copy_(first)


def invert_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The inverse rotation (angle -theta): recovers pre-RoPE keys from post-RoPE keys.

    Divides by cos^2 + sin^2 so RoPE variants that scale cos/sin (YaRN, LongRoPE) invert too.
    """
    cos, sin = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
    x = x.float()
    return (x * cos - rotate_half(x) * sin) / (cos * cos + sin * sin)
