"""`CompressionConfig`: every knob of the method and of the baselines, validated once.

The config is frozen and hashable; `config_id` is a short content hash the results store
uses as a key, so two runs with the same settings land on the same row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Literal

# Which cache-layer class quantizes the tokens (see `streamkv.methods`). The hf_* methods are
# transformers' own QuantizedCache backends, run by `workers.hf_baselines`: a config with one
# of them records such a baseline's settings in the results store; it builds no streamkv cache.
Method = Literal["streamkv", "none", "int8", "int4_token", "kivi", "calibrated",
                 "hf_quanto", "hf_hqq", "hf_fp8"]
METHODS: tuple[str, ...] = ("streamkv", "none", "int8", "int4_token", "kivi", "calibrated",
                            "hf_quanto", "hf_hqq", "hf_fp8")
ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 8, 16)
STATISTICS: tuple[str, ...] = ("ema", "chunk")
RANGE_MODES: tuple[str, ...] = ("expand", "clip")


@dataclass(frozen=True)
class CompressionConfig:
    """Settings of one compressed KV cache. Field docs are the README's config table."""

    method: Method = "streamkv"
    # Prefill is run in chunks of this many tokens; each chunk is quantized once it is produced.
    chunk_size: int = 512
    # Running statistic: stat <- decay * stat + (1 - decay) * absmax(chunk), per channel.
    ema_decay: float = 0.9
    # The first tokens of every sequence (cache slots 0..n-1) are kept at the sink/outlier bits.
    attention_sink_size: int = 4
    key_bits_normal: int = 4
    value_bits_normal: int = 4
    key_bits_sink_outlier: int = 8
    value_bits_sink_outlier: int = 8
    # A channel is an outlier when its statistic exceeds this multiple of its head's median...
    outlier_threshold_relative: float = 3.0
    # ...or this absolute value, when set.
    outlier_threshold_abs: float | None = None
    # Values are quantized per token in this many channel groups per head; 0 = per channel.
    value_quant_groups: int = 1
    # Ablation switches of the method.
    pre_rope_keys: bool = True
    sink_protection: bool = True
    outlier_detection: bool = True
    statistics: Literal["ema", "chunk"] = "ema"
    # How a chunk whose values exceed the running statistic is handled: "expand" widens that
    # chunk's stored scale to max(statistic, chunk absmax); "clip" saturates at the statistic.
    range_mode: Literal["expand", "clip"] = "expand"
    # Strict protocol (as KVQuant's tables): a chunk's queries attend to the quantized version
    # of its own keys/values too, not only of the history.
    quantize_current_chunk: bool = False
    # KIVI-style options: token group of per-channel key scales / channel group of per-token
    # value scales, and the most recent tokens kept in full precision.
    group_size: int = 32
    residual_length: int = 0
    # method="calibrated": per-layer channel statistics measured offline (path to a .pt file
    # written by `streamkv.calibration.save_calibration`).
    calibration_path: str | None = None

    def __post_init__(self) -> None:
        problems = validate_fields(self)
        if problems:
            raise ValueError("invalid CompressionConfig: " + "; ".join(problems))

    # --- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown CompressionConfig field(s) {unknown}; allowed: {sorted(known)}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> "CompressionConfig":
        return dataclasses.replace(self, **changes)

    @property
    def config_id(self) -> str:
        """Stable 12-hex content hash of the effective settings."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def is_lossless(self) -> bool:
        return self.method == "none"

    def check_head_dim(self, head_dim: int) -> None:
        """Checks the fields that depend on the model; called when a cache is built."""
        groups = self.value_quant_groups
        if self.method == "streamkv" and groups and head_dim % groups:
            raise ValueError(
                f"value_quant_groups={groups} must divide the model's head_dim={head_dim} "
                f"(allowed: 0 or a divisor of {head_dim})"
            )
        if self.method == "kivi" and head_dim % self.group_size and self.group_size < head_dim:
            raise ValueError(
                f"group_size={self.group_size} must divide the model's head_dim={head_dim} "
                "for KIVI's per-token value groups"
            )


def _in_range(name: str, value: Any, ok: bool, allowed: str) -> list[str]:
    return [] if ok else [f"{name}={value!r} is out of range (allowed: {allowed})"]


def validate_fields(cfg: CompressionConfig) -> list[str]:
    """All problems of a config at once, each naming the field, its value and the range."""
    p: list[str] = []
    p += _in_range("method", cfg.method, cfg.method in METHODS, " | ".join(METHODS))
    for name in ("chunk_size", "attention_sink_size", "value_quant_groups", "group_size",
                 "residual_length"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool):
            p.append(f"{name}={value!r} must be an integer")
    if p:
        return p
    p += _in_range("chunk_size", cfg.chunk_size, cfg.chunk_size >= 1, "integer >= 1")
    p += _in_range("ema_decay", cfg.ema_decay,
                   isinstance(cfg.ema_decay, (int, float)) and 0.0 < cfg.ema_decay < 1.0,
                   "0 < ema_decay < 1")
    p += _in_range("attention_sink_size", cfg.attention_sink_size, cfg.attention_sink_size >= 0,
                   "integer >= 0")
    for name in ("key_bits_normal", "value_bits_normal", "key_bits_sink_outlier",
                 "value_bits_sink_outlier"):
        value = getattr(cfg, name)
        p += _in_range(name, value, value in ALLOWED_BITS and not isinstance(value, bool),
                       "one of 2, 3, 4, 8, 16")
    for kind in ("key", "value"):
        normal, high = getattr(cfg, f"{kind}_bits_normal"), getattr(cfg, f"{kind}_bits_sink_outlier")
        if normal in ALLOWED_BITS and high in ALLOWED_BITS and high < normal:
            p.append(f"{kind}_bits_sink_outlier={high} must be >= {kind}_bits_normal={normal} "
                     "(protected tokens/channels never get fewer bits)")
    rel = cfg.outlier_threshold_relative
    p += _in_range("outlier_threshold_relative", rel,
                   isinstance(rel, (int, float)) and not isinstance(rel, bool) and rel > 1.0,
                   "a number > 1 (multiple of the head's median channel statistic)")
    ab = cfg.outlier_threshold_abs
    p += _in_range("outlier_threshold_abs", ab,
                   ab is None or (isinstance(ab, (int, float)) and ab > 0), "None or a number > 0")
    p += _in_range("value_quant_groups", cfg.value_quant_groups, cfg.value_quant_groups >= 0,
                   "0 (per channel) or a divisor of head_dim")
    p += _in_range("statistics", cfg.statistics, cfg.statistics in STATISTICS, "ema | chunk")
    p += _in_range("range_mode", cfg.range_mode, cfg.range_mode in RANGE_MODES, "expand | clip")
    p += _in_range("group_size", cfg.group_size, cfg.group_size >= 1, "integer >= 1")
    p += _in_range("residual_length", cfg.residual_length, cfg.residual_length >= 0,
                   "integer >= 0")
    for name in ("pre_rope_keys", "sink_protection", "outlier_detection", "quantize_current_chunk"):
        value = getattr(cfg, name)
        p += _in_range(name, value, isinstance(value, bool), "true | false")
    if cfg.method == "calibrated" and not cfg.calibration_path:
        p.append("calibration_path=None is required when method='calibrated' "
                 "(a file written by streamkv.calibration.save_calibration)")
    if cfg.method == "kivi" and cfg.key_bits_normal not in (2, 4):
        p.append(f"key_bits_normal={cfg.key_bits_normal} is out of range for method='kivi' "
                 "(allowed: 2 | 4)")
    return p


# --- the peers as configs of the same code path ---------------------------------------------
def baseline(name: str, **overrides: Any) -> CompressionConfig:
    """Named configs of the peers: none, int8, int4_token, kivi-4, kivi-2, streamkv-{4,3,2}."""
    presets: dict[str, dict[str, Any]] = {
        "none": dict(method="none", key_bits_normal=16, value_bits_normal=16,
                     key_bits_sink_outlier=16, value_bits_sink_outlier=16),
        "int8": dict(method="int8", key_bits_normal=8, value_bits_normal=8),
        "int4_token": dict(method="int4_token", key_bits_normal=4, value_bits_normal=4),
        "kivi-4": dict(method="kivi", key_bits_normal=4, value_bits_normal=4, group_size=32,
                       residual_length=128, pre_rope_keys=False),
        "kivi-2": dict(method="kivi", key_bits_normal=2, value_bits_normal=2, group_size=32,
                       residual_length=128, pre_rope_keys=False),
        "streamkv-4": dict(),
        # Below 4 bits, finer value groups pay for their scales (measured: README, Benchmarks).
        "streamkv-3": dict(key_bits_normal=3, value_bits_normal=3, value_quant_groups=4),
        "streamkv-2": dict(key_bits_normal=2, value_bits_normal=2, value_quant_groups=4),
    }
    if name not in presets:
        raise ValueError(f"unknown baseline {name!r}; allowed: {sorted(presets)}")
    return CompressionConfig(**{**presets[name], **overrides})


BASELINES: tuple[str, ...] = ("none", "int8", "int4_token", "kivi-4", "kivi-2",
                              "streamkv-4", "streamkv-3", "streamkv-2")
