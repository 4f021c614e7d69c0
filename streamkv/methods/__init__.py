"""One cache-layer class per compression method, looked up by `CompressionConfig.method`."""

from __future__ import annotations

from streamkv.config import CompressionConfig
from streamkv.methods.base import PackedLayer, Step
from streamkv.methods.calibrated import CalibratedLayer
from streamkv.methods.kivi import KiviLayer
from streamkv.methods.streaming import StreamingLayer
from streamkv.methods.uniform import NoCompressionLayer, PerTokenLayer

LAYER_CLASSES: dict[str, type[PackedLayer]] = {
    "none": NoCompressionLayer,
    "int8": PerTokenLayer,
    "int4_token": PerTokenLayer,
    "kivi": KiviLayer,
    "streamkv": StreamingLayer,
    "calibrated": CalibratedLayer,
}


def make_layer(config: CompressionConfig, n_kv_heads: int, head_dim: int) -> PackedLayer:
    if config.method not in LAYER_CLASSES:
        raise ValueError(f"method={config.method!r} has no cache layer here "
                         f"(allowed: {', '.join(sorted(LAYER_CLASSES))})")
    return LAYER_CLASSES[config.method](config, n_kv_heads, head_dim)


__all__ = ["LAYER_CLASSES", "PackedLayer", "Step", "make_layer"]
