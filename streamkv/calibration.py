"""Offline per-channel statistics for `method="calibrated"` (a KVQuant-style counterpart).

streamkv's own method learns each channel's range while it runs (`streamkv.stats.ChannelStats`:
an EMA of each chunk's per-channel min and max); the calibrated method instead fixes the ranges
beforehand from held-apart text, as KVQuant does (it calibrates on 16 x 2K-token training
samples): `calibrate(model, windows)` runs the UNCOMPRESSED model over the windows and records,
for every layer and channel, the range (low, high) of

- keys before RoPE (`key_pre_rope`, what pre_rope_keys=True stores), and after RoPE
  (`key_post_rope`, for pre_rope_keys=False),
- values (`value`),

over all calibration tokens except the first `skip_tokens` of each window (4 by default: the
attention sinks, which the method stores at their own bits with their own scales; their
outsized values would otherwise set every range).

The statistic is the per-channel min and max by default (`percentile=None`): the calibrated
range covers every calibration value, so clipping happens only on values beyond any seen in
calibration. `percentile=q` (e.g. 99.9) takes the (100-q)-th and q-th percentiles per channel
instead (tighter grids, more clipping: the trade-off KVQuant's outlier percentile makes).
Outlier channels are picked from the range's absmax, max(|low|, |high|), as the streaming
method picks them from its running statistics.

`save_calibration(calib, path)` writes a .pt holding a format `version`, the model dims
(num_layers, num_kv_heads, head_dim) and metadata (text hash, window length and indices,
tokens, statistic); `load_calibration(path)` checks the version. `CalibratedLayer`
(`streamkv.methods.calibrated`) checks the dims against the model it runs on.

    python -m streamkv.calibration --model smollm2-135m --windows 16 --context-length 2048 \\
        --out results/calibration/smollm2-135m.pt

takes WikiText-2's FIRST windows; evaluate on later windows (the perplexity runner reports
`calibration_overlap_windows` when the two overlap).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from streamkv import quant

CALIBRATION_VERSION = 1


KINDS: tuple[str, ...] = ("key_pre_rope", "key_post_rope", "value")


@dataclass
class Calibration:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    # kind -> [2, L, C] float32: (low, high) per layer and channel, C = num_kv_heads * head_dim
    # in the flat channel order of the cache (head-major).
    ranges: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return {"num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim}

    def range(self, kind: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) [C] of `kind` ("key_pre_rope" | "key_post_rope" | "value") in `layer`."""
        r = self.ranges[kind]
        return r[0, layer], r[1, layer]

    def key_range(self, layer: int, pre_rope: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.range("key_pre_rope" if pre_rope else "key_post_rope", layer)

    def absmax(self, kind: str) -> torch.Tensor:
        """[L, C] max(|low|, |high|)."""
        r = self.ranges[kind]
        return torch.maximum(r[0].abs(), r[1].abs())

    def check_dims(self, num_layers: int | None, num_kv_heads: int, head_dim: int, where: str = "") -> None:
        want = {"num_kv_heads": num_kv_heads, "head_dim": head_dim}
        if num_layers is not None:
            want["num_layers"] = num_layers
        wrong = [f"{k}={self.dims[k]} (model: {v})" for k, v in want.items() if self.dims[k] != v]
        if wrong:
            src = f" {where}" if where else ""
            raise ValueError(f"calibration file{src} does not match the model: " + ", ".join(wrong)
                             + "; calibrate this model with streamkv.calibration.calibrate")


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


@torch.no_grad()
def calibrate(loaded_or_model, token_windows, *, skip_tokens: int = 4, percentile: float | None = None,
              meta: dict[str, Any] | None = None) -> Calibration:
    """Per-layer, per-channel statistics of the uncompressed model on `token_windows`.

    `loaded_or_model`: a `LoadedModel`, a `CompressedLlamaForCausalLM` (run with the lossless
    `none` config, restored after) or a plain transformers Llama. `token_windows`: a list of 1D
    id tensors or a [N, T] tensor; each window is one forward from position 0.
    """
    from streamkv.cache import head_dim_of
    from streamkv.config import baseline

    if percentile is not None and not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile} is out of range (allowed: None or 0 < p <= 100)")
    model = _unwrap(loaded_or_model)
    cfg = model.config
    n_layers, n_kv, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim_of(cfg)
    windows = [w.view(-1) for w in (token_windows if not torch.is_tensor(token_windows) else token_windows.unbind(0))]
    if not windows:
        raise ValueError("calibrate needs at least one token window")
    if any(w.numel() <= skip_tokens for w in windows):
        raise ValueError(f"every window needs more than skip_tokens={skip_tokens} tokens")
    layers = model.model.layers
    # min/max: running per layer and kind; percentile: every row kept (on the CPU).
    low: dict[str, list[torch.Tensor | None]] = {k: [None] * n_layers for k in KINDS}
    high: dict[str, list[torch.Tensor | None]] = {k: [None] * n_layers for k in KINDS}
    kept: dict[str, list[list[torch.Tensor]]] = {k: [[] for _ in range(n_layers)] for k in KINDS}
    current: dict[str, torch.Tensor] = {}

    def add(kind: str, layer_idx: int, x: torch.Tensor) -> None:
        rows = x[:, skip_tokens:].reshape(-1, x.shape[-1])
        if percentile is not None:
            kept[kind][layer_idx].append(rows.cpu())
            return
        lo, hi = rows.amin(dim=0).cpu(), rows.amax(dim=0).cpu()
        old_lo, old_hi = low[kind][layer_idx], high[kind][layer_idx]
        low[kind][layer_idx] = lo if old_lo is None else torch.minimum(old_lo, lo)
        high[kind][layer_idx] = hi if old_hi is None else torch.maximum(old_hi, hi)

    def hook(layer_idx: int, kind: str):
        def record(module, args, output):
            x = output.detach().float()  # [B, S, n_kv * hd], flat channels head-major
            if kind == "value":
                add("value", layer_idx, x)
                return
            add("key_pre_rope", layer_idx, x)
            b, s, c = x.shape
            heads = x.view(b, s, n_kv, hd).transpose(1, 2)
            post = quant.apply_rope(heads, current["cos"], current["sin"])
            add("key_post_rope", layer_idx, post.transpose(1, 2).reshape(b, s, c))
        return record

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.k_proj.register_forward_hook(hook(i, "key")))
        handles.append(layer.self_attn.v_proj.register_forward_hook(hook(i, "value")))
    saved = getattr(model, "compression_config", None)
    tokens = 0
    try:
        for window in windows:
            ids = window.view(1, -1).to(model.device)
            if saved is not None:  # our model: lossless cache, one chunk (keys/values are pre-cache)
                model.compression_config = baseline("none", chunk_size=ids.shape[1])
            positions = torch.arange(ids.shape[1], device=model.device).view(1, -1)
            probe = torch.empty(0, dtype=torch.float32, device=model.device)
            current["cos"], current["sin"] = (t.float() for t in model.model.rotary_emb(probe, positions))
            model(ids, logits_to_keep=1)
            tokens += ids.shape[1] - skip_tokens
    finally:
        for handle in handles:
            handle.remove()
        if saved is not None:
            model.compression_config = saved
    if percentile is None:
        ranges = {k: torch.stack([torch.stack(low[k]), torch.stack(high[k])]) for k in KINDS}
    else:
        q = percentile / 100.0
        ranges = {k: torch.stack([torch.stack([_percentile(rows, 1.0 - q) for rows in kept[k]]),
                                  torch.stack([_percentile(rows, q) for rows in kept[k]])]) for k in KINDS}
    info = {"statistic": "min/max" if percentile is None else f"percentile {100 - percentile:g}/{percentile:g}",
            "skip_tokens": skip_tokens, "windows_count": len(windows),
            "window_tokens": [int(w.numel()) for w in windows], "tokens": tokens,
            "model_type": getattr(cfg, "model_type", None), **(meta or {})}
    return Calibration(n_layers, n_kv, hd, ranges, info)


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


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "streamkv-calibration", "version": CALIBRATION_VERSION, "dims": calibration.dims,
                "ranges": {k: v.float().cpu().contiguous() for k, v in calibration.ranges.items()},
                "meta": calibration.meta}, p)
    _load_cached.cache_clear()
    return p


