"""Attention read straight from the packed codes (Triton): decode-step scores and weighted
values per packed part, with no dequantized copy of the history.

A block's keys (and values) are packed parts, each a subset of the flattened channels at one
bit width (`streamkv.storage.PackedPart`). Both halves of attention split over such subsets:

- scores: q . k = sum over the parts of q[ch] . k[ch]; for keys stored before RoPE the
  rotation moves to the query, per history token t (RoPE pairs channel e with its partner
  p = e +- D/2 of the same head): q . R_t k = sum_e k[e] w_t[e] with
  w_t[e] = q[e] cos_t[e] + s(e) q[p] sin_t[p], s = +1 for e < D/2, -1 above
  (transformers' rotate_half convention, as `quant.apply_rope`);
- values: sum_t p[t] v_t[ch] lands on the part's own channels.

`part_scores_` adds one part's contribution to a window's scores [B, Hkv, R, t] and
`part_values_` one part's to the weighted values [B, Hkv, R, D], for the R = G*q stacked
query rows of each KV head (GQA: every query head of a KV head in one program). Codes are
unpacked and dequantized in registers exactly as `kernels.dequantize_into` writes them (same
compact (lo, step) grid), so the result equals decode + matmul up to the order of the fp32
sums. A part's channels are sorted (they come from `mask.nonzero()`), so each head's are one
contiguous range: `head_ranges` finds it on the device, no host sync.

One launch per part and window, not yet one per layer over a block table (the issue's
target); `streamkv.layers.PackedLayer.attend` uses these on the fused path for layers whose
blocks hold only affine-coded parts (streamkv, calibrated, int8, int4_token, KIVI's packed
tokens) and falls back to decoding each window for the others (rotated or codebook storage).
With TRITON_INTERPRET=1 set before Triton is imported they run on CPU tensors (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamkv.kernels import _grid_strides, _load_grid, _token_group


@triton.jit
def _codes(data_ptr, b, t, ch, m, P, s_db, s_dt, BITS: tl.constexpr):
    """fp32 codes [BT, BC] of tokens t x stored channels ch (little-endian bit stream rows)."""
    bitpos = ch * BITS
    byte = bitpos >> 3
    row = data_ptr + b * s_db + t[:, None] * s_dt
    word = tl.load(row + byte[None, :], mask=m, other=0).to(tl.int32)
    if 8 % BITS != 0:  # a 3-bit code may continue in the next byte
        nxt = tl.load(row + byte[None, :] + 1, mask=m & (byte + 1 < P)[None, :], other=0)
        word |= nxt.to(tl.int32) << 8
    return ((word >> (bitpos & 7)[None, :]) & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _part_scores_kernel(scores_ptr, q_ptr, data_ptr, lo_ptr, step_ptr, seg_ptr, chan_ptr, range_ptr,
                        cos_ptr, sin_ptr, T, R, P, s_sb, s_sh, s_sr, s_qb, s_qh, s_qr, s_db, s_dt,
                        s_gb, s_gg, s_cb, s_ct,
                        BITS: tl.constexpr, HAS_SEG: tl.constexpr, HAS_CHAN: tl.constexpr,
                        TOKEN_GROUP: tl.constexpr, PRE_ROPE: tl.constexpr, HEAD_DIM: tl.constexpr,
                        N_HEADS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // N_HEADS
    h = pid % N_HEADS
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    mt, mr = t < T, r < R
    first = tl.load(range_ptr + h)
    last = tl.load(range_ptr + h + 1)
    half: tl.constexpr = HEAD_DIM // 2
    acc = tl.zeros([BLOCK_R, BLOCK_T], dtype=tl.float32)
    for c0 in range(first, last, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        mc = ch < last
        m = mt[:, None] & mc[None, :]
        ch_safe = tl.where(mc, ch, 0)
        lo, step = _load_grid(lo_ptr, step_ptr, b, t, ch_safe, m, s_gb, s_gg, seg_ptr, HAS_SEG, TOKEN_GROUP)
        k = tl.where(m, _codes(data_ptr, b, t, ch_safe, m, P, s_db, s_dt, BITS) * step + lo, 0.0)  # [BT, BC]
        if HAS_CHAN:
            dest = tl.load(chan_ptr + ch_safe, mask=mc, other=0).to(tl.int32)
        else:
            dest = ch_safe
        d = dest - h * HEAD_DIM  # channel within the head
        mq = mr[:, None] & mc[None, :]
        q = tl.load(q_ptr + b * s_qb + h * s_qh + r[:, None] * s_qr + d[None, :], mask=mq, other=0.0)
        if PRE_ROPE:
            partner = tl.where(d < half, d + half, d - half)
            sign = tl.where(d < half, 1.0, -1.0)
            qp = tl.load(q_ptr + b * s_qb + h * s_qh + r[:, None] * s_qr + partner[None, :], mask=mq, other=0.0)
            rows = b * s_cb + t[:, None] * s_ct
            cos = tl.load(cos_ptr + rows + d[None, :], mask=m, other=0.0)  # [BT, BC]
            sin_p = tl.load(sin_ptr + rows + partner[None, :], mask=m, other=0.0)
            w = q[:, None, :] * cos[None, :, :] + (sign[None, :] * qp)[:, None, :] * sin_p[None, :, :]
            acc += tl.sum(w * k[None, :, :], axis=2)
        else:
            acc += tl.sum(q[:, None, :] * k[None, :, :], axis=2)
    out = scores_ptr + b * s_sb + h * s_sh + r[:, None] * s_sr + t[None, :]
    mo = mr[:, None] & mt[None, :]
    tl.store(out, tl.load(out, mask=mo, other=0.0) + acc, mask=mo)


@triton.jit
def _part_values_kernel(out_ptr, p_ptr, data_ptr, lo_ptr, step_ptr, seg_ptr, chan_ptr, range_ptr,
                        T, R, P, s_ob, s_oh, s_or, s_pb, s_ph, s_pr, s_db, s_dt, s_gb, s_gg,
                        BITS: tl.constexpr, HAS_SEG: tl.constexpr, HAS_CHAN: tl.constexpr,
                        TOKEN_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, N_HEADS: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // N_HEADS
    h = pid % N_HEADS
    first = tl.load(range_ptr + h)
    last = tl.load(range_ptr + h + 1)
    ch = first + tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = ch < last
    ch_safe = tl.where(mc, ch, 0)
    r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = r < R
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mt = t < T
        m = mt[:, None] & mc[None, :]
        lo, step = _load_grid(lo_ptr, step_ptr, b, t, ch_safe, m, s_gb, s_gg, seg_ptr, HAS_SEG, TOKEN_GROUP)
        v = tl.where(m, _codes(data_ptr, b, t, ch_safe, m, P, s_db, s_dt, BITS) * step + lo, 0.0)  # [BT, BC]
        p = tl.load(p_ptr + b * s_pb + h * s_ph + r[:, None] * s_pr + t[None, :],
                    mask=mr[:, None] & mt[None, :], other=0.0)  # [BR, BT]
        acc += tl.sum(p[:, :, None] * v[None, :, :], axis=1)
    if HAS_CHAN:
        dest = tl.load(chan_ptr + ch_safe, mask=mc, other=0).to(tl.int32)
    else:
        dest = ch_safe
    d = dest - h * HEAD_DIM
    out = out_ptr + b * s_ob + h * s_oh + r[:, None] * s_or + d[None, :]
    mo = mr[:, None] & mc[None, :]
    tl.store(out, tl.load(out, mask=mo, other=0.0) + acc, mask=mo)


# --- launchers ---------------------------------------------------------------------------------
_BLOCK_T, _BLOCK_C = 16, 16
_MAX_BLOCK_R = 16  # query rows per program; more rows (long chunks, wide GQA) take more programs


def _row_block(rows: int) -> int:
    return min(_MAX_BLOCK_R, triton.next_power_of_2(rows))


def head_ranges(channels: torch.Tensor | None, n_heads: int, head_dim: int, device) -> torch.Tensor:
    """int32 [H + 1]: head h's stored channels are [ranges[h], ranges[h + 1]) of a part whose
    (sorted) flat channel indices are `channels` (None: every channel)."""
    bounds = torch.arange(n_heads + 1, device=device, dtype=torch.int64) * head_dim
    if channels is None:
        return bounds.to(torch.int32)
    return torch.searchsorted(channels.to(torch.int64), bounds).to(torch.int32)


def usable(part) -> bool:
    """Whether a part's codes can be attended to here: affine codes below 16 bits."""
    from streamkv.storage import PackedPart

    return isinstance(part, PackedPart) and part.bits in (2, 3, 4, 8)


