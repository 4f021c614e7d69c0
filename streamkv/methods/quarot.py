"""QuaRot-style KV peer (Ashkboos et al., 2024, arXiv 2404.00456): keys (post-RoPE) and values
rotated by a Hadamard matrix per KV head, then asymmetric round-to-nearest per token in channel
groups (`group_size`, default the whole head), with the range clipped to `clip_ratio` x
(min, max) of each group. The paper's setup (Section 5): "We quantize the KV caches using
asymmetric quantization with a group size 128 with a constant clipping ratio of 0.95" on
128-wide heads, i.e. one group per head; its repository's argparse defaults (`--k_clip_ratio`,
`--v_clip_ratio` = 1.0) are not what the paper ran, so our presets use 0.95.

QuaRot rotates queries and keys after RoPE by the head-size Hadamard (q . k unchanged) and
folds the values' Hadamard into W_v / W_o. Here the stored tokens stay rotated: blockwise
attention rotates the queries and un-rotates its output once per step (`PackedLayer.rotations`),
and the dense read path un-rotates the history: the same products either way. QuaRot's online KV
rotation is the plain (deterministic) Hadamard; `seed` adds seeded random signs instead (then
per layer, head and kind), regenerated from the seed, never stored. Its residual-stream
rotation of the weights changes neither K nor V, so it has no counterpart here.

Grid: QuaRot's asymmetric quantizer rounds the zero point to an integer code; ours keeps an
fp16 lo (streamkv.storage's asymmetric layout): the same grid up to that rounding, and the same
bytes (one fp16 scale and one fp16 offset per token and group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv import quant, rotation
from streamkv.families import head_dim_of
from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.settings import Check, Problem, integer, is_number, one_of, optional, setting
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode

_RATIO = Check(lambda v: is_number(v) and 0 < v <= 1, "0 < x <= 1", canonical=float)


def clip_to_ratio(y: torch.Tensor, segment_of: torch.Tensor, n_segments: int, ratio: float) -> torch.Tensor:
    """y [B, S, C] clamped per token to ratio x (min, max) of its channel group (QuaRot's clip:
    new_max = max * clip_ratio). For a group that spans zero (rotated groups do) the min/max the
    quantizer then measures are exactly ratio x (min, max)."""
    if ratio == 1.0:
        return y
    seg = segment_of.long()
    hi = quant.segment_amax(y, seg, n_segments).index_select(-1, seg) * ratio
    lo = quant.segment_amin(y, seg, n_segments).index_select(-1, seg) * ratio
    return torch.minimum(torch.maximum(y, lo), hi)


class QuaRotLayer(PackedLayer):
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        s = self.settings
        layout = self.shared("layout", lambda: self._layout(keys.device))
        parts = []
        for kind, x, bits, ratio in ((0, keys, s.key_bits, s.key_clip_ratio),
                                     (1, values, s.value_bits, s.value_clip_ratio)):
            y = rotation.rotate(x, self._rotations(kind, x.device))  # [B, S, C] fp32
            y = clip_to_ratio(y, layout.segment_of, layout.n_segments, ratio)
            parts.append(PackedTensor([encode(y, bits, layout, fused=self.fused)], self.n_channels))
        self.append_block(Block(*parts))

    def _layout(self, device: torch.device) -> ScaleLayout:
        group = self.settings.group_size or self.head_dim
        segment_of = (torch.arange(self.n_channels, device=device) // group).to(INDEX_DTYPE)
        return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=self.n_channels // group, symmetric=False)

    def _rotations(self, kind: int, device: torch.device) -> torch.Tensor:
        def make() -> torch.Tensor:
            seed = self.settings.seed
            if seed is not None:  # a distinct sign pattern per layer, kind and head
                seed = ((seed * 4096 + self.ctx.layer_idx) * 2 + kind) * 4096
            return rotation.head_rotations(self.n_heads, self.head_dim, seed).to(device)
        return self.shared(("rotations", kind), make)

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rotations(0, self.device), self._rotations(1, self.device)


@register_method
@dataclass(frozen=True)
class QuaRot(Method):
    """QuaRot-style: Hadamard-rotated post-RoPE keys and values, asymmetric per-token RTN in
    channel groups with a clipped range."""

    name = "quarot"

    key_bits: int = setting(4, one_of(2, 3, 4, 8), "bits of keys (rotated, per token, channel groups)")
    value_bits: int = setting(4, one_of(2, 3, 4, 8), "bits of values (rotated, per token, channel groups)")
    group_size: int | None = setting(None, optional(integer(1), "head_dim"),
                                     "channels per scale (a divisor of head_dim)")
    key_clip_ratio: float = setting(0.95, _RATIO,
                                    "key range = this x (min, max) of each group (QuaRot's k_clip_ratio)")
    value_clip_ratio: float = setting(0.95, _RATIO,
                                      "value range = this x (min, max) of each group (QuaRot's v_clip_ratio)")
    seed: int | None = setting(None, optional(integer(0), "plain Hadamard, as QuaRot"),
                               "seed of random signs before the Hadamard")

    def model_problems(self, model_config) -> list[Problem]:
        head_dim = head_dim_of(model_config)
        problems = []
        if not rotation.is_power_of_two(head_dim):
            problems.append(Problem("key_bits", f"the model's head_dim={head_dim} is not a power of two: the "
                                                "Hadamard rotation of QuaRot-style storage needs one", ("value_bits",)))
        if self.group_size is not None and head_dim % self.group_size:
            problems.append(Problem("group_size", f"{self.group_size} must divide the model's head_dim={head_dim}"))
        return problems

    def make_layer(self, ctx: LayerContext) -> QuaRotLayer:
        return QuaRotLayer(self, ctx)


register_preset("quarot-4", QuaRot, key_bits=4, value_bits=4)
register_preset("quarot-3", QuaRot, key_bits=3, value_bits=3)
