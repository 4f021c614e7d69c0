"""What a compressed cache measures about itself: bits, bytes, outliers, per-layer traces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from streamkv.cache import CompressedCache
from streamkv.storage import storage_bytes


@dataclass(frozen=True)
class CompressionStats:
    tokens: int  # tokens per sequence in the cache
    batch_size: int
    avg_key_bits: float  # bits per stored key element, scales and indices included
    avg_value_bits: float
    avg_bits: float  # over keys and values, positions metadata included
    outlier_ratio: float  # share of non-sink elements kept at the outlier bits
    sink_tokens: int
    kv_bytes: int  # measured: bytes of the tensors that hold the cache
    fp16_kv_bytes: int  # the same cache at 16 bits per element
    compression_ratio: float  # fp16_kv_bytes / kv_bytes
    peak_kv_bytes: int  # largest kv_bytes seen after any forward step
    per_layer: list[dict] = field(default_factory=list)  # outlier channels per layer and head

    def to_dict(self) -> dict:
        return asdict(self)

    def scalars(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k != "per_layer"}


def compression_stats(cache: CompressedCache) -> CompressionStats:
    layers = cache.layers
    first = layers[0]
    tokens = first.get_seq_length()
    batch = getattr(first, "batch_size", 0)
    elements = batch * tokens * first.n_channels * len(layers)  # per K (or V), all layers
    key_bytes = sum(layer.nbytes("keys") for layer in layers)
    value_bytes = sum(layer.nbytes("values") for layer in layers)
    kv_bytes = cache.nbytes()
    cfg = cache.compression_config
    sinks = min(cfg.attention_sink_size, tokens) if cfg.method == "streamkv" and cfg.sink_protection else 0
    outliers = sum(sum(layer.outlier_elements()) for layer in layers)
    normal_elements = 2 * (tokens - sinks) * first.n_channels * len(layers)
    per_layer = [{"layer": i, **row} for i, layer in enumerate(layers) for row in layer.trace_rows()]
    fp16 = 2 * 2 * elements
    return CompressionStats(
        tokens=tokens,
        batch_size=batch,
        avg_key_bits=8 * key_bytes / elements if elements else 0.0,
        avg_value_bits=8 * value_bytes / elements if elements else 0.0,
        avg_bits=8 * kv_bytes / (2 * elements) if elements else 0.0,
        outlier_ratio=outliers / normal_elements if normal_elements else 0.0,
        sink_tokens=sinks,
        kv_bytes=kv_bytes,
        fp16_kv_bytes=fp16,
        compression_ratio=fp16 / kv_bytes if kv_bytes else 0.0,
        peak_kv_bytes=cache.peak_bytes,
        per_layer=per_layer,
    )


__all__ = ["CompressionStats", "compression_stats", "storage_bytes"]