def load_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"calibration file {p} not found (write one with streamkv.calibration)")
    return _load_cached(str(p.resolve()), p.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Calibration:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "streamkv-calibration":
        raise ValueError(f"{path} is not a streamkv calibration file")
    if blob.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"{path}: calibration format version {blob.get('version')!r}; this streamkv reads "
                         f"version {CALIBRATION_VERSION} (recalibrate)")
    dims = blob["dims"]
    calib = Calibration(int(dims["num_layers"]), int(dims["num_kv_heads"]), int(dims["head_dim"]),
                        dict(blob["ranges"]), dict(blob.get("meta") or {}))
    want = (2, calib.num_layers, calib.num_kv_heads * calib.head_dim)
    for kind in KINDS:
        if kind not in calib.ranges:
            raise ValueError(f"{path}: no {kind!r} ranges")
        if tuple(calib.ranges[kind].shape) != want:
            raise ValueError(f"{path}: {kind} ranges have shape {tuple(calib.ranges[kind].shape)}, dims say {want}")
    return calib


def calibration_info(path: str | Path) -> dict[str, Any]:
    """What a result records about its calibration file: path, sha256, dims and metadata."""
    p = Path(path)
    calib = load_calibration(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"path": str(p), "sha256": digest, **calib.dims, **calib.meta}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from streamkv.models import load_model

    ap = argparse.ArgumentParser(description="Write a calibration file for method='calibrated'.")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=None, help="raw text file (default: the repo's WikiText-2 test)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--first", type=int, default=0, help="index of the first window used")
    ap.add_argument("--percentile", type=float, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    default = Path(__file__).resolve().parent.parent / "data" / "wikitext-2-raw" / "wiki.test.raw"
    text_path = Path(args.text or default)
    text = text_path.read_text(encoding="utf-8")
    loaded = load_model(args.model)
    # The file's hash, as the perplexity runner records it (not the decoded text's).
    file_sha = hashlib.sha256(text_path.read_bytes()).hexdigest()
    calib = calibrate_text(loaded, text, windows=args.windows, context_length=args.context_length,
                           first=args.first, percentile=args.percentile,
                           meta={"text_sha256": file_sha, "text_path": str(text_path)})
    print(f"wrote {save_calibration(calib, args.out)}: {calib.dims}, {calib.meta['tokens']} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CALIBRATION_VERSION", "KINDS", "Calibration", "calibrate", "calibrate_text", "calibration_info",
           "load_calibration", "save_calibration"]
