"""transformers' own quantized KV caches (`QuantizedCache`) as baselines of the same runner.

A `HFBaseline` names one backend setting (`hf-quanto-4`: optimum-quanto, int4, per-channel
groups of 64 along the head dim, the last 128 tokens in full precision). A `WorkUnit` holds it
where it would hold a `CompressionConfig`; the runner then runs the *plain* model path:
transformers' `generate`/forward with a fresh `QuantizedCache` per sample, prefill in one
forward (`chunk_size=None`, how the cache is used as shipped), or in chunks of `chunk_size`
tokens through the same cache when set.

As shipped, `QuantizedLayer.update` returns the prefill's keys/values in full precision and
quantizes them only for later steps: a one-forward perplexity window therefore sees no
quantization at all (its perplexity is the uncompressed one); generation quality and
chunked prefill are where the backend's error shows.

Availability is probed, never assumed: `available_hf_baselines()` builds each backend's cache
once and reports (available, reason). transformers 5.17 has the `quanto` and `hqq` backends
and no fp8 one: `hf-fp8` is reported unavailable with that reason, and running it raises
`HFBaselineUnavailable` (the cluster marks the unit skipped with the reason), never a silent
drop.

Results store: results are keyed by a `CompressionConfig`'s `config_id`, so each baseline is
recorded under `HFBaseline.storage_config()`: method `hf_<backend>` with the backend's bits,
`group_size=q_group_size`, `residual_length`, post-RoPE keys, no sink/outlier protection and
`chunk_size` = the prefill chunk (`UNCHUNKED` when one forward). `UnitResult.method` carries the
baseline's own name (e.g. "hf-quanto-4").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, NamedTuple

import torch

from streamkv.config import ALLOWED_BITS, CompressionConfig

# chunk_size recorded for a prefill in one forward (stand-in config only).
UNCHUNKED = 1 << 30


class HFBaselineUnavailable(RuntimeError):
    """The backend of an HF baseline cannot run here; the message says why."""


class Availability(NamedTuple):
    available: bool
    reason: str


@dataclass(frozen=True)
class HFBaseline:
    """One transformers `QuantizedCache` setting, run through the runner like a config."""

    name: str
    backend: str  # "quanto" | "hqq" | "fp8" (probed)
    nbits: int
    residual_length: int = 128
    q_group_size: int = 64
    axis_key: int = 0
    axis_value: int = 0
    # None: prefill in one forward (as shipped); N: prefill in chunks of N through the cache.
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if not self.name.startswith("hf-"):
            raise ValueError(f"HFBaseline name {self.name!r} must start with 'hf-'")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} is out of range (allowed: None or >= 1)")

    @property
    def method(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> HFBaseline:
        return dataclasses.replace(self, **changes)

    def storage_config(self) -> CompressionConfig:
        """The `CompressionConfig` (method `hf_<backend>`) results are stored under."""
        bits = self.nbits if self.nbits in ALLOWED_BITS else 8
        return CompressionConfig(
            method=f"hf_{self.backend}", key_bits_normal=bits, value_bits_normal=bits,
            key_bits_sink_outlier=max(8, bits), value_bits_sink_outlier=max(8, bits),
            group_size=self.q_group_size, residual_length=self.residual_length,
            pre_rope_keys=False, sink_protection=False, outlier_detection=False,
            value_quant_groups=0, chunk_size=self.chunk_size or UNCHUNKED)

    @property
    def config_id(self) -> str:
        return self.storage_config().config_id


HF_BASELINES: dict[str, HFBaseline] = {
    b.name: b for b in (
        HFBaseline("hf-quanto-4", "quanto", 4),
        HFBaseline("hf-quanto-2", "quanto", 2),
        HFBaseline("hf-hqq-4", "hqq", 4),
        HFBaseline("hf-fp8", "fp8", 8),
    )
}


def hf_baseline(name: str, **overrides: Any) -> HFBaseline:
    """A named HF baseline (see HF_BASELINES), optionally with fields changed."""
    if name not in HF_BASELINES:
        raise ValueError(f"unknown HF baseline {name!r}; allowed: {', '.join(HF_BASELINES)}")
    known = {f.name for f in dataclasses.fields(HFBaseline)} - {"name", "backend"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown HFBaseline field(s) {unknown}; allowed: {sorted(known)}")
    return HF_BASELINES[name].replace(**overrides)


def _probe_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=1, num_key_value_heads=1)


def make_cache(baseline: HFBaseline, model_config):
    """A fresh `QuantizedCache` for `model_config`; HFBaselineUnavailable with the reason."""
    from transformers import __version__ as tf_version
    from transformers.cache_utils import QuantizedCache

    try:
        return QuantizedCache(backend=baseline.backend, config=model_config, nbits=baseline.nbits,
                              axis_key=baseline.axis_key, axis_value=baseline.axis_value,
                              q_group_size=baseline.q_group_size,
                              residual_length=baseline.residual_length)
    except ValueError as err:
        if "Unknown quantization backend" in str(err):
            backends = ", ".join(_backends_here()) or "none"
            raise HFBaselineUnavailable(
                f"{baseline.name}: transformers {tf_version} QuantizedCache has no "
                f"{baseline.backend!r} backend (backends here: {backends})") from None
        raise HFBaselineUnavailable(f"{baseline.name}: {err}") from None
    except ImportError as err:
        raise HFBaselineUnavailable(f"{baseline.name}: {err}".strip()) from None


@lru_cache(maxsize=1)
def _backends_here() -> tuple[str, ...]:
    from transformers.cache_utils import QuantizedCache

    found = []
    for backend in ("quanto", "hqq", "fp8"):
        try:
            QuantizedCache(backend=backend, config=_probe_config())
        except ValueError as err:
            if "Unknown quantization backend" in str(err):
                continue
        except ImportError:  # known to transformers, its package is missing here
            pass
        found.append(backend)
    return tuple(found)


@cache
def _availability(baseline: HFBaseline) -> Availability:
    try:
        cache = make_cache(baseline, _probe_config())
        # quanto's kernels and quantizer are only exercised on the first real update.
        g = baseline.q_group_size
        k = torch.randn(1, 1, g, g)  # every grouping axis a multiple of the group size
        cache.update(k, k.clone(), 0)
        cache.update(k[:, :, :1], k[:, :, :1].clone(), 0)
    except HFBaselineUnavailable as err:
        return Availability(False, str(err))
    except Exception as err:  # noqa: BLE001 - the reason is the point
        return Availability(False, f"{baseline.name}: {type(err).__name__}: {err}")
    return Availability(True, "available")


def availability(baseline: HFBaseline) -> Availability:
    return _availability(baseline)


def available_hf_baselines() -> dict[str, Availability]:
    """Every named HF baseline -> (available, reason)."""
    return {name: _availability(b) for name, b in HF_BASELINES.items()}


def require_available(baseline: HFBaseline) -> None:
    status = _availability(baseline)
    if not status.available:
        raise HFBaselineUnavailable(status.reason)


# --- measuring the cache ------------------------------------------------------------------------
def _leaf_tensors(t: Any) -> list[torch.Tensor]:
    """Plain tensors behind a tensor subclass (quanto's packed/qbits tensors flatten)."""
    if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [leaf for n in names for leaf in _leaf_tensors(getattr(t, n))]
    if isinstance(t, torch.Tensor):
        return [t]
    if isinstance(t, (tuple, list)):
        return [leaf for x in t for leaf in _leaf_tensors(x)]
    if isinstance(t, dict):
        return [leaf for x in t.values() for leaf in _leaf_tensors(x)]
    return []


def cache_stats(cache, model_config) -> dict[str, Any]:
    """tokens, kv_bytes (measured from the cache's tensors), fp16_kv_bytes, avg bits, ratio.

    kv_bytes counts every tensor a layer holds: quantized codes, scales, shifts and the
    full-precision residual. None (with `kv_bytes_note`) when a layer's storage is not made
    of tensors this function can see.
    """
    from streamkv.cache import head_dim_of

    layers = cache.layers
    tokens = layers[0].get_seq_length() if layers else 0
    batch = 0
    held_bytes = {"keys": 0, "values": 0}
    note = ""
    for layer in layers:
        for kind, names in (("keys", ("_quantized_keys", "keys")), ("values", ("_quantized_values", "values"))):
            for name in names:
                value = getattr(layer, name, None)
                if value is None:
                    continue
                leaves = _leaf_tensors(value)
                if not leaves and not isinstance(value, torch.Tensor):
                    note = f"{type(layer).__name__}.{name} is a {type(value).__name__}, not tensors"
                held_bytes[kind] += sum(t.numel() * t.element_size() for t in leaves)
                if not batch:
                    batch = next((t.shape[0] for t in leaves if t.dim() == 4 and t.numel()), 0)
    n_kv = model_config.num_key_value_heads
    elements = max(batch, 1) * tokens * n_kv * head_dim_of(model_config) * len(layers)  # per K or V
    fp16 = 2 * 2 * elements
    kv_bytes = None if note else held_bytes["keys"] + held_bytes["values"]

    def bits(n_bytes: int | None, n_elements: int) -> float | None:
        return 8 * n_bytes / n_elements if n_bytes is not None and n_elements else None

    return {
        "tokens": tokens,
        "kv_bytes": kv_bytes,
        "fp16_kv_bytes": fp16,
        "avg_key_bits": None if note else bits(held_bytes["keys"], elements),
        "avg_value_bits": None if note else bits(held_bytes["values"], elements),
        "avg_bits": bits(kv_bytes, 2 * elements),
        "compression_ratio": fp16 / kv_bytes if kv_bytes else None,
        "kv_bytes_note": note,
    }


__all__ = [
    "HF_BASELINES",
    "UNCHUNKED",
    "Availability",
    "HFBaseline",
    "HFBaselineUnavailable",
    "availability",
    "available_hf_baselines",
    "cache_stats",
    "hf_baseline",
    "make_cache",
    "require_available",
]
