"""Typed, validated settings of a compression method: checks, problems and the error they raise.

A method's settings are fields of a frozen dataclass declared with `setting(default, check,
doc)`. Each check knows what it allows, so every problem names the field, the value and the
allowed range, and the README's settings tables are generated from the same text. Validation
works on plain mappings too (`Method.problems_of`), which is how a sweep spec is checked, with
every problem at once, before any object is built. Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Check:
    """`ok(value)` says whether a value is allowed; `allowed` says which ones are, in words."""

    ok: Callable[[Any], bool]
    allowed: str
    # The canonical form of an allowed value (3 -> 3.0 for a real-valued setting), so equal
    # settings serialize, and hash into a config_id, the same way.
    canonical: Callable[[Any], Any] = lambda v: v


def integer(low: int | None = None) -> Check:
    return Check(lambda v: is_int(v) and (low is None or v >= low),
                 "an integer" if low is None else f"an integer >= {low}")


def number(*, above: float | None = None, below: float | None = None) -> Check:
    """A real number strictly between `above` and `below` (either bound optional)."""
    def ok(v: Any) -> bool:
        return is_number(v) and (above is None or v > above) and (below is None or v < below)
    words = ("a number" + (f" > {above:g}" if above is not None and below is None else "")
             + (f" < {below:g}" if below is not None and above is None else ""))
    if above is not None and below is not None:
        words = f"{above:g} < x < {below:g}"
    return Check(ok, words, canonical=float)


def one_of(*values: Any) -> Check:
    """Exactly one of `values`, of the same type (4.0 is not the bit width 4, True is not 1)."""
    return Check(lambda v: any(type(v) is type(x) and v == x for x in values),
                 " | ".join(str(x).lower() if isinstance(x, bool) else str(x) for x in values))


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "true | false")


def text() -> Check:
    return Check(lambda v: isinstance(v, str) and bool(v), "a non-empty string")


def optional(check: Check, none_means: str = "") -> Check:
    label = f"null ({none_means})" if none_means else "null"
    return Check(lambda v: v is None or check.ok(v), f"{label} or {check.allowed}",
                 canonical=lambda v: None if v is None else check.canonical(v))


def setting(default: Any, check: Check, doc: str = "") -> Any:
    """A dataclass field of a method's settings, with its check and its one-line doc."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class Problem:
    """One invalid setting: `field` (plus any others involved) and what is wrong, in words
    that follow "field=value" (e.g. "5 is out of range (allowed: 2 | 3 | 4 | 8 | 16)")."""

    field: str
    message: str
    involves: tuple[str, ...] = ()  # other fields of a cross-field problem

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def out_of_range(field: str, value: Any, allowed: str) -> Problem:
    return Problem(field, f"{value!r} is out of range (allowed: {allowed})")


class InvalidSettings(ValueError):
    """Every problem of one method's settings; `problems` keeps them apart for callers that
    report each at its own place (a sweep spec's YAML path)."""

    def __init__(self, owner: str, problems: list[Problem]):
        self.owner = owner
        self.problems = list(problems)
        super().__init__(f"invalid {owner}: " + "; ".join(str(p) for p in self.problems))


__all__ = ["Check", "InvalidSettings", "Problem", "boolean", "integer", "is_int", "is_number", "number",
           "one_of", "optional", "out_of_range", "setting", "text"]
