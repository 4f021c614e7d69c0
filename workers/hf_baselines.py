"""transformers' own quantized KV caches (`QuantizedCache`) as a method of the same runner.

`HFQuantized` (method "hf_quantized") is registered in streamkv's method registry from here,
through the same public API a user's method uses: it builds no streamkv cache layers but a
fresh transformers `QuantizedCache` (`new_cache`), and measures it (`stats`). Presets:
`hf-quanto-4` (optimum-quanto, int4, groups of 64 along the head dim, the last 128 tokens in
full precision), `hf-quanto-2`, `hf-hqq-4`, `hf-fp8`. Prefill runs in one forward
(`chunk_size=None`, how the cache is used as shipped), or in chunks of `chunk_size` tokens
through the same cache when set.

As shipped, `QuantizedLayer.update` returns the prefill's keys/values in full precision and
quantizes them only for later steps: a one-forward perplexity window therefore sees no
quantization at all (its perplexity is the uncompressed one); generation quality and
chunked prefill are where the backend's error shows.

Availability is probed, never assumed: `availability(method)` builds the backend's cache once
and reports (available, reason). transformers 5.17 has the `quanto` and `hqq` backends and no
fp8 one: `hf-fp8` is reported unavailable with that reason, and building its cache raises
`HFBaselineUnavailable` (a `streamkv.methods.MethodUnavailable`: the cluster marks the unit
skipped with the reason), never a silent drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, NamedTuple

import torch

from streamkv.compression_stats import CompressionStats
from streamkv.families import head_dim_of
from streamkv.methods import Method, MethodUnavailable, register_method, register_preset
from streamkv.settings import integer, one_of, optional, setting

class HFBaselineUnavailable(MethodUnavailable):
    """The backend of an HF baseline cannot run here; the message says why."""


class Availability(NamedTuple):
    available: bool
    reason: str


@register_method
@dataclass(frozen=True)
class HFQuantized(Method):
    """One transformers `QuantizedCache` setting, run through the runner like any method."""

    name = "hf_quantized"

    chunk_size: int | None = setting(None, optional(integer(1), "one forward, as shipped"),
                                     "prefill chunk in tokens through the same cache")
    backend: str = setting("quanto", one_of("quanto", "hqq", "fp8"), "QuantizedCache backend (probed)")
    nbits: int = setting(4, one_of(1, 2, 3, 4, 8), "bits of the backend's codes")
    residual_length: int = setting(128, integer(0), "most recent tokens kept in full precision")
    q_group_size: int = setting(64, integer(1), "quantization group along the quantized axis")
    axis_key: int = setting(0, one_of(0, -1), "quantization axis of keys")
    axis_value: int = setting(0, one_of(0, -1), "quantization axis of values")

    @property
    def label(self) -> str:
        """How messages name this setting (the preset's name when it is one)."""
        return f"hf-{self.backend}-{self.nbits}"

    @classmethod
    def example(cls, model, workdir) -> HFQuantized:
        """Groups and a residual of 32: quick checks use prompts of ~150 tokens."""
        return cls(residual_length=32, q_group_size=32)

    def check_available(self) -> None:
        require_available(self)

    def new_cache(self, model_config, rotary_emb=None, *, dtype=None, device=None, fused=None):
        require_available(self)
        return make_cache(self, model_config)

    def stats(self, cache, model_config) -> CompressionStats:
        return cache_stats(cache, model_config)


HF_PRESETS: dict[str, dict[str, Any]] = {
    "hf-quanto-4": dict(backend="quanto", nbits=4),
    "hf-quanto-2": dict(backend="quanto", nbits=2),
    "hf-hqq-4": dict(backend="hqq", nbits=4),
    "hf-fp8": dict(backend="fp8", nbits=8),
}
for _name, _settings in HF_PRESETS.items():
    register_preset(_name, HFQuantized, **_settings)


def _probe_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=1, num_key_value_heads=1)


def make_cache(baseline: HFQuantized, model_config):
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
                f"{baseline.label}: transformers {tf_version} QuantizedCache has no "
                f"{baseline.backend!r} backend (backends here: {backends})") from None
        raise HFBaselineUnavailable(f"{baseline.label}: {err}") from None
    except ImportError as err:
        raise HFBaselineUnavailable(f"{baseline.label}: {err}".strip()) from None


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
def _availability(baseline: HFQuantized) -> Availability:
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
        return Availability(False, f"{baseline.label}: {type(err).__name__}: {err}")
    return Availability(True, "available")


def availability(baseline: HFQuantized) -> Availability:
    return _availability(baseline)


def available_hf_baselines() -> dict[str, Availability]:
    """Every HF preset -> (available, reason)."""
    return {name: _availability(HFQuantized(**settings)) for name, settings in HF_PRESETS.items()}


def require_available(baseline: HFQuantized) -> None:
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


def _logical_numel(stored: Any) -> int:
    """Elements a backend's stored keys stand for: quanto's quantized tensors report their
    logical shape; HQQ keeps (codes, metadata) with the original shape in the metadata."""
    if isinstance(stored, torch.Tensor):
        return stored.numel()
    if isinstance(stored, tuple) and len(stored) == 2 and isinstance(stored[1], dict) and "shape" in stored[1]:
        return int(torch.Size(stored[1]["shape"]).numel())
    return 0


def cache_stats(cache, model_config) -> CompressionStats:
    """tokens, kv_bytes (measured from the cache's tensors), fp16_kv_bytes, avg bits, ratio.

    kv_bytes counts every tensor a layer holds: quantized codes, scales, shifts and the
    full-precision residual. None (with `kv_bytes_note`) when a layer's storage is not made
    of tensors this function can see.
    """
    layers = cache.layers
    tokens = layers[0].get_seq_length() if layers else 0
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
    per_sequence = tokens * model_config.num_key_value_heads * head_dim_of(model_config)
    # The batch is what layer 0's key element count says (its codes in their logical shape +
    # the full-precision residual).
    stored_keys = sum(_logical_numel(getattr(layers[0], name, None)) for name in ("_quantized_keys", "keys")) \
        if layers else 0
    batch = stored_keys // per_sequence if per_sequence else 0
    elements = batch * per_sequence * len(layers)  # per K or V
    fp16 = 2 * 2 * elements
    kv_bytes = None if note else held_bytes["keys"] + held_bytes["values"]

    def bits(n_bytes: int | None, n_elements: int) -> float | None:
        return 8 * n_bytes / n_elements if n_bytes is not None and n_elements else None

    # No sink or outlier handling, and no peak tracking inside transformers' cache.
    return CompressionStats(
        tokens=tokens, batch_size=batch, kv_bytes=kv_bytes, fp16_kv_bytes=fp16,
        avg_key_bits=None if note else bits(held_bytes["keys"], elements),
        avg_value_bits=None if note else bits(held_bytes["values"], elements),
        avg_bits=bits(kv_bytes, 2 * elements), outlier_ratio=None, sink_tokens=0,
        compression_ratio=fp16 / kv_bytes if kv_bytes else None, peak_kv_bytes=None, kv_bytes_note=note)


__all__ = ["HF_PRESETS", "Availability", "HFBaselineUnavailable", "HFQuantized", "availability",
           "available_hf_baselines", "cache_stats", "make_cache", "require_available"]
