"""A compression method defined outside the streamkv package, the way a user adds one: one
file, registered through the public API (`register_method`, `register_preset`). The tests in
tests/test_toy_method.py run it through the all-methods matrix, a sweep spec on local Ray,
the store and the dashboard, with no edit anywhere else.

ToyRound: keys (post-RoPE) and values rounded per token, one symmetric scale per channel group
of each KV head, at `toy_bits` bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv import LayerContext, Method, PackedLayer, register_method, register_preset
from streamkv.families import head_dim_of
from streamkv.layers import Block
from streamkv.settings import Problem, integer, one_of, setting
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode


class ToyRoundLayer(PackedLayer):
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        # keys, values [B, S, C]; one scale per token and channel group
        s = self.settings
        layout = self.shared("groups", lambda: ScaleLayout(
            token_group=1, n_segments=self.n_channels // (self.head_dim // s.toy_groups),
            segment_of=(torch.arange(self.n_channels, device=keys.device)
                        // (self.head_dim // s.toy_groups)).to(INDEX_DTYPE)))
        self.blocks.append(Block(PackedTensor([encode(keys, s.toy_bits, layout)], self.n_channels),
                                 PackedTensor([encode(values, s.toy_bits, layout)], self.n_channels)))


@register_method
@dataclass(frozen=True)
class ToyRound(Method):
    name = "toy_round"

    toy_bits: int = setting(4, one_of(4, 8), "bits of every key and value")
    toy_groups: int = setting(1, integer(1), "channel groups per head, one scale each")

    def model_problems(self, model_config) -> list[Problem]:
        if head_dim_of(model_config) % self.toy_groups:
            return [Problem("toy_groups", f"{self.toy_groups} must divide head_dim={head_dim_of(model_config)}")]
        return []

    def make_layer(self, ctx: LayerContext) -> ToyRoundLayer:
        return ToyRoundLayer(self, ctx)


register_preset("toy-8", ToyRound, toy_bits=8)
