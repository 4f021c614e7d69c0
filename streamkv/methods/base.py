"""The cache-layer interface every compression method shares.

A method is one small `PackedLayer` subclass that decides how new tokens are quantized
(`write`); reading the history back, RoPE for pre-RoPE keys, lengths and byte accounting
live here once. Layers follow transformers' `CacheLayerMixin`, so `CompressedCache` is, like
transformers' own caches, mostly a list of layers.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.cache_utils import CacheLayerMixin

from streamkv import quant
from streamkv.config import CompressionConfig
from streamkv.storage import PackedTensor, storage_bytes


@dataclass
class Step:
    """What one forward step tells the layers: the chunk's RoPE and the history's positions."""

    cos: torch.Tensor | None = None  # [B, S, D] of the current chunk (None: no RoPE known)
    sin: torch.Tensor | None = None
    history_rope: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class Block:
    keys: PackedTensor
    values: PackedTensor
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.keys.length


def to_flat(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [B, S, H*D]."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def from_flat(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, c = x.shape
    return x.view(b, s, n_heads, c // n_heads).transpose(1, 2)


class PackedLayer(CacheLayerMixin):
    """One layer's compressed keys and values: packed blocks, optionally an fp residual."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    pre_rope = False  # store keys before RoPE (rotated back at read time)

    def __init__(self, config: CompressionConfig, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.config = config
        self.n_heads = n_kv_heads
        self.head_dim = head_dim
        self.n_channels = n_kv_heads * head_dim
        self.blocks: list[Block] = []
        self.residual_k: torch.Tensor | None = None  # [B, R, C] full precision (KIVI)
        self.residual_v: torch.Tensor | None = None
        self.length = 0
        # Index/segment tensors reused by every block with the same channel layout, so they
        # are held (and counted) once per layer instead of once per block.
        self._shared: dict = {}

    # --- transformers' layer protocol ---------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size = key_states.shape[0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step: Step | None = None,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states/value_states [B, H, S, D] (keys post-RoPE) -> K, V [B, H, T+S, D]."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        step = step or Step()
        keys = key_states
        if self.pre_rope:
            if step.cos is None:
                raise RuntimeError(
                    "pre-RoPE key storage needs the positions of each step: run the model through "
                    "CompressedLlamaForCausalLM (or call CompressedCache.begin_step(position_ids))")
            keys = quant.invert_rope(key_states, step.cos, step.sin)
        strict = self.config.quantize_current_chunk
        if not strict:
            hist_k, hist_v = self.read(step)
        self.write(to_flat(keys), to_flat(value_states))
        self.length += key_states.shape[-2]
        if strict:
            return self.read(step)
        return (torch.cat([hist_k, key_states], dim=-2), torch.cat([hist_v, value_states], dim=-2))

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.blocks, self.residual_k, self.residual_v, self.length = [], None, None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("beam search is not supported by streamkv caches; "
                                  "use greedy decoding or sampling")

    def offload(self) -> None:  # the packed blocks are the point: they stay where they are
        return None

    def prefetch(self) -> None:
        return None

    def shared(self, key, make):
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    # --- reading the history back ---------------------------------------------------------
    def read(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole stored history dequantized: K (rotated if stored pre-RoPE), V [B, H, T, D]."""
        n = self.length
        b = self.batch_size
        keys = torch.empty(b, n, self.n_channels, dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        pos = 0
        for block in self.blocks:
            t = block.length
            keys[:, pos:pos + t] = block.keys.decode(self.dtype)
            values[:, pos:pos + t] = block.values.decode(self.dtype)
            pos += t
        if self.residual_k is not None:
            keys[:, pos:] = self.residual_k
            values[:, pos:] = self.residual_v
        keys, values = from_flat(keys, self.n_heads), from_flat(values, self.n_heads)
        if self.pre_rope and n:
            cos, sin = step.history_rope(n)
            keys = quant.apply_rope(keys.float(), cos.float(), sin.float()).to(self.dtype)
        return keys, values

    # --- what a method implements ----------------------------------------------------------
    @abstractmethod
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantize and store new tokens: keys, values [B, S, C] (keys pre-RoPE if `pre_rope`)."""

    # --- accounting ---------------------------------------------------------------------------
    def held_tensors(self, kind: str) -> list[torch.Tensor]:
        """Every tensor this layer holds for `kind` ('keys' or 'values')."""
        held = [t for blk in self.blocks for t in getattr(blk, kind).tensors()]
        residual = self.residual_k if kind == "keys" else self.residual_v
        return held + ([residual] if residual is not None else [])

    def nbytes(self, kind: str | None = None) -> int:
        kinds = ("keys", "values") if kind is None else (kind,)
        return storage_bytes([t for k in kinds for t in self.held_tensors(k)])

    def outlier_elements(self) -> tuple[int, int]:
        """(key, value) token x channel elements kept at the outlier bits by outlier detection."""
        return 0, 0

    def trace_rows(self) -> list[dict]:
        """Per head: outlier channels and their statistics (empty for methods without)."""
        return []
