"""The one registry of compression methods and their named presets.

    @register_method
    class MyMethod(Method):
        name = "my_method"
        ...
    register_preset("my-method-4", MyMethod, bits=4)

Everything that lists methods (the sweep spec, the all-methods test matrix, the README's
tables) reads this registry, so a method registered here from any package, streamkv's own or
a user's, runs everywhere with no other edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamkv.methods.base import Method
from streamkv.settings import InvalidSettings, Problem

# The method of a settings mapping that names neither a preset nor a method.
DEFAULT_METHOD = "streamkv"
_METHODS: dict[str, type[Method]] = {}
_PRESETS: dict[str, tuple[type[Method], dict[str, Any]]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: makes `cls` known by `cls.name`. Re-registering the same class is a
    no-op (modules may be imported twice, e.g. by a test runner); another class under a taken
    name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise TypeError(f"{cls!r} is not a streamkv Method subclass with a name")
    old = _METHODS.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def register_preset(preset_name: str, cls: type[Method], **settings: Any) -> None:
    """A named configuration of a registered method (checked now, built on each `preset`)."""
    if cls.name not in _METHODS:
        raise ValueError(f"register method {cls.name!r} before its preset {preset_name!r}")
    problems = cls.problems_of(settings)
    if problems:
        raise InvalidSettings(f"preset {preset_name!r}", problems)
    _PRESETS[preset_name] = (cls, dict(settings))


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(_METHODS)}")
    return _METHODS[name]


def preset_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def preset_settings(preset_name: str) -> tuple[type[Method], dict[str, Any]]:
    """(method class, settings) of a preset, for callers that validate changes before building."""
    if preset_name not in _PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; allowed: {', '.join(_PRESETS)}")
    cls, settings = _PRESETS[preset_name]
    return cls, dict(settings)


def preset(preset_name: str, **changes: Any) -> Method:
    """The method object of a preset, with settings changed (e.g. `preset("kivi-4", chunk_size=256)`)."""
    cls, settings = preset_settings(preset_name)
    return cls.from_dict({**settings, **changes})


def resolve_settings(data: Mapping[str, Any]) -> tuple[type[Method] | None, dict[str, Any], list[Problem]]:
    """(method class, full settings, every problem) of a settings mapping as users write it:
    `{"preset": NAME, **changes}`, `{"method": NAME, **settings}`, or streamkv's own settings.
    Problems name the setting (or "preset" / "method"); nothing is built or raised."""
    data = dict(data)
    preset_name, method_name = data.pop("preset", None), data.pop("method", None)
    if preset_name is not None and method_name is not None:
        return None, data, [Problem("preset", "give preset: or method:, not both", ("method",))]
    if preset_name is not None:
        if preset_name not in _PRESETS:
            return None, data, [Problem("preset", f"unknown preset {preset_name!r}; allowed: {', '.join(_PRESETS)}")]
        cls, base = _PRESETS[preset_name]
        values = {**base, **data}
        return cls, values, cls.problems_of(values)
    name = DEFAULT_METHOD if method_name is None else method_name
    if name not in _METHODS:
        return None, data, [Problem("method", f"unknown method {name!r}; allowed: {', '.join(_METHODS)}")]
    return _METHODS[name], data, _METHODS[name].problems_of(data)


def method_from_mapping(data: Mapping[str, Any]) -> Method:
    """The method object of a settings mapping (see `resolve_settings`); every problem at once."""
    if not isinstance(data, Mapping):
        raise InvalidSettings("method settings", [Problem("", f"a mapping is required, got {type(data).__name__}")])
    cls, values, problems = resolve_settings(data)
    if problems:
        raise InvalidSettings("method settings", problems)
    return cls(**values)


def method_from_dict(data: Mapping[str, Any]) -> Method:
    """A method object from `{"method": NAME, **settings}` (what `Method.to_dict` writes)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("method"), str):
        raise InvalidSettings("method", [Problem("method", f"a mapping with a method name is required, got {data!r}")])
    return method_class(data["method"]).from_dict(data)


__all__ = ["DEFAULT_METHOD", "method_class", "method_from_dict", "method_from_mapping", "method_names", "preset", "preset_names", "preset_settings",
           "register_method", "register_preset", "resolve_settings"]
