"""What a compressed cache measures about itself: bits, bytes, outliers, per-layer traces.

`CompressionStats` reads like the dict the seed's API promised (`stats["avg_key_bits"]`,
`"outlier_ratio" in stats`, `dict(stats)`) and like a dataclass (`stats.avg_key_bits`).
Every figure is counted from what the cache holds, for every method alike: bytes from the
tensors' storages, sink tokens from the blocks stored as sinks, outliers from the parts kept
at the outlier bits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from streamkv.storage import storage_bytes


@dataclass(frozen=True)
class CompressionStats(Mapping):
    tokens: int  # tokens per sequence in the cache
    batch_size: int
    avg_key_bits: float | None  # bits per stored key element, scales and indices included
    avg_value_bits: float | None
    avg_bits: float | None  # over keys and values, positions metadata included
    outlier_ratio: float | None  # share of non-sink elements kept at the outlier bits
    sink_tokens: int  # tokens stored in sink blocks
    kv_bytes: int | None  # measured: bytes of the tensors that hold the cache
    fp16_kv_bytes: int  # the same cache at 16 bits per element
    compression_ratio: float | None  # fp16_kv_bytes / kv_bytes
    peak_kv_bytes: int | None  # largest kv_bytes seen after any forward step
    per_layer: list[dict] = field(default_factory=list)  # outlier channels per layer and head
    # Why a figure is None (a cache whose storage is not made of tensors we can see).
    kv_bytes_note: str = ""
    # How the layers read their history, counted over the cache's forward steps (layer 0):
    # e.g. "dense x4, blockwise x16" (streamkv.layers: prefill chunks dense, decode blockwise),
    # and the same counts as a mapping path -> steps (left out of `scalars`, like per_layer).
    history_reads: str = ""
    history_read_counts: dict[str, int] = field(default_factory=dict)

    # --- the mapping view ----------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict:
        return asdict(self)

    def scalars(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in ("per_layer", "history_read_counts")}


def compression_stats(cache) -> CompressionStats:
    """Stats of a `streamkv.cache.CompressedCache` (any method whose layers are packed)."""
    layers = cache.layers
    first = layers[0]
    tokens = first.get_seq_length()
    batch = getattr(first, "batch_size", 0)
    elements = batch * tokens * first.n_channels * len(layers)  # per K (or V), all layers
    key_bytes = sum(layer.nbytes("keys") for layer in layers)
    value_bytes = sum(layer.nbytes("values") for layer in layers)
    kv_bytes = cache.nbytes()
    sinks = first.sink_tokens()
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
        history_reads=", ".join(f"{path} x{n}" for path, n in cache.history_reads.items()),
        history_read_counts=dict(cache.history_reads),
    )


__all__ = ["CompressionStats", "compression_stats", "storage_bytes"]
