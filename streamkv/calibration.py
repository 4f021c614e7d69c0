"""The calibration file of `method="calibrated"` (KVQuant-style fixed statistics): its format.

A `Calibration` holds, for every layer and channel, the range (low, high) of keys before RoPE
(`key_pre_rope`, what pre_rope_keys=True stores), keys after RoPE (`key_post_rope`) and values
(`value`), measured offline by `streamkv.calibrate` on held-apart text. `save_calibration`
writes a .pt holding a format `version`, the model dims (num_layers, num_kv_heads, head_dim)
and metadata (text hash, window length and indices, tokens, statistic); `load_calibration`
checks the version and the shapes. `Calibrated.model_problems` checks the dims against the
model it runs on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch


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

    def mismatch(self, num_layers: int, num_kv_heads: int, head_dim: int) -> str:
        """'' when the file's dims are the model's, else which differ."""
        want = {"num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim}
        return ", ".join(f"{k}={self.dims[k]} (model: {v})" for k, v in want.items() if self.dims[k] != v)


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
        raise FileNotFoundError(f"calibration file {p} not found (write one with python -m workers.calibrate)")
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


__all__ = ["CALIBRATION_VERSION", "KINDS", "Calibration", "calibration_info", "load_calibration",
           "save_calibration"]
