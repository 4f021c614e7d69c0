"""method "none": 16-bit storage through the same code path (the uncompressed reference).

Keys and values are kept in the model's 16-bit dtype (float16 for an fp32 model), post-RoPE,
so the chunked forward, the byte accounting and the stats are the same as for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.storage import PackedTensor, ScaleLayout, encode, raw_dtype


class NoCompressionLayer(PackedLayer):
    def write(self, keys, values) -> None:
        layout = self.shared("layout", ScaleLayout)
        dt = raw_dtype(self.dtype)
        self.append_block(Block(PackedTensor([encode(keys, 16, layout, raw_dtype=dt)], self.n_channels),
                                PackedTensor([encode(values, 16, layout, raw_dtype=dt)], self.n_channels)))


@register_method
@dataclass(frozen=True)
class NoCompression(Method):
    """16-bit keys and values (the model's 16-bit dtype, float16 for fp32), post-RoPE: the reference."""

    name = "none"
    is_lossless = True

    def make_layer(self, ctx: LayerContext) -> NoCompressionLayer:
        return NoCompressionLayer(self, ctx)


register_preset("none", NoCompression)
