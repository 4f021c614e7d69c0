"""Triton kernels for the GPU hot path: quantize+pack a chunk, unpack+dequantize the history.

Plain PyTorch turns one packed part into several full-size temporaries (unpacked uint8 codes,
fp32 codes, per-element scales gathered from segments and token groups, then a channel
scatter); on an H100 that costs about 3x the attention it feeds (../shared/ANCHORS.md). Each
kernel here reads the packed bytes (or the chunk) once and writes its result once, straight
into the destination buffer, at the destination channels.

The math is the same as `streamkv.quant` (the reference, tested on its own): codes are
round-half-to-even of (x - lo) / step with an IEEE division, clamped to [0, 2**bits - 1];
values are code * step + lo. Scales come in compact form, lo/step [B|1, G, S] in fp32 for
G token groups and S segments, computed by `streamkv.storage` exactly as the reference does.
Bit layout (`quant.pack_bits`): a row is a little-endian bit stream, code i occupies bits
[i*bits, (i+1)*bits), so 2/4/8-bit codes never straddle a byte and 3-bit codes may.

Triton ships with CUDA builds of PyTorch (`streamkv.methods.base.kernels_usable` decides when
these run). With TRITON_INTERPRET=1 set before Triton is imported they run on CPU tensors (the
tests do that), slowly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# --- shared pieces -------------------------------------------------------------------------
@triton.jit
def _group_index(t, TOKEN_GROUP: tl.constexpr):
    """Token -> row of the scale tensor: one row (0), per token (1) or per TOKEN_GROUP tokens."""
    g = t * 0
    if TOKEN_GROUP != 0:
        g = t // TOKEN_GROUP
    return g


@triton.jit
def _load_grid(lo_ptr, step_ptr, b, t, ch, mask, s_gb, s_gg, seg_ptr,
               HAS_SEG: tl.constexpr, TOKEN_GROUP: tl.constexpr):
    """(lo, step) fp32 of tokens t [BT] x stored channels ch [BC] of batch row b."""
    if HAS_SEG:
        seg = tl.load(seg_ptr + ch, mask=ch >= 0, other=0).to(tl.int32)
    else:
        seg = ch
    g = _group_index(t, TOKEN_GROUP)
    off = b * s_gb + g[:, None] * s_gg + seg[None, :]
    lo = tl.load(lo_ptr + off, mask=mask, other=0.0)
    step = tl.load(step_ptr + off, mask=mask, other=1.0)
    return lo, step


@triton.jit
def _round_half_even(q):
    r = tl.floor(q + 0.5)
    tie = (r - q) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


# --- quantize + pack -----------------------------------------------------------------------
@triton.jit
def _code_of(x_ptr, lo_ptr, step_ptr, seg_ptr, b, t, ch, mt, c, s_xb, s_xt, s_gb, s_gg,
             BITS: tl.constexpr, HAS_SEG: tl.constexpr, TOKEN_GROUP: tl.constexpr):
    """int32 codes of tokens t x channels ch; channels >= c (row padding) get code 0."""
    mc = ch < c
    m = mt[:, None] & mc[None, :]
    x = tl.load(x_ptr + b * s_xb + t[:, None] * s_xt + ch[None, :], mask=m, other=0.0).to(tl.float32)
    lo, step = _load_grid(lo_ptr, step_ptr, b, t, tl.where(mc, ch, 0), m, s_gb, s_gg, seg_ptr,
                          HAS_SEG, TOKEN_GROUP)
    q = _round_half_even(tl.math.div_rn(x - lo, step))
    q = tl.minimum(tl.maximum(q, 0.0), (1 << BITS) - 1.0)
    return tl.where(m, q.to(tl.int32), 0)


@triton.jit
def _quantize_pack_kernel(x_ptr, out_ptr, lo_ptr, step_ptr, seg_ptr,
                          T, c, P, s_xb, s_xt, s_ob, s_ot, s_gb, s_gg,
                          BITS: tl.constexpr, HAS_SEG: tl.constexpr, TOKEN_GROUP: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    n_tb = (T + BLOCK_T - 1) // BLOCK_T
    pid = tl.program_id(0)
    b = pid // n_tb
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    j = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # output byte of the row
    mt = t < T
    acc = tl.zeros([BLOCK_T, BLOCK_P], dtype=tl.int32)
    if 8 % BITS == 0:  # whole codes per byte: code k of byte j sits at bits [k*BITS, ...)
        for k in tl.static_range(8 // BITS):
            code = _code_of(x_ptr, lo_ptr, step_ptr, seg_ptr, b, t, j * (8 // BITS) + k, mt, c,
                            s_xb, s_xt, s_gb, s_gg, BITS, HAS_SEG, TOKEN_GROUP)
            acc |= code << (k * BITS)
    else:  # bit k of byte j is bit (8j+k) % BITS of code (8j+k) // BITS
        for k in tl.static_range(8):
            bit = j * 8 + k
            code = _code_of(x_ptr, lo_ptr, step_ptr, seg_ptr, b, t, bit // BITS, mt, c,
                            s_xb, s_xt, s_gb, s_gg, BITS, HAS_SEG, TOKEN_GROUP)
            acc |= ((code >> (bit % BITS)[None, :]) & 1) << k
    m = mt[:, None] & (j < P)[None, :]
    tl.store(out_ptr + b * s_ob + t[:, None] * s_ot + j[None, :], acc.to(tl.uint8), mask=m)


# --- unpack + dequantize ---------------------------------------------------------------------
@triton.jit
def _dequantize_kernel(data_ptr, out_ptr, lo_ptr, step_ptr, seg_ptr, chan_ptr,
                       T, c, P, start, s_db, s_dt, s_ob, s_ot, s_gb, s_gg,
                       BITS: tl.constexpr, HAS_SEG: tl.constexpr, HAS_CHAN: tl.constexpr,
                       TOKEN_GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    n_tb = (T + BLOCK_T - 1) // BLOCK_T
    pid = tl.program_id(0)
    b = pid // n_tb
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = ch < c
    m = (t < T)[:, None] & mc[None, :]
    bitpos = ch * BITS
    byte = bitpos >> 3
    row = data_ptr + b * s_db + t[:, None] * s_dt
    word = tl.load(row + byte[None, :], mask=m, other=0).to(tl.int32)
    if 8 % BITS != 0:  # a code may continue in the next byte
        nxt = tl.load(row + byte[None, :] + 1, mask=m & (byte + 1 < P)[None, :], other=0)
        word |= nxt.to(tl.int32) << 8
    code = (word >> (bitpos & 7)[None, :]) & ((1 << BITS) - 1)
    ch_safe = tl.where(mc, ch, 0)
    lo, step = _load_grid(lo_ptr, step_ptr, b, t, ch_safe, m, s_gb, s_gg, seg_ptr, HAS_SEG, TOKEN_GROUP)
    val = code.to(tl.float32) * step + lo
    if HAS_CHAN:
        dest = tl.load(chan_ptr + ch_safe, mask=mc, other=0).to(tl.int32)
    else:
        dest = ch
    tl.store(out_ptr + b * s_ob + (start + t)[:, None] * s_ot + dest[None, :],
             val.to(out_ptr.dtype.element_ty), mask=m)


# --- RoPE in place -----------------------------------------------------------------------------
@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, T, s_xb, s_xt, s_cb, s_ct,
                 HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    n_tb = (T + BLOCK_T - 1) // BLOCK_T
    pid = tl.program_id(0)
    b = pid // n_tb
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1)
    i = tl.arange(0, BLOCK_H)
    half: tl.constexpr = HEAD_DIM // 2
    m = (t < T)[:, None] & (i < half)[None, :]
    xs = x_ptr + b * s_xb + t[:, None] * s_xt + h * HEAD_DIM + i[None, :]
    cs = b * s_cb + t[:, None] * s_ct + i[None, :]
    x1 = tl.load(xs, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(xs + half, mask=m, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + cs, mask=m, other=0.0)
    c2 = tl.load(cos_ptr + cs + half, mask=m, other=0.0)
    s1 = tl.load(sin_ptr + cs, mask=m, other=0.0)
    s2 = tl.load(sin_ptr + cs + half, mask=m, other=0.0)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): as quant.apply_rope.
    o1 = x1 * c1 + (-x2) * s1
    o2 = x2 * c2 + x1 * s2
    ty = x_ptr.dtype.element_ty
    tl.store(xs, o1.to(ty), mask=m)
    tl.store(xs + half, o2.to(ty), mask=m)


# --- launchers -------------------------------------------------------------------------------
_BLOCK_T = 16


def _grid_strides(lo: torch.Tensor) -> tuple[int, int]:
    """Strides (batch, group) of a compact [B|1, G, S] grid; size-1 dims broadcast (stride 0)."""
    if lo.stride(-1) != 1:
        raise ValueError("scale grids must be contiguous along segments")
    return (lo.stride(0) if lo.shape[0] > 1 else 0), (lo.stride(1) if lo.shape[1] > 1 else 0)


def _token_group(token_group: int | None) -> int:
    return 0 if token_group is None else token_group


def quantize_pack(x: torch.Tensor, bits: int, lo: torch.Tensor, step: torch.Tensor,
                  segment_of: torch.Tensor | None, token_group: int | None,
                  packed: int) -> torch.Tensor:
    """x [B, T, c] (channel stride 1) -> packed uint8 [B, T, packed], as
    pack_bits(quantize(x, expand(lo), expand(step), bits), bits)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    b, t, c = x.shape
    out = torch.empty(b, t, packed, dtype=torch.uint8, device=x.device)
    if out.numel() == 0:
        return out
    lo, step = lo.float().contiguous(), step.float().contiguous()
    s_gb, s_gg = _grid_strides(lo)
    block_p = min(64, triton.next_power_of_2(packed))
    grid = (b * triton.cdiv(t, _BLOCK_T), triton.cdiv(packed, block_p))
    seg = segment_of if segment_of is not None else lo  # unused pointer when HAS_SEG is False
    _quantize_pack_kernel[grid](x, out, lo, step, seg, t, c, packed, x.stride(0), x.stride(1),
                                out.stride(0), out.stride(1), s_gb, s_gg,
                                BITS=bits, HAS_SEG=segment_of is not None,
                                TOKEN_GROUP=_token_group(token_group),
                                BLOCK_T=_BLOCK_T, BLOCK_P=block_p)
    return out


