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

from streamkv import history_attention, quant, rotation
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
    # Under streamkv's attention, a step of at most `blockwise_queries` tokens (decode) reads
    # the history a window of whole blocks at a time (at least `attention_window` tokens;
    # streamkv.history_attention), so it never exists in full precision as a whole. Longer
    # prefill chunks, and attention_window=0, take the dense path: the whole history decoded
    # into one buffer, then SDPA, whose fused kernel beats the windowed softmax there (CPU:
    # benchmarks/decode_speed.py) while the chunk's own activations dwarf the history copy.
    attention_window: int = 2048
    blockwise_queries: int = 16
    # With `fused`, blockwise steps compute scores and weighted values straight from the packed
    # codes (streamkv.code_attention) instead of decoding each window. Off by default until the
    # kernels are measured on a GPU (they are checked against the reference with Triton's
    # interpreter only).
    code_attention: bool = False


@dataclass
class Step:
    """What one forward step tells the layers: the chunk's RoPE and the history's positions."""

    cos: torch.Tensor | None = None  # [B, S, D] of the current chunk (None: no RoPE known)
    sin: torch.Tensor | None = None
    history_rope: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The model attends through `PackedLayer.attend` (streamkv's attention): `update` returns the
    # step's own tokens instead of the whole history, and the chunk is stored by `update` (strict
    # protocol) or by `attend` after it has read the history (otherwise).
    blockwise: bool = False


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
        # A chunk `update` handed to `attend` (blockwise, not strict) and `attend` has yet to store.
        self.unwritten: tuple[torch.Tensor, torch.Tensor] | None = None
        # How `update` decided this step reads the history (`history_path`), decided once, before
        # the chunk is stored, so `attend` and the stats follow the same choice.
        self.step_path = "dense"

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
        self.step_path = self.history_path(step, n_new)
        if self.step_path != "dense":  # attention reads the history itself (`attend`)
            if strict:  # the chunk is read back quantized, as on the dense path
                self._store(new_k, new_v)
            else:  # stored by `attend` once it has read the history, as on the dense path
                self.unwritten = (new_k, new_v)
            return key_states, value_states
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

    def _store(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.prepare(keys, values)
        self.write(keys, values)
        self.length += keys.shape[1]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.blocks, self.residual_k, self.residual_v, self.length = [], None, None, 0
        self.unwritten, self.step_path = None, "dense"

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("beam search is not supported by streamkv caches; "
                                  "use greedy decoding or sampling")

    def offload(self) -> None:  # the packed blocks are the point: they stay where they are
        return None

    def prefetch(self) -> None:
        return None

    def append_block(self, block: Block) -> None:
        """Stores a block; a short one (decode tokens) joins the last block instead while that
        stays within chunk_size tokens and its parts can take the tokens as they are (16-bit or
        per-token codes), so a long generation reads a few blocks per step, not one per token."""
        last = self.blocks[-1] if self.blocks else None
        chunk = getattr(self.settings, "chunk_size", None) or 0
        if (last is not None and not last.meta and not block.meta and last.length + block.length <= chunk
                and last.keys.joinable(block.keys) and last.values.joinable(block.values)):
            last.keys.join(block.keys)
            last.values.join(block.values)
            return
        self.blocks.append(block)

    def shared(self, key, make):
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    # --- reading the history back ---------------------------------------------------------

    def read(self, step: Step, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, T + extra, C] whose first T tokens are the stored history dequantized (K
        rotated if stored pre-RoPE); the `extra` tokens are left for the caller to fill (the
        dense path: one layer's whole history in full precision while this layer attends)."""
        n = self.length
        return self._read_pieces(step, self._pieces(n), 0, n, extra)

    def history_path(self, step: Step, n_new: int) -> str:
        """How a step of n_new tokens reads the history: "dense" (decoded into one buffer,
        returned by `update`), "blockwise" (`attend`, a decoded window at a time) or "codes"
        (`attend`, scores and values from the packed codes: `streamkv.code_attention`).
        `attend` takes decode steps (see LayerContext), and with code attention every step once
        there are codes to read (a prefill chunk then attends to its history from the codes and
        to itself in full precision)."""
        if not (step.blockwise and self.ctx.attention_window > 0):
            return "dense"
        if self.reads_codes():  # walks every part: once per step
            return "codes"
        return "blockwise" if n_new <= self.ctx.blockwise_queries else "dense"

    def reads_codes(self) -> bool:
        """Whether `attend` reads scores and values straight from the codes: asked for
        (`LayerContext.code_attention`) on the Triton path (`fused`), storage in model space (no
        rotation) and every part affine-coded below 16 bits (an empty history has no parts to
        say so: False)."""
        if not (self.ctx.code_attention and self.fused) or not self.blocks or self.rotations() is not None:
            return False
        from streamkv import code_attention

        return all(code_attention.usable(part) for block in self.blocks
                   for part in (*block.keys.parts, *block.values.parts))

    def _windows(self, n: int):
        """Yields (start, pieces) covering history tokens [0, n) in order, each window whole
        pieces (blocks, the residual) of at least `attention_window` tokens."""
        pieces, size, start = [], 0, 0
        for piece in self._pieces(n):
            pieces.append(piece)
            size += piece[1] - piece[0]
            if size >= self.ctx.attention_window:
                yield start, pieces
                start += size
                pieces, size = [], 0
        if pieces:
            yield start, pieces

    def history_windows(self, step: Step, n: int, keep_rotation: bool = False):
        """Yields (start, keys, values) [B, t, C] covering history tokens [0, n) in order, each
        window whole pieces (blocks, the residual) of at least `attention_window` tokens;
        keep_rotation: rotated storage stays rotated (see `rotations`)."""
        for start, pieces in self._windows(n):
            yield (start, *self._read_pieces(step, pieces, start, n, keep_rotation=keep_rotation))

    def _add_code_window(self, acc, step: Step, queries: torch.Tensor, pieces, start: int, n: int,
                         scale: float, mask: torch.Tensor | None) -> None:
        """Folds the window `pieces` (tokens [start, start + t)) into `acc` from the packed codes:
        scores part by part (RoPE moved onto the query for pre-RoPE keys), then the weighted
        values part by part; the 16-bit residual, if any, through plain matmuls."""
        from streamkv import code_attention

        t = pieces[-1][1] - start
        b, h, rows, _ = queries.shape
        scores = torch.zeros(b, h, rows, t, dtype=torch.float32, device=queries.device)
        cos = sin = None
        if self.pre_rope:
            cos, sin = step.history_rope(n)
            cos, sin = cos[:, start:start + t].float(), sin[:, start:start + t].float()
        residual_at = self.length - (self.residual_k.shape[1] if self.residual_k is not None else 0)
        for lo, hi, block in pieces:
            at, width = lo - start, hi - lo
            window = scores[..., at:at + width]
            c = s = None
            if cos is not None:
                c, s = cos[:, at:at + width], sin[:, at:at + width]
            if block is None:
                keys = self.residual_k[:, lo - residual_at:hi - residual_at].float()
                if c is not None:
                    keys = keys.clone()
                    quant.apply_rope_flat_(keys, c, s, self.n_heads)
                window += queries @ history_attention.heads_of(keys, self.n_heads).transpose(-1, -2)
                continue
            for part in block.keys.parts:
                code_attention.part_scores_(window, part, queries, c, s, self.n_heads, self.head_dim)
        scores.mul_(scale)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
            acc.masked = True

        def weigh(p: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(b, h, rows, self.head_dim, dtype=torch.float32, device=p.device)
            for lo, hi, block in pieces:
                probs = p[..., lo - start:hi - start]
                if block is None:
                    values = self.residual_v[:, lo - residual_at:hi - residual_at].float()
                    out += probs @ history_attention.heads_of(values, self.n_heads)
                    continue
                for part in block.values.parts:
                    code_attention.part_values_(out, part, probs, self.n_heads, self.head_dim)
            return out

        acc.add_weighted(scores, weigh, masked=acc.masked)

    def _pieces(self, n: int) -> list[tuple[int, int, Block | None]]:
        """(start, end, block; None = the residual) of the stored tokens [0, n), in order."""
        pieces, pos = [], 0
        for block in self.blocks:
            if pos >= n:
                return pieces
            pieces.append((pos, min(n, pos + block.length), block))
            pos += block.length
        if self.residual_k is not None and pos < n:
            pieces.append((pos, n, None))
        return pieces

    def _read_pieces(self, step: Step, pieces, start: int, n: int, extra: int = 0,
                     keep_rotation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, t + extra, C] of `pieces` (tokens [start, start + t)) in model space.

        Blocks are decoded straight into the returned buffer; a block that runs past `n` (the
        open decode block, when the current token is not to be read from it) is decoded whole
        into a scratch buffer and cut."""
        t = pieces[-1][1] - start if pieces else 0
        shape = (self.batch_size, t + extra, self.n_channels)
        keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        for lo, hi, block in pieces:
            at = lo - start
            if block is None:
                r = self.length - self.residual_k.shape[1]  # the residual's first token
                keys[:, at:at + hi - lo] = self.residual_k[:, lo - r:hi - r]
                values[:, at:at + hi - lo] = self.residual_v[:, lo - r:hi - r]
            elif hi - lo == block.length:
                block.keys.decode_into(keys, at, self.fused)
                block.values.decode_into(values, at, self.fused)
            else:
                keys[:, at:at + hi - lo] = block.keys.decode(self.dtype)[:, :hi - lo]
                values[:, at:at + hi - lo] = block.values.decode(self.dtype)[:, :hi - lo]
        if t:
            cos = sin = None
            if self.pre_rope:
                cos, sin = step.history_rope(n)
                cos, sin = cos[:, start:start + t], sin[:, start:start + t]
            self.finish_history(keys[:, :t], values[:, :t], cos, sin, keep_rotation)
        return keys, values

    def finish_history(self, keys: torch.Tensor, values: torch.Tensor, cos: torch.Tensor | None,
                       sin: torch.Tensor | None, keep_rotation: bool = False) -> None:
        """In place, decoded history tokens [B, t, C] -> model space: rotated storage
        (`rotations`) un-rotated unless keep_rotation, then RoPE at their positions (cos/sin
        [B, t, D]) for keys stored pre-RoPE."""
        rotations = self.rotations()
        if rotations is not None and not keep_rotation:
            keys.copy_(rotation.unrotate(keys, rotations[0]))
            values.copy_(rotation.unrotate(values, rotations[1]))
        if cos is None:
            return
        if self.fused:
            from streamkv import kernels

            kernels.rope_(keys, cos, sin, self.head_dim)
        elif keys.dtype == torch.float32:
            quant.apply_rope_flat_(keys, cos, sin, self.n_heads)
        else:
            hist = from_flat(keys, self.n_heads)
            hist.copy_(quant.apply_rope(hist.float(), cos.float(), sin.float()))

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(key, value) per-head orthogonal rotations [H, D, D] of storage that holds R x
        instead of x (QuaRot-, TurboQuant-style), or None. Post-RoPE rotated storage lets
        blockwise attention rotate the queries and un-rotate its output (q.k = Rq.Rk, and
        sum p R^T y = R^T sum p y) instead of un-rotating every history token."""
        return None

    def attend(self, query: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor,
               attention_mask: torch.Tensor | None, scale: float, step: Step) -> torch.Tensor:
        """Attention of query [B, Hq, q, D] over this layer's history and the chunk handed over
        by `update` (chunk_keys/values [B, Hkv, q, D], post-RoPE): [B, q, Hq, D].

        As on the dense path, the strict protocol reads the chunk back from storage (`update`
        stored it); otherwise the chunk attends to its own keys/values in full precision, over
        the history as it was before the chunk (a method may re-encode stored tokens when new
        ones arrive, as KIVI's residual does), and is stored here afterwards. Causality is
        aligned to the lower right (or taken from attention_mask)."""
        q_len, n_q_heads = query.shape[2], query.shape[1]
        groups = n_q_heads // self.n_heads
        strict = self.settings.quantize_current_chunk
        if self.step_path == "dense" or (not strict and self.unwritten is None):
            raise RuntimeError("attend() without a chunk from update(): call update() first")
        n_hist = self.length  # strict: the chunk is stored already
        first_query = self.length - q_len if strict else self.length  # key position of query 0
        queries = history_attention.stack_queries(query, self.n_heads)
        rotations = None if self.pre_rope or not n_hist else self.rotations()  # RoPE follows un-rotation
        stored_queries = queries
        if rotations is not None:  # scores against the stored (rotated) keys
            stored_queries = history_attention.rotate_rows(queries, rotations[0])
        acc = history_attention.OnlineSoftmax()
        if n_hist and self.step_path == "codes":
            for start, pieces in self._windows(n_hist):
                mask = history_attention.window_mask(attention_mask, start, pieces[-1][1], q_len, groups,
                                                     first_query if strict else None)
                self._add_code_window(acc, step, queries, pieces, start, n_hist, scale, mask)
        else:
            for start, keys, values in self.history_windows(step, n_hist, keep_rotation=rotations is not None):
                end = start + keys.shape[1]
                mask = history_attention.window_mask(attention_mask, start, end, q_len, groups,
                                                     first_query if strict else None)
                history_attention.add_window(acc, stored_queries, history_attention.heads_of(keys, self.n_heads),
                                             history_attention.heads_of(values, self.n_heads), scale, mask)
        if rotations is not None and acc.o is not None:  # back to model space, once per step
            acc.o = history_attention.unrotate_rows(acc.o, rotations[1])
        if not strict:
            mask = history_attention.window_mask(attention_mask, n_hist, n_hist + q_len, q_len, groups,
                                                 first_query)
            history_attention.add_window(acc, queries, chunk_keys, chunk_values, scale, mask)
            (new_k, new_v), self.unwritten = self.unwritten, None
            self._store(new_k, new_v)
        return history_attention.unstack_output(acc.result(), n_q_heads, q_len).to(query.dtype)

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
