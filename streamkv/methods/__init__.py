"""Compression methods: one file each, found by name in one registry.

Built in: `none` (16-bit reference), `int8`, `int4_token`, `kivi`, `streamkv`
(`CompressionConfig`, ours), `calibrated` (KVQuant-style fixed statistics), and the rotated
calibration-free peers `turboquant` and `quarot`. Presets
(`streamkv-4`, `kivi-2`, ...) are registered next to their method. A method from another
package registers the same way (`register_method`, `register_preset`) and then runs through
the cache, the model classes, the sweep spec, the store and the dashboard unchanged.
"""

from streamkv.methods.base import Method, MethodUnavailable
from streamkv.methods.registry import (
    DEFAULT_METHOD,
    method_class,
    method_from_mapping,
    method_from_dict,
    method_names,
    preset,
    preset_names,
    preset_settings,
    register_method,
    register_preset,
    resolve_settings,
)

# Importing a method's module registers it (and its presets), in this order.
from streamkv.methods.none import NoCompression  # noqa: E402  isort: skip
from streamkv.methods.per_token import Int4Token, Int8  # noqa: E402  isort: skip
from streamkv.methods.kivi import Kivi  # noqa: E402  isort: skip
from streamkv.methods.streaming import CompressionConfig  # noqa: E402  isort: skip
from streamkv.methods.calibrated import Calibrated  # noqa: E402  isort: skip
from streamkv.methods.turboquant import TurboQuant  # noqa: E402  isort: skip
from streamkv.methods.quarot import QuaRot  # noqa: E402  isort: skip

__all__ = ["DEFAULT_METHOD", "Calibrated", "CompressionConfig", "Int4Token", "Int8", "Kivi", "Method", "MethodUnavailable", "NoCompression", "QuaRot", "TurboQuant",
           "method_class", "method_from_dict", "method_from_mapping", "method_names", "preset", "preset_names", "preset_settings",
           "register_method", "register_preset", "resolve_settings"]
