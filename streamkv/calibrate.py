"""Measuring a calibration file for `method="calibrated"` (a KVQuant-style counterpart).

streamkv's own method learns each channel's range while it runs (`streamkv.channel_stats`: an
EMA of each chunk's per-channel min and max); the calibrated method instead fixes the ranges
beforehand from held-apart text, as KVQuant does (it calibrates on 16 x 2K-token training
samples): `calibrate(model, windows)` runs the UNCOMPRESSED model over the windows and records,
for every layer and channel, the range (low, high) of the keys the attention hands to its
cache, after RoPE (`key_post_rope`) and rotated back before RoPE with the same cos/sin
(`key_pre_rope`, what pre_rope_keys=True stores; for Qwen3 that is after its k-norm, as the
cache sees them), and of the values (`value`), over all calibration tokens except the first
`skip_tokens` of each window (4 by default: the attention sinks, which the method stores at
their own bits with their own scales; their outsized values would otherwise set every range).

The statistic is the per-channel min and max by default (`percentile=None`): the calibrated
range covers every calibration value, so clipping happens only on values beyond any seen in
calibration. `percentile=q` (e.g. 99.9) takes the (100-q)-th and q-th percentiles per channel
instead (tighter grids, more clipping: the trade-off KVQuant's outlier percentile makes).

    python -m workers.calibrate --model smollm2-135m --windows 16 --context-length 2048 \\
        --out results/calibration/smollm2-135m.pt

takes WikiText-2's FIRST windows; evaluate on later windows (the perplexity runner reports
`calibration_overlap_windows` when the two overlap).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from transformers import DynamicCache

from streamkv import quant
from streamkv.calibration import KINDS, Calibration
from streamkv.families import head_dim_of
from streamkv.layers import to_flat


def _unwrap(loaded_or_model):
    """The causal LM of a `LoadedModel` (which has a tokenizer), or the model itself."""
    if isinstance(loaded_or_model, torch.nn.Module):
        return loaded_or_model
    return loaded_or_model.model


def _percentile(chunks: list[torch.Tensor], q: float) -> torch.Tensor:
    """[N_i, C] signed chunks -> [C] per-channel q-quantile (q in [0, 1])."""
    x = torch.cat(chunks, dim=0)
    out = torch.empty(x.shape[1])
    # torch.quantile caps its input size: go a block of channels at a time.
    step = max(1, (1 << 23) // max(x.shape[0], 1))
    for start in range(0, x.shape[1], step):
        out[start:start + step] = torch.quantile(x[:, start:start + step], q, dim=0)
    return out


class _Ranges:
    """Per layer and kind: running min/max, or every row (on the CPU) for percentiles."""

    def __init__(self, n_layers: int, skip_tokens: int, percentile: float | None):
        self.skip, self.percentile = skip_tokens, percentile
        self.low: dict[str, list[torch.Tensor | None]] = {k: [None] * n_layers for k in KINDS}
        self.high: dict[str, list[torch.Tensor | None]] = {k: [None] * n_layers for k in KINDS}
        self.kept: dict[str, list[list[torch.Tensor]]] = {k: [[] for _ in range(n_layers)] for k in KINDS}

    def add(self, kind: str, layer_idx: int, x: torch.Tensor) -> None:
        """x [B, S, C] (flat channels, head-major) of one window."""
        rows = x[:, self.skip:].reshape(-1, x.shape[-1]).float()
        if self.percentile is not None:
            self.kept[kind][layer_idx].append(rows.cpu())
            return
        lo, hi = rows.amin(dim=0).cpu(), rows.amax(dim=0).cpu()
        old_lo, old_hi = self.low[kind][layer_idx], self.high[kind][layer_idx]
        self.low[kind][layer_idx] = lo if old_lo is None else torch.minimum(old_lo, lo)
        self.high[kind][layer_idx] = hi if old_hi is None else torch.maximum(old_hi, hi)

    def tensors(self) -> dict[str, torch.Tensor]:
        """kind -> [2, L, C] (low, high)."""
        if self.percentile is None:
            return {k: torch.stack([torch.stack(self.low[k]), torch.stack(self.high[k])]) for k in KINDS}
        q = self.percentile / 100.0
        return {k: torch.stack([torch.stack([_percentile(rows, 1.0 - q) for rows in self.kept[k]]),
                                torch.stack([_percentile(rows, q) for rows in self.kept[k]])]) for k in KINDS}


class _RecordingCache(DynamicCache):
    """A plain DynamicCache that also records what each attention layer stores in it."""

    def __init__(self, ranges: _Ranges, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.ranges, self.cos, self.sin = ranges, cos, sin

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # key_states / value_states [B, H, S, D], keys post-RoPE
        self.ranges.add("key_post_rope", layer_idx, to_flat(key_states.float()))
        self.ranges.add("key_pre_rope", layer_idx, to_flat(quant.invert_rope(key_states, self.cos, self.sin)))
        self.ranges.add("value", layer_idx, to_flat(value_states.float()))
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


@torch.no_grad()
def calibrate(loaded_or_model, token_windows, *, skip_tokens: int = 4, percentile: float | None = None,
              meta: dict[str, Any] | None = None) -> Calibration:
    """Per-layer, per-channel statistics of the uncompressed model on `token_windows`.

    `loaded_or_model`: a `LoadedModel`, a streamkv compressed model or a plain transformers
    model of a supported family. `token_windows`: a list of 1D id tensors or a [N, T] tensor;
    each window is one forward from position 0 (no chunking, nothing quantized).
    """
    if percentile is not None and not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile} is out of range (allowed: None or 0 < p <= 100)")
    model = _unwrap(loaded_or_model)
    cfg = model.config
    windows = [w.view(-1) for w in (token_windows if not torch.is_tensor(token_windows) else token_windows.unbind(0))]
    if not windows:
        raise ValueError("calibrate needs at least one token window")
    if any(w.numel() <= skip_tokens for w in windows):
        raise ValueError(f"every window needs more than skip_tokens={skip_tokens} tokens")
    ranges = _Ranges(cfg.num_hidden_layers, skip_tokens, percentile)
    tokens = 0
    for window in windows:
        ids = window.view(1, -1).to(model.device)
        positions = torch.arange(ids.shape[1], device=model.device).view(1, -1)
        probe = torch.empty(0, dtype=torch.float32, device=model.device)
        cos, sin = (t.float() for t in model.model.rotary_emb(probe, positions))
        # A streamkv model runs its chunked prefill into this full-precision cache: the keys and
        # values it records are the unchunked ones up to float rounding.
        model(ids, past_key_values=_RecordingCache(ranges, cos, sin), logits_to_keep=1)
        tokens += ids.shape[1] - skip_tokens
    info = {"statistic": "min/max" if percentile is None else f"percentile {100 - percentile:g}/{percentile:g}",
            "skip_tokens": skip_tokens, "windows_count": len(windows),
            "window_tokens": [int(w.numel()) for w in windows], "tokens": tokens,
            "model_type": getattr(cfg, "model_type", None), **(meta or {})}
    return Calibration(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim_of(cfg), ranges.tensors(), info)


def calibrate_text(loaded, text: str, *, windows: int = 16, context_length: int = 2048, first: int = 0,
                   **kwargs) -> Calibration:
    """Calibrate on windows `first .. first+windows-1` of `text` tokenized by `loaded.tokenizer`
    (non-overlapping windows of `context_length`, as the perplexity protocol cuts them)."""
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    n = ids.numel() // context_length
    if first + windows > n:
        raise ValueError(f"the text has {n} windows of {context_length} tokens; asked for {first}..{first + windows - 1}")
    chosen = list(range(first, first + windows))
    parts = [ids[i * context_length:(i + 1) * context_length] for i in chosen]
    meta = {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "context_length": context_length,
            "windows": chosen, "model_id": getattr(loaded, "model_id", None)}
    return calibrate(loaded, parts, meta={**meta, **kwargs.pop("meta", {})}, **kwargs)


__all__ = ["calibrate", "calibrate_text"]