def dequantize_into(out: torch.Tensor, start: int, data: torch.Tensor, bits: int, n_channels: int,
                    lo: torch.Tensor, step: torch.Tensor, segment_of: torch.Tensor | None,
                    token_group: int | None, channels: torch.Tensor | None) -> None:
    """out[:, start:start+T, channels] = dequantize(unpack_bits(data)) for out [B, T_out, C]."""
    if out.stride(-1) != 1 or data.stride(-1) != 1:
        raise ValueError("dequantize_into needs channel-contiguous tensors")
    b, t, p = data.shape
    if b * t * n_channels == 0:
        return
    lo, step = lo.float().contiguous(), step.float().contiguous()
    s_gb, s_gg = _grid_strides(lo)
    block_c = min(128, triton.next_power_of_2(n_channels))
    grid = (b * triton.cdiv(t, _BLOCK_T), triton.cdiv(n_channels, block_c))
    _dequantize_kernel[grid](data, out, lo, step,
                             segment_of if segment_of is not None else lo,
                             channels if channels is not None else lo,
                             t, n_channels, p, start, data.stride(0), data.stride(1),
                             out.stride(0), out.stride(1), s_gb, s_gg,
                             BITS=bits, HAS_SEG=segment_of is not None,
                             HAS_CHAN=channels is not None, TOKEN_GROUP=_token_group(token_group),
                             BLOCK_T=_BLOCK_T, BLOCK_C=block_c)


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> None:
    """In place: x [B, T, H*head_dim] (channel stride 1) rotated by cos/sin [B|1, T, head_dim]."""
    b, t, c = x.shape
    if x.stride(-1) != 1:
        raise ValueError("rope_ needs a channel-contiguous tensor")
    if b * t == 0:
        return
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    s_cb = cos.stride(0) if cos.shape[0] > 1 else 0
    grid = (b * triton.cdiv(t, _BLOCK_T), c // head_dim)
    _rope_kernel[grid](x, cos, sin, t, x.stride(0), x.stride(1), s_cb, cos.stride(1),
                       HEAD_DIM=head_dim, BLOCK_T=_BLOCK_T,
                       BLOCK_H=triton.next_power_of_2(head_dim // 2))
