"""The simple baselines: no compression, uniform INT8, naive INT4 per token.

Keys are stored post-RoPE (as plain caches do); every token is quantized on its own, per
KV head, with no sink, outlier or residual handling.
"""

from __future__ import annotations

import torch

from streamkv.methods.base import Block, PackedLayer
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode, raw_dtype


def per_head_layout(n_heads: int, head_dim: int, device: torch.device, symmetric: bool) -> ScaleLayout:
    """One scale (or lo/step pair) per token and KV head."""
    segment_of = torch.arange(n_heads, device=device).repeat_interleave(head_dim).to(INDEX_DTYPE)
    return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=n_heads, symmetric=symmetric)


class NoCompressionLayer(PackedLayer):
    """method='none': 16-bit storage through the same code path (the baseline)."""

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        layout = ScaleLayout()
        dt = raw_dtype(self.dtype)
        self.blocks.append(Block(PackedTensor([encode(keys, 16, layout, raw_dtype=dt)], self.n_channels),
                                 PackedTensor([encode(values, 16, layout, raw_dtype=dt)], self.n_channels)))


class PerTokenLayer(PackedLayer):
    """method='int8' (symmetric) and 'int4_token' (asymmetric min/max): per token, per head."""

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        symmetric = self.config.method == "int8"
        layout = self.shared("per_head", lambda: per_head_layout(
            self.n_heads, self.head_dim, keys.device, symmetric))
        k = encode(keys, self.config.key_bits_normal, layout, fused=self.fused)
        v = encode(values, self.config.value_bits_normal, layout, fused=self.fused)
        self.blocks.append(Block(PackedTensor([k], self.n_channels), PackedTensor([v], self.n_channels)))
