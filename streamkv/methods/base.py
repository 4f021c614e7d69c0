"""`Method`: the base of every compression method's settings (one frozen dataclass per method).

A method object holds only its own settings, validates them (every problem at once, each
naming the field, the value and the allowed range), serializes to `{"method": name, ...}`,
and builds what a run needs: a cache layer per model layer (`make_layer`, from explicit
arguments) or, for methods that are not packed streamkv layers, a whole cache (`new_cache`),
and the stats of a finished cache (`stats`). Methods are found by name in
`streamkv.methods.registry`; adding one is one file (see `streamkv/methods/none.py`, the
smallest).

Two settings are common to every method: `chunk_size` (the prefill chunk) and
`quantize_current_chunk` (the strict protocol), so the chunked forward and the store can read
them without knowing the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from streamkv.hashing import content_id
from streamkv.settings import InvalidSettings, Problem, boolean, integer, out_of_range, setting

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig
    from transformers.cache_utils import Cache, CacheLayerMixin

    from streamkv.compression_stats import CompressionStats
    from streamkv.layers import LayerContext


class MethodUnavailable(RuntimeError):
    """The method cannot run here (e.g. its backend package is missing); the message says why.
    A sweep records such units as skipped with the reason, never silently drops them."""


@dataclass(frozen=True)
class Method:
    """Settings of one compression method. Subclasses set `name` and add their own fields."""

    name: ClassVar[str] = ""
    # True for a method that stores every key and value exactly (the uncompressed reference).
    is_lossless: ClassVar[bool] = False

    chunk_size: int = setting(512, integer(1), "prefill chunk in tokens; each chunk is quantized once "
                                               "it is produced")
    quantize_current_chunk: bool = setting(False, boolean(), "strict protocol: a chunk attends to its "
                                                             "own keys/values quantized too")

    def __post_init__(self) -> None:
        problems = type(self).problems_of(self.settings())
        if problems:
            raise InvalidSettings(f"{type(self).__name__} (method {self.name!r})", problems)
        for f in self.setting_fields():
            object.__setattr__(self, f.name, f.metadata["check"].canonical(getattr(self, f.name)))

    # --- validation --------------------------------------------------------------------------
    @classmethod
    def setting_fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def problems_of(cls, values: Mapping[str, Any]) -> list[Problem]:
        """Every problem of these settings (missing ones take their defaults), without raising."""
        known = {f.name: f for f in cls.setting_fields()}
        problems = [Problem(k, f"unknown setting of method {cls.name!r}; allowed: {', '.join(known)}")
                    for k in values if k not in known]
        valid: dict[str, Any] = {}
        for name, f in known.items():
            value = values.get(name, f.default)
            check = f.metadata["check"]
            if check.ok(value):
                valid[name] = value
            else:
                problems.append(out_of_range(name, value, check.allowed))
        return problems + cls.cross_problems(valid)

    @classmethod
    def cross_problems(cls, valid: Mapping[str, Any]) -> list[Problem]:
        """Problems between settings; `valid` holds the settings that passed their own check."""
        return []

    def model_problems(self, model_config: PretrainedConfig) -> list[Problem]:
        """Problems of these settings on one model (e.g. a group count that must divide head_dim)."""
        return []

    def check_model(self, model_config: PretrainedConfig) -> None:
        problems = self.model_problems(model_config)
        if problems:
            raise InvalidSettings(f"{type(self).__name__} (method {self.name!r}) for this model", problems)

    @classmethod
    def settings_table(cls) -> str:
        """The method's settings as a Markdown table (the README's tables are these)."""
        rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
        for f in cls.setting_fields():
            default = "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) \
                else repr(f.default) if isinstance(f.default, str) else str(f.default)
            allowed = f.metadata["check"].allowed.replace("|", "\\|")  # a cell's "a | b" is not a new column
            rows.append(f"| `{f.name}` | {default} | {allowed} | {f.metadata['doc']} |")
        return "\n".join(rows)

    # --- serialization -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.setting_fields()}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **self.settings()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Method:
        """The inverse of `to_dict` (a "method" key, if present, must name this method)."""
        data = dict(data)
        name = data.pop("method", cls.name)
        if name != cls.name:
            raise InvalidSettings(cls.__name__, [Problem("method", f"{name!r} is not {cls.name!r}")])
        problems = cls.problems_of(data)
        if problems:
            raise InvalidSettings(f"{cls.__name__} (method {cls.name!r})", problems)
        return cls(**data)

    @property
    def config_id(self) -> str:
        """Stable 12-hex content hash of `to_dict()`: the results store's key."""
        return content_id(self.to_dict())

    def replace(self, **changes: Any) -> Method:
        return dataclasses.replace(self, **changes)

    @classmethod
    def example(cls, model, workdir) -> Method:
        """A runnable instance on `model` for quick checks (the all-methods test matrix, docs).
        Methods that need inputs beyond their settings (a calibration file) make them here,
        under the folder `workdir`."""
        return cls()

    # --- what a run builds -------------------------------------------------------------------
    def make_layer(self, ctx: LayerContext) -> CacheLayerMixin:
        """The cache layer of one model layer. Packed methods implement this; methods that
        build a whole cache of their own override `new_cache` instead."""
        raise TypeError(f"method {self.name!r} builds no streamkv cache layers; use its new_cache()")

    def new_cache(self, model_config: PretrainedConfig, rotary_emb=None, *, dtype: torch.dtype | None = None,
                  device: torch.device | None = None, fused: bool | None = None) -> Cache:
        """A fresh cache for one sequence batch of `model_config`'s model."""
        from streamkv.cache import CompressedCache

        return CompressedCache(self, model_config, rotary_emb, dtype=dtype, device=device, fused=fused)

    def check_available(self) -> None:
        """Raises `MethodUnavailable` with the reason when the method cannot run here."""

    def environment(self) -> dict[str, Any]:
        """What a result should record about the method's inputs beyond its settings (e.g. the
        hash of a calibration file)."""
        return {}

    def stats(self, cache: Cache, model_config: PretrainedConfig) -> CompressionStats:
        """What the cache measured about itself after a run."""
        from streamkv.compression_stats import compression_stats

        return compression_stats(cache)


__all__ = ["Method", "MethodUnavailable"]
