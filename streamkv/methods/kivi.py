"""KIVI-style peer (Liu et al., 2024): post-RoPE keys per channel in groups of `group_size`
tokens, values per token in groups of `group_size` channels, both asymmetric, and the most
recent `residual_length` tokens kept at 16 bits (float16 for fp32 models)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv.families import head_dim_of
from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.settings import Problem, integer, one_of, setting
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode, raw_dtype


class KiviLayer(PackedLayer):
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        s = self.settings
        keys, values = keys.to(raw_dtype(self.dtype)), values.to(raw_dtype(self.dtype))
        if self.residual_k is None:
            self.residual_k, self.residual_v = keys, values
        else:
            self.residual_k = torch.cat([self.residual_k, keys], dim=1)
            self.residual_v = torch.cat([self.residual_v, values], dim=1)
        g = s.group_size
        # Whole token groups that fall out of the full-precision window are quantized.
        n = (self.residual_k.shape[1] - s.residual_length) // g * g
        if n <= 0:
            return
        k_old, self.residual_k = self.residual_k[:, :n], self.residual_k[:, n:].clone()
        v_old, self.residual_v = self.residual_v[:, :n], self.residual_v[:, n:].clone()
        key_layout = ScaleLayout(token_group=g, symmetric=False)
        k = encode(k_old, s.key_bits, key_layout, fused=self.fused)
        v_layout = self.shared("values", lambda: self._value_layout(keys.device))
        v = encode(v_old, s.value_bits, v_layout, fused=self.fused)
        self.blocks.append(Block(PackedTensor([k], self.n_channels), PackedTensor([v], self.n_channels)))

    def _value_layout(self, device: torch.device) -> ScaleLayout:
        group = min(self.settings.group_size, self.head_dim)
        segment_of = (torch.arange(self.n_channels, device=device) // group).to(INDEX_DTYPE)
        return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=self.n_channels // group,
                           symmetric=False)


@register_method
@dataclass(frozen=True)
class Kivi(Method):
    """KIVI-style: post-RoPE keys per channel in token groups, values per token in channel groups,
    the most recent tokens at 16 bits."""

    name = "kivi"

    key_bits: int = setting(4, one_of(2, 4), "bits of keys (per channel, token groups)")
    value_bits: int = setting(4, one_of(2, 3, 4, 8, 16), "bits of values (per token, channel groups)")
    group_size: int = setting(32, integer(1), "token group of key scales / channel group of value scales")
    residual_length: int = setting(128, integer(0), "most recent tokens kept at 16 bits")

    @classmethod
    def example(cls, model, workdir) -> Kivi:
        """A 32-token residual: quick checks use prompts shorter than the default 128 + a group."""
        return cls(residual_length=32)

    def model_problems(self, model_config) -> list[Problem]:
        head_dim = head_dim_of(model_config)
        if head_dim % self.group_size and self.group_size < head_dim:
            return [Problem("group_size", f"{self.group_size} must divide the model's head_dim={head_dim} "
                                          "for KIVI's per-token value groups")]
        return []

    def make_layer(self, ctx: LayerContext) -> KiviLayer:
        return KiviLayer(self, ctx)


register_preset("kivi-4", Kivi, key_bits=4, value_bits=4)
register_preset("kivi-2", Kivi, key_bits=2, value_bits=2)
