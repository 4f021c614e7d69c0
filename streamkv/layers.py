"""The cache-layer machinery every packed method shares.

A method's layer is one small `PackedLayer` subclass that decides how new tokens are quantized
(`write`); reading the history back, RoPE for pre-RoPE keys, lengths and byte accounting live
here once. Layers follow transformers' `CacheLayerMixin`, so `CompressedCache` is, like
transformers' own caches, mostly a list of layers. A layer is built from its method's settings
and a `LayerContext` that says everything about where it sits (no hidden state, nothing set
after construction).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.cache_utils import CacheLayerMixin

from streamkv import quant
from streamkv.storage import PackedTensor, storage_sizes


@dataclass(frozen=True)
class LayerContext:
    """Where a cache layer sits and how it computes, given when the cache builds it."""

    layer_idx: int
    num_layers: int
    n_kv_heads: int
    head_dim: int
    # Triton kernels (streamkv.kernels) for packing and unpacking: True / False, or None for
    # "on CUDA when Triton is importable". Same math either way.
    fused: bool | None = None
    dtype: torch.dtype | None = None  # None: the dtype of the first keys stored
    device: torch.device | None = None  # None: the device of the first keys stored


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


def kernels_usable(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors when Triton is installed (CUDA builds of torch ship it)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


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

    def __init__(self, settings, ctx: LayerContext):
        """settings: the method object (frozen dataclass) whose layer this is."""
        super().__init__()
        self.settings = settings
        self.ctx = ctx
        self.n_heads = ctx.n_kv_heads
        self.head_dim = ctx.head_dim
        self.n_channels = ctx.n_kv_heads * ctx.head_dim
        self.blocks: list[Block] = []
        self.residual_k: torch.Tensor | None = None  # [B, R, C] full precision (KIVI)
        self.residual_v: torch.Tensor | None = None
        self.length = 0
        # Index/segment tensors reused by every block with the same channel layout, so they
        # are held (and counted) once per layer instead of once per block.
        self._shared: dict = {}
        self.fused: bool | None = ctx.fused  # resolved on the first update when None

    # --- transformers' layer protocol ---------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype = self.ctx.dtype or key_states.dtype
        self.device = key_states.device
        self.batch_size = key_states.shape[0]
        if self.fused is None:
            self.fused = kernels_usable(self.device)
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
                    "streamkv's compressed model classes (AutoCompressedModelForCausalLM, "
                    "CompressedLlamaForCausalLM, ...) or call CompressedCache.begin_step(position_ids)")
            keys = quant.invert_rope(key_states, step.cos, step.sin)
        strict = self.settings.quantize_current_chunk
        n_old, n_new = self.length, key_states.shape[-2]
        new_k, new_v = to_flat(keys), to_flat(value_states)
        self.prepare(new_k, new_v)
        if not strict:  # the history, with room for the chunk itself in full precision
            all_k, all_v = self.read(step, extra=n_new)
        self.write(new_k, new_v)
        self.length += n_new
        if strict:
            all_k, all_v = self.read(step)
        else:
            from_flat(all_k, self.n_heads)[:, :, n_old:] = key_states
            from_flat(all_v, self.n_heads)[:, :, n_old:] = value_states
        return from_flat(all_k, self.n_heads), from_flat(all_v, self.n_heads)

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
    def read(self, step: Step, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, T + extra, C] whose first T tokens are the stored history dequantized (K
        rotated if stored pre-RoPE); the `extra` tokens are left for the caller to fill.

        Blocks are decoded straight into the buffer attention reads, so one layer's history
        exists once in full precision, and only while this layer attends.
        """
        n = self.length
        keys = torch.empty(self.batch_size, n + extra, self.n_channels, dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        pos = 0
        for block in self.blocks:
            block.keys.decode_into(keys, pos, self.fused)
            block.values.decode_into(values, pos, self.fused)
            pos += block.length
        if self.residual_k is not None:
            keys[:, pos:n] = self.residual_k
            values[:, pos:n] = self.residual_v
        if self.pre_rope and n:
            cos, sin = step.history_rope(n)
            if self.fused:
                from streamkv import kernels

                kernels.rope_(keys[:, :n], cos, sin, self.head_dim)
            else:
                hist = from_flat(keys[:, :n], self.n_heads)
                hist.copy_(quant.apply_rope(hist.float(), cos.float(), sin.float()))
        return keys, values

    # --- what a method implements ----------------------------------------------------------
    def prepare(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Called with the new tokens before the history is read: device work whose result
        `write` needs on the host can start here and overlap the reads."""

    @abstractmethod
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantize and store new tokens: keys, values [B, S, C] (keys pre-RoPE if `pre_rope`)."""

    # --- accounting ---------------------------------------------------------------------------
    def storage_sizes(self, kind: str | None = None) -> dict[tuple[str, int], int]:
        """{(device, storage address): bytes} of what this layer holds for `kind` (or both)."""
        sizes: dict[tuple[str, int], int] = {}
        for k in ("keys", "values") if kind is None else (kind,):
            for blk in self.blocks:
                sizes.update(getattr(blk, k).storage_sizes())
            residual = self.residual_k if k == "keys" else self.residual_v
            if residual is not None:
                sizes.update(storage_sizes([residual]))
        return sizes

    def nbytes(self, kind: str | None = None) -> int:
        return sum(self.storage_sizes(kind).values())

    def sink_tokens(self) -> int:
        """Tokens kept in a block of their own at the sink bits (counted, not inferred)."""
        return sum(b.length for b in self.blocks if b.meta.get("sink"))

    def outlier_elements(self) -> tuple[int, int]:
        """(key, value) token x channel elements kept at the outlier bits by outlier detection."""
        return 0, 0

    def trace_rows(self) -> list[dict]:
        """Per head: outlier channels and their statistics (empty for methods without)."""
        return []
