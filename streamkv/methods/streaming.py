"""streamkv's method: real-time, calibration-free quantization during chunked prefill.

`CompressionConfig` (method "streamkv") holds its settings; `StreamingLayer` is its cache
layer. Per layer:
- keys pre-RoPE, per channel, scales from running per-channel statistics (EMA of min/max);
- values per token in channel groups of each head (or per channel);
- the first `attention_sink_size` tokens at the sink bits (their own scales);
- outlier channels (statistic > relative x head median, or > absolute) at the outlier bits,
  stored as a separate packed part so normal channels pay nothing for them.

Out-of-range chunks: with range_mode="expand" a prefill chunk's key scale is
max(statistic, chunk absmax), so nothing is clipped; "clip" saturates at the statistic.
Decode tokens join an open block whose key scale was fixed when it opened (clipping is the
only choice a one-token step has without re-quantizing), until it holds `chunk_size` tokens.

`PackedLayoutSettings` are the settings of that layout without the running statistics; the
KVQuant-style `calibrated` method (streamkv/methods/calibrated.py) shares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from streamkv.channel_stats import ChannelStats, outlier_mask
from streamkv.families import head_dim_of, kv_heads_of
from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.settings import Check, InvalidSettings, Problem, boolean, integer, number, one_of, optional, setting
from streamkv.storage import INDEX_DTYPE, PackedPart, PackedTensor, ScaleLayout, encode, raw_dtype

ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 8, 16)
_BITS = one_of(*ALLOWED_BITS)
# Per-layer settings left at None are not written by `to_dict`, so the config_id of every
# config that does not use them is the one it had before they existed.
PER_LAYER_FIELDS: tuple[str, ...] = ("layer_key_bits", "layer_value_bits")
PER_HEAD_FIELDS: tuple[str, ...] = ("head_key_bits", "head_value_bits")
# Later settings whose default is not written by `to_dict` either, for the same reason.
OMITTED_AT_DEFAULT: tuple[str, ...] = (*PER_LAYER_FIELDS, *PER_HEAD_FIELDS, "full_precision_tail")


def _bits_per_layer() -> Check:
    """None, or one allowed bit width per model layer (a YAML list; stored as a tuple)."""
    def ok(v) -> bool:
        return v is None or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_BITS.ok(b) for b in v))
    return Check(ok, f"null (every layer at the normal bits) or a list of {_BITS.allowed}, one per layer",
                 canonical=lambda v: None if v is None else tuple(v))


def _bits_per_head() -> Check:
    """None, or per model layer a list of allowed bit widths, one per KV head."""
    def ok(v) -> bool:
        return v is None or (isinstance(v, (list, tuple)) and len(v) > 0 and all(
            isinstance(row, (list, tuple)) and len(row) > 0 and all(_BITS.ok(b) for b in row) for row in v))
    return Check(ok, f"null (every head at its layer's bits) or one list per layer of {_BITS.allowed}, one per "
                     "KV head", canonical=lambda v: None if v is None else tuple(tuple(row) for row in v))


@dataclass(frozen=True)
class PackedLayoutSettings(Method):
    """Sink tokens and outlier channels at high bits, the rest at normal bits (not registered:
    the base of `CompressionConfig` and `Calibrated`)."""

    attention_sink_size: int = setting(4, integer(0), "first cache slots kept at the sink/outlier bits")
    key_bits_normal: int = setting(4, _BITS, "bits of normal key tokens/channels")
    value_bits_normal: int = setting(4, _BITS, "bits of normal value tokens/channels")
    key_bits_sink_outlier: int = setting(8, _BITS, "bits of sink tokens and outlier key channels (>= normal)")
    value_bits_sink_outlier: int = setting(8, _BITS, "bits of sink tokens and outlier value channels (>= normal)")
    outlier_threshold_relative: float = setting(
        3.0, number(above=1.0), "outlier: statistic > this x the median of its head's channels")
    outlier_threshold_abs: float | None = setting(
        None, optional(number(above=0.0), "off"), "outlier also when the statistic exceeds this")
    value_quant_groups: int = setting(
        1, integer(0), "values per token in this many channel groups per head (a divisor of head_dim); "
                       "0 = per channel")
    pre_rope_keys: bool = setting(True, boolean(), "store keys before RoPE (rotated at their positions on read)")
    sink_protection: bool = setting(True, boolean(), "keep the sink tokens at the high bits (ablation switch)")
    outlier_detection: bool = setting(True, boolean(), "keep outlier channels at the high bits (ablation switch)")
    layer_key_bits: tuple[int, ...] | None = setting(
        None, _bits_per_layer(), "bits of normal keys per layer (layer i: entry i), instead of key_bits_normal")
    layer_value_bits: tuple[int, ...] | None = setting(
        None, _bits_per_layer(), "bits of normal values per layer, instead of value_bits_normal")
    # Per KV head: a layer's heads at different bits are stored as one packed part per bit width
    # (channels of the heads that share it), so a head pays only for its own bits.
    head_key_bits: tuple[tuple[int, ...], ...] | None = setting(
        None, _bits_per_head(), "bits of normal keys per layer and KV head (layer i, head h: entry [i][h]), "
                                "instead of key_bits_normal / layer_key_bits")
    head_value_bits: tuple[tuple[int, ...], ...] | None = setting(
        None, _bits_per_head(), "bits of normal values per layer and KV head, instead of value_bits_normal / "
                                "layer_value_bits")
    full_precision_tail: int | None = setting(
        None, optional(integer(0), "off: chunks quantized as they arrive, decode tokens join an open block"),
        "R: new tokens wait in 16 bits and are quantized a whole chunk_size block at a time once more "
        "than R tokens follow it (0: only the last, not yet full chunk stays 16-bit)")

    @classmethod
    def cross_problems(cls, valid: Mapping[str, Any]) -> list[Problem]:
        problems = []
        for kind in ("key", "value"):
            normal, high, per_layer = f"{kind}_bits_normal", f"{kind}_bits_sink_outlier", f"layer_{kind}_bits"
            if normal in valid and high in valid and valid[high] < valid[normal]:
                problems.append(Problem(high, f"{valid[high]} must be >= {normal}={valid[normal]} "
                                              "(protected tokens/channels never get fewer bits)", (normal,)))
            if high in valid and valid.get(per_layer) is not None:
                over = [i for i, b in enumerate(valid[per_layer]) if b > valid[high]]
                if over:
                    problems.append(Problem(per_layer, f"layer(s) {over} exceed {high}={valid[high]} "
                                                       "(protected tokens/channels never get fewer bits)", (high,)))
            per_head = f"head_{kind}_bits"
            if valid.get(per_head) is not None and valid.get(per_layer) is not None:
                problems.append(Problem(per_head, f"give {per_layer} or {per_head}, not both", (per_layer,)))
            if high in valid and valid.get(per_head) is not None:
                over = [(i, h) for i, row in enumerate(valid[per_head]) for h, b in enumerate(row) if b > valid[high]]
                if over:
                    problems.append(Problem(per_head, f"(layer, head) {over} exceed {high}={valid[high]} "
                                                      "(protected tokens/channels never get fewer bits)", (high,)))
        return problems

    def model_problems(self, model_config) -> list[Problem]:
        problems = []
        head_dim, groups = head_dim_of(model_config), self.value_quant_groups
        if groups and head_dim % groups:
            problems.append(Problem("value_quant_groups", f"{groups} must divide the model's head_dim={head_dim} "
                                                          f"(allowed: 0 or a divisor of {head_dim})"))
        return problems + self.layer_count_problems(model_config.num_hidden_layers, kv_heads_of(model_config))

    def layer_count_problems(self, n_layers: int, n_kv_heads: int | None = None) -> list[Problem]:
        problems = [Problem(name, f"has {len(value)} entries; the model has num_hidden_layers={n_layers} "
                                  f"(allowed: exactly {n_layers})")
                    for name in (*PER_LAYER_FIELDS, *PER_HEAD_FIELDS) if (value := getattr(self, name)) is not None
                    and len(value) != n_layers]
        for name in PER_HEAD_FIELDS:
            value = getattr(self, name)
            if value is None or n_kv_heads is None:
                continue
            wrong = [i for i, row in enumerate(value) if len(row) != n_kv_heads]
            if wrong:
                problems.append(Problem(name, f"layer(s) {wrong} do not have one entry per KV head (the model has "
                                              f"num_key_value_heads={n_kv_heads}; allowed: exactly {n_kv_heads})"))
        return problems

    def normal_bits(self, layer_idx: int, n_kv_heads: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(key, value) bits of the normal tokens/channels of layer `layer_idx`, per KV head."""
        def of(kind: str) -> tuple[int, ...]:
            per_head, per_layer = getattr(self, f"head_{kind}_bits"), getattr(self, f"layer_{kind}_bits")
            if per_head is not None:
                return tuple(per_head[layer_idx])
            bits = getattr(self, f"{kind}_bits_normal") if per_layer is None else per_layer[layer_idx]
            return (bits,) * n_kv_heads
        return of("key"), of("value")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for name in OMITTED_AT_DEFAULT:
            if data[name] is None:
                del data[name]
        return data


