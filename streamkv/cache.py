"""`CompressedCache`: a transformers `Cache` made of one compressed layer per model layer.

The cache is built from a method object (`streamkv.methods`) and the model's config: each
layer comes from `method.make_layer(LayerContext(...))` with its index, head counts, head_dim,
dtype, device and kernel choice given explicitly.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from streamkv.families import head_dim_of
from streamkv.layers import LayerContext, Step
from streamkv.storage import storage_sizes

RotaryFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class CompressedCache(Cache):
    """Drop-in `Cache` for the supported decoder families (`streamkv.families`).

    Methods that store keys before RoPE need each step's positions: the model calls
    `begin_step(position_ids)` before every forward (streamkv's model classes do), and
    the cache keeps the positions of stored tokens (int32, once for all layers) so history keys
    are rotated at their own positions, left padding included.
    """

    def __init__(self, method, model_config: PretrainedConfig, rotary_emb: RotaryFn | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | None = None,
                 fused: bool | None = None, attention_window: int | None = None,
                 blockwise_queries: int | None = None, code_attention: bool = False):
        """method: a `streamkv.methods.Method`; fused: Triton kernels (None: on CUDA when
        Triton is installed); dtype/device: the model's (None: those of the first keys);
        attention_window / blockwise_queries: the blockwise history attention (None: the
        defaults of `LayerContext`; attention_window=0: always the dense path); code_attention:
        with fused, blockwise steps read scores and values from the packed codes
        (`streamkv.code_attention`; reported as "codes" in the stats' history_reads)."""
        method.check_model(model_config)
        n_layers = model_config.num_hidden_layers
        layers = [method.make_layer(LayerContext(
            layer_idx=i, num_layers=n_layers, n_kv_heads=model_config.num_key_value_heads,
            head_dim=head_dim_of(model_config), fused=fused, dtype=dtype, device=device,
            code_attention=code_attention,
            **{k: v for k, v in (("attention_window", attention_window),
                                 ("blockwise_queries", blockwise_queries)) if v is not None}))
            for i in range(n_layers)]
        super().__init__(layers=layers)
        self.method = method
        self.rotary_emb = rotary_emb
        self.positions: torch.Tensor | None = None  # [B, T] int32, pre-RoPE methods only
        self.step = Step()
        self.peak_bytes = 0
        self.history_reads: dict[str, int] = {}  # forward steps by read path (layer 0), for the stats

    @property
    def needs_positions(self) -> bool:
        return any(layer.pre_rope for layer in self.layers)

    def begin_step(self, position_ids: torch.Tensor, batch_size: int, blockwise: bool = False) -> None:
        """Announces the positions [B|1, S] of the tokens the next forward appends; blockwise:
        the model attends through `attend` (streamkv's attention), not over `update`'s output."""
        if not self.needs_positions:
            self.step = Step(blockwise=blockwise)
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

        self.step = Step(cos=cos, sin=sin, history_rope=history_rope, blockwise=blockwise)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx]
        keys, values = layer.update(key_states, value_states, self.step)
        if layer_idx == 0:
            path = getattr(layer, "step_path", "dense")  # decided by the layer's update
            self.history_reads[path] = self.history_reads.get(path, 0) + 1
        if getattr(layer, "unwritten", None) is None:  # else stored (and measured) by `attend`
            self._measure_peak(layer_idx)
        return keys, values

    def _measure_peak(self, layer_idx: int) -> None:
        if layer_idx == len(self.layers) - 1:  # every layer has stored this step's tokens
            self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def attend(self, layer_idx: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               attention_mask: torch.Tensor | None, scale: float) -> torch.Tensor | None:
        """Attention of layer `layer_idx` read from its packed history ([B, q, Hq, D]), or None
        when that layer returned the whole history from `update` (the caller attends densely)."""
        layer = self.layers[layer_idx]
        if getattr(layer, "step_path", "dense") == "dense":  # update returned the whole history
            return None
        out = layer.attend(query, keys, values, attention_mask, scale, self.step)
        self._measure_peak(layer_idx)
        return out

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
        self.history_reads = {}
