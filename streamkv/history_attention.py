"""Attention over a history that is read window by window, merged with an online softmax.

The compressed history never exists in full precision as a whole: a cache layer decodes a
window of its blocks (a few hundred tokens), the window's scores and weighted values are
folded into running (max, sum, output) accumulators, and the next window reuses the memory.
This is flash-decoding's merge written in plain torch; it is the reference of fused kernels
and the default read path of packed layers under streamkv's attention (`streamkv.attention`).

Shapes: query [B, Hq, q, D]; a window's keys/values [B, t, Hkv*D] (the cache's flat layout,
post-RoPE, in model space); GQA query heads are stacked per KV head as rows [B, Hkv, G*q, D]
(query head h*G + g serves KV head h, as transformers' `repeat_kv`). Scores and accumulators
are fp32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def stack_queries(query: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """[B, Hq, q, D] -> [B, Hkv, G*q, D] fp32 (row g*q + i: query head h*G + g, token i)."""
    b, hq, q, d = query.shape
    return query.float().reshape(b, n_kv_heads, (hq // n_kv_heads) * q, d)


def unstack_output(out: torch.Tensor, n_q_heads: int, q: int) -> torch.Tensor:
    """[B, Hkv, G*q, D] -> [B, q, Hq, D] (what transformers' attention functions return)."""
    b, _, _, d = out.shape
    return out.reshape(b, n_q_heads, q, d).transpose(1, 2)


def heads_of(x: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """[B, t, Hkv*D] -> [B, Hkv, t, D] view."""
    b, t, c = x.shape
    return x.view(b, t, n_kv_heads, c // n_kv_heads).transpose(1, 2)


def window_mask(attention_mask: torch.Tensor | None, start: int, end: int, q: int, groups: int,
                causal_from: int | None) -> torch.Tensor | None:
    """Bool mask [B|1, 1, G*q, t] (True = attend) of key positions [start, end) or None.

    attention_mask: transformers' mask [B, 1, q, kv] over all key positions (bool: True =
    attend; float: additive, 0 = attend), which already holds causality; None = no padding,
    then `causal_from` (the key position of the first query token, or None when every key of
    the window precedes every query) aligns causality to the lower right.
    """
    if attention_mask is not None:
        m = attention_mask[..., start:end]
        if m.dtype != torch.bool:
            m = m == 0
        b, _, _, t = m.shape
        return m.unsqueeze(2).expand(b, 1, groups, q, t).reshape(b, 1, groups * q, t)
    if causal_from is None or end - 1 <= causal_from:  # every key precedes every query
        return None
    keys = torch.arange(start, end)
    queries = causal_from + torch.arange(q)
    m = keys[None, :] <= queries[:, None]  # [q, t]
    return m.repeat(groups, 1)[None, None]


def rotate_rows(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """R_h x for rows x [B, Hkv, R, D] of head h, rotations [Hkv, D, D] (as `rotation.rotate`)."""
    return torch.einsum("bhrj,hij->bhri", x, rotations.float())


def unrotate_rows(y: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """R_h^T y for rows y [B, Hkv, R, D] (the inverse of `rotate_rows`, R orthogonal)."""
    return torch.einsum("bhri,hij->bhrj", y, rotations.float())


@dataclass
class OnlineSoftmax:
    """Running max m, denominator l and unnormalized output o per query row [B, H, R, *]."""

    m: torch.Tensor | None = None
    l: torch.Tensor | None = None
    o: torch.Tensor | None = None
    masked: bool = False  # some window so far had a mask (rows may be all -inf)

    def add(self, scores: torch.Tensor, values: torch.Tensor, masked: bool = True) -> None:
        """scores [B, H, R, t] fp32 (-inf where masked); values [B, H, t, D]; masked=False
        promises finite scores (no mask so far), which skips the empty-row guard."""
        self.add_weighted(scores, lambda p: p @ values.float(), masked)

    def add_weighted(self, scores: torch.Tensor, weigh, masked: bool = True) -> None:
        """As `add`, with the window's values behind `weigh`: p [B, H, R, t] fp32 -> p @ values
        [B, H, R, D] fp32 (attention from packed codes never builds the values tensor)."""
        m = scores.amax(-1, keepdim=True)
        if self.m is not None:
            m = torch.maximum(m, self.m)
        shift = m
        if masked:  # a row that saw only masked keys keeps m = -inf; exp(-inf - 0) = 0 keeps it empty
            shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        p = torch.exp(scores - shift)
        l, o = p.sum(-1, keepdim=True), weigh(p)
        if self.m is not None:
            alpha = torch.exp(self.m - shift)
            l, o = l + alpha * self.l, o + alpha * self.o
        self.m, self.l, self.o = m, l, o

    def result(self) -> torch.Tensor:
        """o / l; rows that attended to nothing (left padding) are 0."""
        return self.o / torch.where(self.l > 0, self.l, torch.ones_like(self.l))


def add_window(acc: OnlineSoftmax, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float, mask: torch.Tensor | None) -> None:
    """Folds one window into `acc`: queries [B, Hkv, R, D] fp32 (stack_queries), keys/values
    [B, Hkv, t, D]; mask bool broadcastable to [B, Hkv, R, t] or None."""
    scores = (queries @ keys.float().transpose(-1, -2)).mul_(scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        acc.masked = True
    acc.add(scores, values, masked=acc.masked)


__all__ = ["OnlineSoftmax", "add_window", "heads_of", "rotate_rows", "stack_queries", "unrotate_rows",
           "unstack_output", "window_mask"]
