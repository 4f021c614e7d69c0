"""KIVI-style baseline (Liu et al., 2024): post-RoPE keys per channel in groups of
`group_size` tokens, values per token in groups of `group_size` channels, both asymmetric,
and the most recent `residual_length` tokens kept at 16 bits (float16 for fp32 models)."""

from __future__ import annotations

import torch

from streamkv.methods.base import Block, PackedLayer
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode, raw_dtype


class KiviLayer(PackedLayer):
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        keys, values = keys.to(raw_dtype(self.dtype)), values.to(raw_dtype(self.dtype))
        if self.residual_k is None:
            self.residual_k, self.residual_v = keys, values
        else:
            self.residual_k = torch.cat([self.residual_k, keys], dim=1)
            self.residual_v = torch.cat([self.residual_v, values], dim=1)
        g = self.config.group_size
        # Whole token groups that fall out of the full-precision window are quantized.
        n = (self.residual_k.shape[1] - self.config.residual_length) // g * g
        if n <= 0:
            return
        k_old, self.residual_k = self.residual_k[:, :n], self.residual_k[:, n:].clone()
        v_old, self.residual_v = self.residual_v[:, :n], self.residual_v[:, n:].clone()
        key_layout = ScaleLayout(token_group=g, symmetric=False)
        k = encode(k_old, self.config.key_bits_normal, key_layout, fused=self.fused)
        v_layout = self.shared("values", lambda: self._value_layout(keys.device))
        v = encode(v_old, self.config.value_bits_normal, v_layout, fused=self.fused)
        self.blocks.append(Block(PackedTensor([k], self.n_channels), PackedTensor([v], self.n_channels)))

    def _value_layout(self, device: torch.device) -> ScaleLayout:
        group = min(self.config.group_size, self.head_dim)
        segment_of = (torch.arange(self.n_channels, device=device) // group).to(INDEX_DTYPE)
        return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=self.n_channels // group,
                           symmetric=False)