def _checked(part, tokens: int):
    from streamkv.storage import grid

    if part.data.stride(-1) != 1:
        raise ValueError("code attention needs channel-contiguous packed data")
    lo, step = grid(part)
    lo, step = lo.float().contiguous(), step.float().contiguous()
    return min(tokens, part.length), lo, step


def part_scores_(scores: torch.Tensor, part, queries: torch.Tensor, cos: torch.Tensor | None,
                 sin: torch.Tensor | None, n_heads: int, head_dim: int) -> None:
    """scores [B, Hkv, R, t] (fp32, last dim contiguous) += the part's q . k for its first t
    tokens; queries [B, Hkv, R, D] fp32; cos/sin [B|1, t, D] fp32 at those tokens' positions for
    keys stored before RoPE (None: stored post-RoPE)."""
    b, _, rows, t = scores.shape
    if part.n_channels == 0 or b * rows * t == 0:
        return
    t, lo, step = _checked(part, t)
    ranges = head_ranges(part.channels, n_heads, head_dim, scores.device)
    s_gb, s_gg = _grid_strides(lo)
    pre_rope = cos is not None
    if pre_rope:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    else:
        cos = sin = lo  # unused pointers
    s_cb = cos.stride(0) if pre_rope and cos.shape[0] > 1 else 0
    seg = part.layout.segment_of
    block_r = _row_block(rows)
    grid = (b * n_heads, triton.cdiv(t, _BLOCK_T), triton.cdiv(rows, block_r))
    _part_scores_kernel[grid](
        scores, queries, part.data, lo, step, seg if seg is not None else lo,
        part.channels if part.channels is not None else lo, ranges, cos, sin,
        t, rows, part.data.shape[-1], scores.stride(0), scores.stride(1), scores.stride(2),
        queries.stride(0), queries.stride(1), queries.stride(2), part.data.stride(0), part.data.stride(1),
        s_gb, s_gg, s_cb, cos.stride(1) if pre_rope else 0,
        BITS=part.bits, HAS_SEG=seg is not None, HAS_CHAN=part.channels is not None,
        TOKEN_GROUP=_token_group(part.layout.token_group), PRE_ROPE=pre_rope, HEAD_DIM=head_dim,
        N_HEADS=n_heads, BLOCK_R=block_r, BLOCK_T=_BLOCK_T, BLOCK_C=_BLOCK_C)