@register_method
@dataclass(frozen=True)
class CompressionConfig(PackedLayoutSettings):
    """streamkv's own method: running per-channel statistics, no calibration."""

    name = "streamkv"

    # Running statistic: stat <- decay * stat + (1 - decay) * min/max(chunk), per channel.
    ema_decay: float = setting(0.9, number(above=0.0, below=1.0), "EMA decay of the per-channel min/max")
    statistics: str = setting("ema", one_of("ema", "chunk"), "running EMA, or the current chunk's range")
    range_mode: str = setting("expand", one_of("expand", "clip"),
                              "a prefill chunk beyond the statistic widens its own scale (expand) or "
                              "saturates (clip)")

    def make_layer(self, ctx: LayerContext) -> StreamingLayer:
        return StreamingLayer(self, ctx)


class StreamingLayer(PackedLayer):
    def __init__(self, settings: PackedLayoutSettings, ctx: LayerContext):
        super().__init__(settings, ctx)
        self.pre_rope = settings.pre_rope_keys
        # A cache built without `check_model` (a hand-made LayerContext) still gets a clear error.
        wrong = settings.layer_count_problems(ctx.num_layers, ctx.n_kv_heads)
        if wrong:
            raise InvalidSettings(f"{type(settings).__name__} for a {ctx.num_layers}-layer, "
                                  f"{ctx.n_kv_heads}-KV-head cache", wrong)
        # per KV head; one value when the heads agree (the common case: one part per kind)
        self.key_bits, self.value_bits = settings.normal_bits(ctx.layer_idx, ctx.n_kv_heads)
        self.key_stats, self.value_stats = self._new_stats()
        self.open_block: Block | None = None
        self._pending = None  # what prepare() observed of the chunk write() is about to store

    # --- write path --------------------------------------------------------------------------
    def _n_sink(self, n_new: int) -> int:
        """How many of the next n_new tokens are sink tokens."""
        cfg = self.settings
        if not cfg.sink_protection:
            return 0
        return max(0, min(cfg.attention_sink_size - self.length, n_new))

    def _joins_open_block(self, n_new: int) -> bool:
        """A decode token joins the open block (fixed grid) until it holds chunk_size tokens."""
        return (n_new == 1 and self.length > 0 and self.open_block is not None
                and self.open_block.length < self.settings.chunk_size)

    def prepare(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Folds a new chunk into the statistics and starts copying its outlier masks to the
        host, so the copy overlaps the history reads instead of stalling the GPU in write."""
        self._pending = None
        if self.settings.full_precision_tail is not None:  # blocks are cut from the tail in write
            return
        n_sink = self._n_sink(keys.shape[1])
        keys, values = keys[:, n_sink:], values[:, n_sink:]
        if keys.shape[1] and not self._joins_open_block(keys.shape[1]):
            self._pending = self._observe(keys, values)

    def _observe(self, keys: torch.Tensor, values: torch.Tensor):
        """Statistics updated with this chunk; its (key, value) outlier masks [2, C] on their way
        to the host, with the CUDA event that says they have arrived (None on CPU)."""
        k_stats, v_stats = self.key_stats.observe(keys), self.value_stats.observe(values)
        masks = torch.stack([self._outliers(k_stats.absmax), self._outliers(v_stats.absmax)])
        if masks.device.type != "cuda":
            return masks, None
        host = masks.to("cpu", non_blocking=True)  # pinned, asynchronous
        arrived = torch.cuda.Event()
        arrived.record()
        return host, arrived

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        pending, self._pending = self._pending, None
        n_sink = self._n_sink(keys.shape[1])
        if n_sink:
            self.blocks.append(self._sink_block(keys[:, :n_sink], values[:, :n_sink]))
            keys, values = keys[:, n_sink:], values[:, n_sink:]
        if keys.shape[1] == 0:
            return
        if self.settings.full_precision_tail is not None:
            self._write_through_tail(keys, values, n_sink)
            return
        if self._joins_open_block(keys.shape[1]):
            self.key_stats.observe(keys)
            self.value_stats.observe(values)
            self.open_block.keys.extend(keys)
            self.open_block.values.extend(values)
            return
        decode = keys.shape[1] == 1 and self.length > 0
        block = self._chunk_block(keys, values, pending or self._observe(keys, values))
        self.blocks.append(block)
        self.open_block = block if decode else None

    def _write_through_tail(self, keys: torch.Tensor, values: torch.Tensor, n_sink: int) -> None:
        """New tokens join the 16-bit tail (`residual_k/v`, read and counted by PackedLayer).
        Blocks end where chunks end (multiples of chunk_size, the sink tokens taking the start
        of the first, as without a tail), and a block is quantized, with the statistics updated
        by its own tokens, once more than `full_precision_tail` tokens follow it. So with 0 a
        prefill of whole chunks is stored exactly as without a tail, and only the last, not yet
        full chunk (a prompt's end, decode tokens) waits in 16 bits."""
        first = self.length + n_sink  # absolute position of the first new token (length: before it)
        if self.residual_k is not None:  # tokens that waited are quantized from their 16 bits
            first -= self.residual_k.shape[1]
            keys = torch.cat([self.residual_k.to(keys.dtype), keys], dim=1)
            values = torch.cat([self.residual_v.to(values.dtype), values], dim=1)
        chunk = self.settings.chunk_size
        end = (first + keys.shape[1] - self.settings.full_precision_tail) // chunk * chunk
        start = first
        while start < end:
            stop = min(end, (start // chunk + 1) * chunk)
            k, v = keys[:, start - first:stop - first], values[:, start - first:stop - first]
            self.blocks.append(self._chunk_block(k, v, self._observe(k, v)))
            start = stop
        cut, raw = max(0, end - first), raw_dtype(self.dtype)
        self.residual_k = keys[:, cut:].to(raw, copy=True)
        self.residual_v = values[:, cut:].to(raw, copy=True)

    def _sink_block(self, keys: torch.Tensor, values: torch.Tensor) -> Block:
        cfg = self.settings
        k = encode(keys, cfg.key_bits_sink_outlier, ScaleLayout(), raw_dtype=raw_dtype(self.dtype),
                   fused=self.fused)
        v = encode(values, cfg.value_bits_sink_outlier, self._per_head_tokens(keys.device),
                   raw_dtype=raw_dtype(self.dtype), fused=self.fused)
        return Block(PackedTensor([k], self.n_channels), PackedTensor([v], self.n_channels),
                     meta={"sink": True})

    def _chunk_block(self, keys: torch.Tensor, values: torch.Tensor, observed) -> Block:
        """observed: what `_observe` returned for these tokens (statistics already updated)."""
        cfg = self.settings
        k_stats, v_stats = self.key_stats, self.value_stats
        # Part shapes depend on the outlier masks, so they are needed on the host.
        masks, arrived = observed
        if arrived is not None:
            arrived.synchronize()
        k_out, v_out = masks
        k_lo, k_hi = self._range(k_stats, keys)
        per_channel_values = cfg.value_quant_groups == 0
        v_lo, v_hi = self._range(v_stats, values) if per_channel_values else (None, None)

        def key_layout(idx: torch.Tensor, outlier: bool):
            i = idx.long()
            return ScaleLayout(symmetric=False), (k_lo[i], k_hi[i])

        def value_layout(idx: torch.Tensor, outlier: bool):
            if per_channel_values:
                i = idx.long()
                return ScaleLayout(symmetric=False), (v_lo[i], v_hi[i])
            return (self._outlier_tokens(idx) if outlier else self._grouped_tokens(idx)), None

        key_parts = self._split(keys, k_out, self.key_bits, cfg.key_bits_sink_outlier, key_layout)
        value_parts = self._split(values, v_out, self.value_bits, cfg.value_bits_sink_outlier,
                                  value_layout)
        return Block(PackedTensor(key_parts, self.n_channels),
                     PackedTensor(value_parts, self.n_channels),
                     meta={"key_outliers": int(k_out.sum()), "value_outliers": int(v_out.sum())})

    def _split(self, x: torch.Tensor, outliers: torch.Tensor, head_bits: tuple[int, ...], high_bits: int,
               layout_for) -> list[PackedPart]:
        """Normal channels at their head's bits, outlier channels at `high_bits`, each bit width
        its own part.

        outliers: bool [C] on the host. head_bits: the normal bits of each KV head.
        layout_for(idx, is_outlier) -> (ScaleLayout, (lo, hi) or None) for the channels idx.
        """
        if len(set(head_bits)) > 1:
            return self._split_heads(x, outliers, head_bits, high_bits, layout_for)
        bits = head_bits[0]
        if not bool(outliers.any()) or high_bits == bits:
            layout, given = layout_for(self._index(torch.ones_like(outliers), x.device), False)
            return [encode(x, bits, layout, given_range=given, raw_dtype=raw_dtype(self.dtype),
                           fused=self.fused)]
        parts = []
        for mask, b, is_outlier in ((~outliers, bits, False), (outliers, high_bits, True)):
            idx = self._index(mask, x.device)
            if idx.numel() == 0:  # an absolute threshold can flag every channel
                continue
            layout, given = layout_for(idx, is_outlier)
            parts.append(encode(x.index_select(-1, idx.long()), b, layout, channels=idx,
                                given_range=given, raw_dtype=raw_dtype(self.dtype), fused=self.fused))
        return parts

    def _split_heads(self, x: torch.Tensor, outliers: torch.Tensor, head_bits: tuple[int, ...], high_bits: int,
                     layout_for) -> list[PackedPart]:
        """Heads at different normal bits: one part per bit width over the normal channels of
        its heads (an outlier of a head already at `high_bits` stays in that head's part), then
        the other outliers at `high_bits`."""
        head_of = torch.arange(self.n_channels) // self.head_dim
        bits_of = torch.tensor(head_bits)[head_of]  # [C] normal bits of each channel's head
        spare = outliers & (bits_of != high_bits)  # outliers that need a part of their own
        parts = []
        for b in sorted(set(head_bits)):
            idx = self._index((bits_of == b) & ~spare, x.device)
            if idx.numel() == 0:
                continue
            layout, given = layout_for(idx, False)
            parts.append(encode(x.index_select(-1, idx.long()), b, layout, channels=idx, given_range=given,
                                raw_dtype=raw_dtype(self.dtype), fused=self.fused))
        if bool(spare.any()):
            idx = self._index(spare, x.device)
            layout, given = layout_for(idx, True)
            parts.append(encode(x.index_select(-1, idx.long()), high_bits, layout, channels=idx, given_range=given,
                                raw_dtype=raw_dtype(self.dtype), fused=self.fused))
        return parts

    # --- scales and layouts ------------------------------------------------------------------
    def _range(self, stats: ChannelStats, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (lo, hi) the chunk's grid spans: the running statistic, widened to the
        chunk's own range with range_mode="expand"."""
        if self.settings.range_mode == "clip":
            return stats.low, stats.high
        x = x.detach().float()
        return torch.minimum(stats.low, x.amin(dim=(0, 1))), torch.maximum(stats.high, x.amax(dim=(0, 1)))

    def _outliers(self, stat: torch.Tensor) -> torch.Tensor:
        cfg = self.settings
        if not cfg.outlier_detection:
            return torch.zeros_like(stat, dtype=torch.bool)
        return outlier_mask(stat, self.n_heads, cfg.outlier_threshold_relative, cfg.outlier_threshold_abs)

    def _grouped_tokens(self, idx: torch.Tensor) -> ScaleLayout:
        """Per token, one scale per channel group of a head, over the channels in `idx`."""
        groups = self.settings.value_quant_groups

        def layout() -> ScaleLayout:
            segment_of = idx // (self.head_dim // groups)  # head * groups + g
            if len(set(self.value_bits)) == 1:
                return ScaleLayout(token_group=1, segment_of=segment_of, n_segments=self.n_heads * groups,
                                   log_scale=True)
            # heads at different bits: a part holds some heads; scale rows for its groups only
            present, compact = torch.unique(segment_of, return_inverse=True)
            return ScaleLayout(token_group=1, segment_of=compact.to(idx.dtype), n_segments=int(present.numel()),
                               log_scale=True)
        return self.shared(("groups", id(idx)), layout)

    def _outlier_tokens(self, idx: torch.Tensor) -> ScaleLayout:
        """Outlier value channels: one scale per token over all of them (they are few)."""
        return self.shared(("outliers", id(idx)), lambda: ScaleLayout(
            token_group=1, segment_of=torch.zeros_like(idx), n_segments=1, log_scale=True))

    def _per_head_subset(self, idx: torch.Tensor) -> ScaleLayout:
        return self.shared(("heads", id(idx)), lambda: ScaleLayout(
            token_group=1, segment_of=idx // self.head_dim, n_segments=self.n_heads))

    def _per_head_tokens(self, device: torch.device) -> ScaleLayout:
        return self._per_head_subset(self._index(torch.ones(self.n_channels, dtype=torch.bool), device))

    def _index(self, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Channel indices (on `device`) of a host mask; one tensor for every block with that mask."""
        return self.shared(("index", mask.numpy().tobytes()),
                           lambda: mask.nonzero().squeeze(-1).to(device=device, dtype=INDEX_DTYPE))

    def _new_stats(self):
        """(key, value) running statistics of a fresh sequence."""
        s = self.settings
        return ChannelStats(s.ema_decay, s.statistics), ChannelStats(s.ema_decay, s.statistics)

    def reset(self) -> None:
        super().reset()  # the tail too
        self.key_stats, self.value_stats = self._new_stats()
        self.open_block, self._pending = None, None

    # --- reporting -----------------------------------------------------------------------------
    def outlier_elements(self) -> tuple[int, int]:
        k = sum(b.meta.get("key_outliers", 0) * b.length for b in self.blocks)
        v = sum(b.meta.get("value_outliers", 0) * b.length for b in self.blocks)
        return k, v

    def trace_rows(self) -> list[dict]:
        rows = []
        for kind, stats in (("key", self.key_stats), ("value", self.value_stats)):
            if stats.low is None:
                continue
            mask = self._outliers(stats.absmax).view(self.n_heads, -1)
            per_head = stats.absmax.view(self.n_heads, -1)
            for h in range(self.n_heads):
                chans = mask[h].nonzero().squeeze(-1)
                rows.append({"kind": kind, "head": h, "head_dim": self.head_dim,
                             "outlier_channels": chans.tolist(),
                             "outlier_stats": per_head[h, chans].tolist(),
                             "head_median": float(per_head[h].median()),
                             "head_max": float(per_head[h].max())})
        return rows


register_preset("streamkv-4", CompressionConfig)
# Below 4 bits, finer value groups pay for their scales (measured: README, Benchmarks).
register_preset("streamkv-3", CompressionConfig, key_bits_normal=3, value_bits_normal=3, value_quant_groups=4)
register_preset("streamkv-2", CompressionConfig, key_bits_normal=2, value_bits_normal=2, value_quant_groups=4)
