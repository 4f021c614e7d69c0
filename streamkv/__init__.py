"""streamkv: real-time, calibration-free KV-cache quantization during chunked prefill.

Imports are lazy so that `streamkv.config` (used by the store and the sweep planner) does not
pull in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BASELINES": "streamkv.config",
    "CompressionConfig": "streamkv.config",
    "baseline": "streamkv.config",
    "CompressedCache": "streamkv.cache",
    "CompressionStats": "streamkv.compression_stats",
    "compression_stats": "streamkv.compression_stats",
    "CompressedLlamaForCausalLM": "streamkv.modeling",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'streamkv' has no attribute {name!r}")
