"""`CompressedCache`: a transformers `Cache` made of one compressed layer per model layer."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from streamkv.config import CompressionConfig
from streamkv.methods import Step, make_layer
from streamkv.storage import storage_sizes

RotaryFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def head_dim_of(model_config: PretrainedConfig) -> int:
    return getattr(model_config, "head_dim", None) or (
        model_config.hidden_size // model_config.num_attention_heads)


class CompressedCache(Cache):
    """Drop-in `Cache` for Llama-family models.

    Methods that store keys before RoPE need each step's positions: the model calls
    `begin_step(position_ids)` before every forward (`CompressedLlamaForCausalLM` does), and
    the cache keeps the positions of stored tokens (int32, once for all layers) so history keys
    are rotated at their own positions, left padding included.
    """

    def __init__(self, compression_config: CompressionConfig, model_config: PretrainedConfig,
                 rotary_emb: RotaryFn | None = None, fused: bool | None = None):
        head_dim = head_dim_of(model_config)
        compression_config.check_head_dim(head_dim)
        n_kv = model_config.num_key_value_heads
        layers = [make_layer(compression_config, n_kv, head_dim)
                  for _ in range(model_config.num_hidden_layers)]
        for layer in layers:  # fused: Triton kernels (None: on CUDA when Triton is installed)
            layer.fused = fused
        super().__init__(layers=layers)
        self.compression_config = compression_config
        self.rotary_emb = rotary_emb
        self.positions: torch.Tensor | None = None  # [B, T] int32, pre-RoPE methods only
        self.step = Step()
        self.peak_bytes = 0

    @property
    def needs_positions(self) -> bool:
        return any(layer.pre_rope for layer in self.layers)

    def begin_step(self, position_ids: torch.Tensor, batch_size: int) -> None:
        """Announces the positions [B|1, S] of the tokens the next forward appends."""
        if not self.needs_positions:
            return
        if self.rotary_emb is None:
            raise RuntimeError("this cache stores pre-RoPE keys and needs the model's rotary "
                               "embedding: build it with CompressedCache(..., rotary_emb=...)")
        position_ids = position_ids.expand(batch_size, -1)
        probe = torch.empty(0, dtype=torch.float32, device=position_ids.device)
        cos, sin = self.rotary_emb(probe, position_ids)
        history = self.positions
        self.positions = (position_ids.to(torch.int32) if history is None
                          else torch.cat([history, position_ids.to(torch.int32)], dim=1))
        memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def history_rope(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            # Computed once per step and shared by all layers: positions are the same for all.
            if n not in memo:
                memo[n] = self.rotary_emb(probe, self.positions[:, :n].long())
            return memo[n]

        self.step = Step(cos=cos, sin=sin, history_rope=history_rope)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.layers[layer_idx].update(key_states, value_states, self.step)
        if layer_idx == len(self.layers) - 1:
            self.peak_bytes = max(self.peak_bytes, self.nbytes())
        return keys, values

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds (codes, scales, indices, residuals, positions)."""
        sizes: dict[tuple[str, int], int] = {}
        for layer in self.layers:
            sizes.update(layer.storage_sizes())
        if self.positions is not None:
            sizes.update(storage_sizes([self.positions]))
        return sum(sizes.values())

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.positions, self.step, self.peak_bytes = None, Step(), 0
