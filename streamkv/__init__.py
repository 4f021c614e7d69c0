"""streamkv: real-time, calibration-free KV-cache quantization during chunked prefill.

Imports are lazy so that light users (the store, the sweep planner) do not pull in torch and
transformers before they need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # methods: one object per method, found by name in one registry
    "Method": "streamkv.methods",
    "CompressionConfig": "streamkv.methods",
    "register_method": "streamkv.methods",
    "register_preset": "streamkv.methods",
    "method_names": "streamkv.methods",
    "method_class": "streamkv.methods",
    "method_from_dict": "streamkv.methods",
    "preset": "streamkv.methods",
    "preset_names": "streamkv.methods",
    "InvalidSettings": "streamkv.settings",
    "LayerContext": "streamkv.layers",
    "PackedLayer": "streamkv.layers",
    # running them
    "CompressedCache": "streamkv.cache",
    "CompressionStats": "streamkv.compression_stats",
    "compression_stats": "streamkv.compression_stats",
    "AutoCompressedModelForCausalLM": "streamkv.modeling",
    "CompressedLlamaForCausalLM": "streamkv.modeling",
    "CompressedMistralForCausalLM": "streamkv.modeling",
    "CompressedQwen2ForCausalLM": "streamkv.modeling",
    "CompressedQwen3ForCausalLM": "streamkv.modeling",
    "load_model": "streamkv.loading",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'streamkv' has no attribute {name!r}")