def part_values_(out: torch.Tensor, part, probs: torch.Tensor, n_heads: int, head_dim: int) -> None:
    """out [B, Hkv, R, D] (fp32, last dim contiguous) += probs [B, Hkv, R, t] @ the part's first
    t value tokens, on the part's channels."""
    b, _, rows, t = probs.shape
    if part.n_channels == 0 or b * rows * t == 0:
        return
    if probs.stride(-1) != 1:
        probs = probs.contiguous()
    t, lo, step = _checked(part, t)
    ranges = head_ranges(part.channels, n_heads, head_dim, out.device)
    s_gb, s_gg = _grid_strides(lo)
    seg = part.layout.segment_of
    block_r = _row_block(rows)
    # a head holds at most head_dim channels of a part
    grid = (b * n_heads, triton.cdiv(head_dim, _BLOCK_C), triton.cdiv(rows, block_r))
    _part_values_kernel[grid](
        out, probs, part.data, lo, step, seg if seg is not None else lo,
        part.channels if part.channels is not None else lo, ranges,
        t, rows, part.data.shape[-1], out.stride(0), out.stride(1), out.stride(2),
        probs.stride(0), probs.stride(1), probs.stride(2), part.data.stride(0), part.data.stride(1),
        s_gb, s_gg,
        BITS=part.bits, HAS_SEG=seg is not None, HAS_CHAN=part.channels is not None,
        TOKEN_GROUP=_token_group(part.layout.token_group), HEAD_DIM=head_dim, N_HEADS=n_heads,
        BLOCK_R=block_r, BLOCK_T=_BLOCK_T, BLOCK_C=_BLOCK_C)


__all__ = ["head_ranges", "part_scores_", "part_values_", "usable"]
