"""The simple peers: uniform INT8 (symmetric) and naive INT4 (asymmetric min/max), per token.

Keys are stored post-RoPE (as plain caches do); every token is quantized on its own, one scale
per token and KV head, with no sink, outlier or residual handling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode


def per_head_layout(n_heads: int, head_dim: int, device: torch.device, symmetric: bool) -> ScaleLayout:
    """One scale (or lo/step pair) per token and KV head."""
    segment_of = torch.arange(n_heads, device=device).repeat_interleave(head_dim).to(INDEX_DTYPE)
    return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=n_heads, symmetric=symmetric)


class PerTokenLayer(PackedLayer):
    def __init__(self, settings, ctx: LayerContext, bits: int, symmetric: bool):
        super().__init__(settings, ctx)
        self.bits, self.symmetric = bits, symmetric

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        layout = self.shared("per_head", lambda: per_head_layout(
            self.n_heads, self.head_dim, keys.device, self.symmetric))
        k = encode(keys, self.bits, layout, fused=self.fused)
        v = encode(values, self.bits, layout, fused=self.fused)
        self.append_block(Block(PackedTensor([k], self.n_channels), PackedTensor([v], self.n_channels)))


@register_method
@dataclass(frozen=True)
class Int8(Method):
    """Symmetric INT8 per token and KV head."""

    name = "int8"

    def make_layer(self, ctx: LayerContext) -> PerTokenLayer:
        return PerTokenLayer(self, ctx, bits=8, symmetric=True)


@register_method
@dataclass(frozen=True)
class Int4Token(Method):
    """Asymmetric (min/max) INT4 per token and KV head."""

    name = "int4_token"

    def make_layer(self, ctx: LayerContext) -> PerTokenLayer:
        return PerTokenLayer(self, ctx, bits=4, symmetric=False)


register_preset("int8", Int8)
register_preset("int4_token", Int4Token)
