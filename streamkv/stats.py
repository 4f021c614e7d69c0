"""Streaming per-channel statistics and outlier detection (no offline calibration).

One `ChannelStats` per layer and per tensor (K or V): a vector of C = heads x head_dim
running absmax values, so the statistics cost a few vectors per layer, never the cache size.
"""

from __future__ import annotations

import torch


class ChannelStats:
    """Running per-channel absmax: an EMA across chunks/decode steps, or the last chunk's."""

    def __init__(self, decay: float, mode: str = "ema"):
        self.decay = decay
        self.mode = mode
        self.value: torch.Tensor | None = None  # [C] float32
        self.observations = 0

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, C] -> the updated statistic [C] (absmax over batch and tokens first)."""
        absmax = x.detach().abs().amax(dim=(0, 1)).float()
        if self.value is None or self.mode == "chunk":
            self.value = absmax
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * absmax
        self.observations += 1
        return self.value


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
