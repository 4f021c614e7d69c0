"""Streaming per-channel statistics and outlier detection (no offline calibration).

One `ChannelStats` per layer and per tensor (K or V): running per-channel minimum and maximum
over C = heads x head_dim channels, so the statistics cost a few vectors per layer, never the
cache size. Pre-RoPE key channels are often offset from zero, so the range (not only the
absmax) is what a per-channel grid should span.
"""

from __future__ import annotations

import torch


class ChannelStats:
    """Running per-channel range: an EMA across chunks/decode steps, or the last chunk's."""

    def __init__(self, decay: float, mode: str = "ema"):
        self.decay = decay
        self.mode = mode
        self.low: torch.Tensor | None = None  # [C] float32
        self.high: torch.Tensor | None = None
        self.observations = 0

    def observe(self, x: torch.Tensor) -> "ChannelStats":
        """x [B, T, C]: folds this chunk's per-channel min/max (over batch and tokens) in."""
        x = x.detach().float()
        low, high = x.amin(dim=(0, 1)), x.amax(dim=(0, 1))
        if self.low is None or self.mode == "chunk":
            self.low, self.high = low, high
        else:
            d = self.decay
            self.low = d * self.low + (1.0 - d) * low
            self.high = d * self.high + (1.0 - d) * high
        self.observations += 1
        return self

    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.low.abs(), self.high.abs())


def outlier_mask(stat: torch.Tensor, n_heads: int, relative: float,
                 absolute: float | None) -> torch.Tensor:
    """stat [C] -> bool [C]: channels whose statistic exceeds `relative` x the median of their
    head's channels (a robust reference: a few outliers do not move it), or `absolute`."""
    per_head = stat.view(n_heads, -1)
    median = per_head.median(dim=-1, keepdim=True).values
    mask = per_head > relative * median
    if absolute is not None:
        mask |= per_head > absolute
    return mask.reshape(-1)
