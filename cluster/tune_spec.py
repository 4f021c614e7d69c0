"""Search specs: YAML -> validated, frozen `SearchSpec` (what `streamkv tune` searches).

Every problem of a file is reported at once with its path, before anything runs::

    space.ema_decay.uniform: [0.9, 0.5] is an empty range (allowed: low < high)
    constraint.max_avg_bits: 1.5 cannot be met: the lowest average any configuration of this
        space can measure is >= 2.0156 bits (...)

    name: tune-smollm2
    model: smollm2-135m
    base: {preset: streamkv-3}          # settings every trial starts from (any method mapping)
    space:                              # the searched settings: any field of the base's method
      chunk_size: {choice: [128, 256]}  # categorical
      ema_decay: {uniform: [0.5, 0.99]} # real, uniform | loguniform: [low, high]
      attention_sink_size: {int: [0, 16]}          # integer, both ends included
      layer_key_bits: {per_layer: [2, 3, 4, 8], groups: 6}  # bits per group of adjacent layers
      head_value_bits: {per_head: [2, 4], groups: 3}  # bits per (layer group, KV head)
    data:                               # the objective's data: one task, its shards split in two
      task: wikitext2_ppl               # any task a sweep runs
      context_length: 512
      shards: 8                         # item (window) i is in shard i mod shards
      limit: 1                          # items per shard
      search_shards: [0, 1, 2, 3]       # what trials are measured on, one ASHA step each
      holdout_shards: [4, 5, 6, 7]      # held apart: only the chosen config and the baseline
    objective: kl                       # kl | perplexity (min) | score (max, task units)
    multi_objective: false              # true: Pareto search over (objective, measured bits)
    constraint: {max_avg_bits: 3.0}     # measured (K+V mean) bits, or max_cache_bytes: N
    search: {num_samples: 64, max_concurrent: null, seed: 0,
             n_startup_trials: 10,                           # Optuna TPE's random first trials
             start: [{chunk_size: 128, ema_decay: 0.9,      # points tried first, each with a
                      attention_sink_size: 4, layer_key_bits: 2}],  # value for every searched field
             asha: {grace_period: 1, reduction_factor: 2}}   # asha: null = no early stopping
    resources: {num_actors: 2, num_cpus_per_actor: 1, num_gpus_per_actor: auto}
    store: {url: ..., blobs: ...}
    storage: null                       # Tune's experiment folder (default: results/tune)
    search_id: null                     # default: <name>-<hash of the spec's content>

The budget check (`min_avg_bits`): a configuration's measured average bits are at least the
bits of its stored codes, because scales, zero points and indices only add bytes. Per kind (key,
value) the lowest codes a space reaches are `lo` bits for normal tokens (the lowest normal or
per-layer bits on offer) and `hi` for the sink tokens (the lowest sink/outlier bits), with
`s` sink tokens (the fewest on offer, 0 when sink protection can be off) of the `T` tokens an
item holds: bound = ((T - s) lo + s hi) / T, averaged over key and value. A budget below it is
refused. `max_cache_bytes` gets the same bound times the model's elements (layers x KV heads x
head_dim x T x 2 / 8), checked by `model_problems` once the model's config is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.spec import _SWEEP_ID, SpecError, StoreSpec, _is_int, _is_num, _Problems, _unknown
from streamkv.hashing import content_id
from streamkv.methods import Method, resolve_settings
from streamkv.methods.streaming import ALLOWED_BITS, PER_HEAD_FIELDS, PER_LAYER_FIELDS
from store.searches import DEFAULT_HOLDOUT_SHARDS, DEFAULT_SEARCH_SHARDS, DEFAULT_SHARDS
from workers.units import PERPLEXITY_TASKS, TASK_NAMES, task_kind

OBJECTIVES = {"kl": "min", "perplexity": "min", "score": "max"}
KINDS = ("choice", "uniform", "loguniform", "int", "per_layer", "per_head")
# The allocation kinds: bits per group of adjacent layers, or per (layer group, KV head).
ALLOCATIONS = {"per_layer": PER_LAYER_FIELDS, "per_head": PER_HEAD_FIELDS}
_TOP_KEYS = {"name", "model", "dtype", "device", "base", "space", "data", "objective", "multi_objective",
             "constraint", "search", "resources", "store", "storage", "search_id"}
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Dimension:
    """One searched setting: `kind` (one of KINDS) and its values or bounds."""

    field: str
    kind: str
    values: tuple[Any, ...]  # choice / per_layer / per_head: the options; uniform / int: (low, high)
    groups: int | None = None  # per_layer / per_head: adjacent-layer groups (None: one per layer)

    @property
    def allocation(self) -> bool:
        return self.kind in ALLOCATIONS

    @property
    def kv_kind(self) -> str:
        """'key' or 'value' of an allocation field (layer_key_bits, head_value_bits, ...)."""
        return self.field.split("_")[1]


@dataclass(frozen=True)
class ModelShape:
    """What a search's parameters depend on in the model: its layers and KV heads."""

    n_layers: int
    n_kv_heads: int


@dataclass(frozen=True)
class DataSpec:
    task: str = "wikitext2_ppl"
    source: str | None = None
    context_length: int = 512
    max_length: int = 3500
    shards: int = DEFAULT_SHARDS
    limit: int | None = 1
    search_shards: tuple[int, ...] = DEFAULT_SEARCH_SHARDS
    holdout_shards: tuple[int, ...] = DEFAULT_HOLDOUT_SHARDS
    seed: int = 0


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 64
    max_concurrent: int | None = None  # None: resources.num_actors
    seed: int = 0
    grace_period: int | None = 1  # None: no ASHA
    reduction_factor: int = 2
    # Optuna's TPE samples this many trials at random before it models the good ones.
    n_startup_trials: int = 10
    # Points tried first (Ray's points_to_evaluate, enqueued Optuna trials): field -> value for
    # every searched field; a per-layer field takes one value for every group or one per group.
    # A researcher's prior (e.g. the cheapest uniform config) saves trials a budget rules out.
    start: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class TuneResources:
    num_actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0


@dataclass(frozen=True)
class SearchSpec:
    name: str
    model: str
    method: type[Method]
    base: dict[str, Any]  # the base's full settings mapping (method's fields), without "method"
    space: tuple[Dimension, ...]
    data: DataSpec = DataSpec()
    objective: str = "kl"
    multi_objective: bool = False
    max_avg_bits: float | None = None
    max_cache_bytes: int | None = None
    search: SearchSettings = SearchSettings()
    resources: TuneResources = TuneResources()
    store: StoreSpec = StoreSpec()
    storage: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    search_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def resolved_search_id(self) -> str:
        return self.search_id or f"{self.name}-{content_id(self.content())}"

    @property
    def resolved_storage(self) -> str:
        return str(Path(self.storage or "results/tune").resolve())

    @property
    def max_concurrent(self) -> int:
        return self.search.max_concurrent or self.resources.num_actors

    def content(self) -> dict[str, Any]:
        """What determines the search's results (not where they are stored)."""
        return {k: v for k, v in self.raw.items() if k not in ("store", "storage", "search_id", "resources")}


# --- validation of each section ---------------------------------------------------------------------
def _check_value(problems: _Problems, path: str, cls: type[Method], name: str, value: Any) -> None:
    check = {f.name: f for f in cls.setting_fields()}[name].metadata["check"]
    if not check.ok(value):
        problems.add(path, f"{value!r} is out of range for {name} (allowed: {check.allowed})")


def _parse_dimension(problems: _Problems, path: str, name: str, entry: Any, cls: type[Method]) -> Dimension | None:
    if not isinstance(entry, Mapping) or not any(k in entry for k in KINDS):
        problems.add(path, f"must be a mapping with one of: {', '.join(KINDS)}")
        return None
    kinds = [k for k in KINDS if k in entry]
    if len(kinds) > 1:
        problems.add(path, f"give one of {', '.join(kinds)}, not several")
        return None
    kind = kinds[0]
    _unknown(problems, path, entry, {kind, "groups"} if kind in ALLOCATIONS else {kind})
    values, where = entry[kind], f"{path}.{kind}"
    if not isinstance(values, (list, tuple)) or not values:
        problems.add(where, f"{values!r} is an empty range (allowed: a non-empty list)")
        return None
    if kind in ALLOCATIONS:
        if name not in ALLOCATIONS[kind]:
            problems.add(path, f"{kind} is for {' | '.join(ALLOCATIONS[kind])}, not {name}")
            return None
        bad = [b for b in values if b not in ALLOWED_BITS or not _is_int(b)]
        if bad:
            problems.add(where, f"{bad} are not bit widths (allowed: {' | '.join(map(str, ALLOWED_BITS))})")
        groups = entry.get("groups")
        if groups is not None and (not _is_int(groups) or groups < 1):
            problems.add(f"{path}.groups", f"{groups!r} is out of range (allowed: null or integer >= 1)")
        return Dimension(name, kind, tuple(dict.fromkeys(values)), groups)
    for allocation, fields in ALLOCATIONS.items():
        if name in fields:
            problems.add(path, f"{name} is searched with {allocation}: [bits...]")
            return None
    if kind == "choice":
        for i, v in enumerate(values):
            _check_value(problems, f"{where}[{i}]", cls, name, v)
        return Dimension(name, kind, tuple(values))
    if len(values) != 2 or not all(_is_num(v) for v in values):
        problems.add(where, f"{values!r} must be [low, high]")
        return None
    low, high = values
    if kind == "int" and not (_is_int(low) and _is_int(high)):
        problems.add(where, f"{values!r} must be integers")
        return None
    if low > high or (kind != "int" and low == high):
        problems.add(where, f"{list(values)} is an empty range (allowed: low {'<=' if kind == 'int' else '<'} high)")
        return None
    if kind == "loguniform" and low <= 0:
        problems.add(where, f"{list(values)}: loguniform needs low > 0")
    for bound, v in (("low", low), ("high", high)):
        value = v if kind == "int" else float(v)
        check = {f.name: f for f in cls.setting_fields()}[name].metadata["check"]
        # open bounds (e.g. ema_decay < 1) are sampled strictly inside: check a point just inside
        inside = value if check.ok(value) or kind == "int" else value + (1e-9 if bound == "low" else -1e-9)
        if not check.ok(inside):
            problems.add(f"{where} {bound}", f"{v!r} is out of range for {name} (allowed: {check.allowed})")
    return Dimension(name, kind, (low, high))


def _parse_space(problems: _Problems, space: Any, cls: type[Method] | None) -> list[Dimension]:
    if not isinstance(space, Mapping) or not space:
        problems.add("space", "must be a non-empty mapping: setting -> {choice | uniform | loguniform | int | per_layer}")
        return []
    if cls is None:
        return []
    known = {f.name for f in cls.setting_fields()}
    dims = []
    for name, entry in space.items():
        path = f"space.{name}"
        if name not in known:
            problems.add(path, f"unknown field of method {cls.name!r}; allowed: {', '.join(sorted(known))}")
            continue
        dim = _parse_dimension(problems, path, name, entry, cls)
        if dim is not None:
            dims.append(dim)
    return dims


def _shard_list(problems: _Problems, path: str, value: Any, shards: int | None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        problems.add(path, f"{value!r} is an empty range (allowed: a non-empty list of shard indices)")
        return ()
    bad = [v for v in value if not _is_int(v) or v < 0 or (shards is not None and v >= shards)]
    if bad:
        problems.add(path, f"{bad} are not shard indices (allowed: 0 .. {(shards or 1) - 1})")
    if len(set(value)) != len(value):
        problems.add(path, f"{list(value)} repeats a shard")
    return tuple(v for v in value if _is_int(v))


def _positive_int(problems: _Problems, path: str, value: Any, low: int = 1, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not _is_int(value) or value < low:
        problems.add(path, f"{value!r} is out of range (allowed: {'null or ' if optional else ''}integer >= {low})")
        return None
    return value


def _parse_data(problems: _Problems, data: Any) -> DataSpec:
    if not isinstance(data, Mapping):
        problems.add("data", "must be a mapping (task:, shards:, search_shards:, holdout_shards:, ...)")
        return DataSpec()
    defaults = DataSpec()
    _unknown(problems, "data", data, set(DataSpec.__dataclass_fields__))
    kw: dict[str, Any] = {}
    task = data.get("task", defaults.task)
    if task not in TASK_NAMES:
        problems.add("data.task", f"unknown task {task!r}; allowed: {', '.join(TASK_NAMES)}")
    kw["task"] = task
    if data.get("source") is not None and not isinstance(data["source"], str):
        problems.add("data.source", f"{data['source']!r} must be a path")
    kw["source"] = data.get("source")
    if kw["source"] is None and task in TASK_NAMES and task_kind(task) == "longbench":
        problems.add("data.source", f"task {task!r} is a LongBench task and needs a source file or folder")
    for key, low in (("context_length", 2), ("max_length", 1), ("shards", 2), ("seed", -(2 ** 63))):
        if key in data:
            kw[key] = _positive_int(problems, f"data.{key}", data[key], low)
    if "limit" in data:
        kw["limit"] = _positive_int(problems, "data.limit", data["limit"], 1, optional=True)
    shards = kw.get("shards", defaults.shards)
    for key in ("search_shards", "holdout_shards"):
        kw[key] = _shard_list(problems, f"data.{key}", data.get(key, getattr(defaults, key)), shards)
    both = sorted(set(kw["search_shards"]) & set(kw["holdout_shards"]))
    if both:
        problems.add("data.holdout_shards", f"shard(s) {both} are also search shards: held-apart data must "
                                            "be data the search never saw")
    return DataSpec(**{k: v for k, v in kw.items() if v is not None or k in ("source", "limit")})


def _parse_objective(problems: _Problems, data: Mapping[str, Any], task: str) -> str:
    objective = data.get("objective", "kl")
    if objective not in OBJECTIVES:
        problems.add("objective", f"{objective!r} is out of range (allowed: {' | '.join(OBJECTIVES)})")
        return "kl"
    if task in TASK_NAMES:
        ppl = task in PERPLEXITY_TASKS
        if objective == "perplexity" and not ppl or objective == "score" and ppl:
            problems.add("objective", f"{objective} is not measured by task {task!r} "
                                      f"(allowed: kl | {'perplexity' if ppl else 'score'})")
    if not isinstance(data.get("multi_objective", False), bool):
        problems.add("multi_objective", f"{data['multi_objective']!r} must be true or false")
    return objective


def _parse_constraint(problems: _Problems, constraint: Any) -> tuple[float | None, int | None]:
    if constraint is None:
        return None, None
    if not isinstance(constraint, Mapping) or len(constraint) != 1:
        problems.add("constraint", "must be {max_avg_bits: B} or {max_cache_bytes: M} (or null: none)")
        return None, None
    _unknown(problems, "constraint", constraint, {"max_avg_bits", "max_cache_bytes"})
    bits, nbytes = constraint.get("max_avg_bits"), constraint.get("max_cache_bytes")
    if "max_avg_bits" in constraint and (not _is_num(bits) or bits <= 0):
        problems.add("constraint.max_avg_bits", f"{bits!r} is out of range (allowed: a number > 0)")
        bits = None
    if "max_cache_bytes" in constraint:
        nbytes = _positive_int(problems, "constraint.max_cache_bytes", nbytes, 1)
    return (None if bits is None else float(bits)), nbytes


def _parse_search(problems: _Problems, search: Any) -> SearchSettings:
    if not isinstance(search, Mapping):
        problems.add("search", "must be a mapping (num_samples:, max_concurrent:, seed:, asha:)")
        return SearchSettings()
    _unknown(problems, "search", search, {"num_samples", "max_concurrent", "seed", "asha", "n_startup_trials",
                                          "start"})
    kw: dict[str, Any] = {}
    if "num_samples" in search:
        kw["num_samples"] = _positive_int(problems, "search.num_samples", search["num_samples"])
        if kw["num_samples"] and kw["num_samples"] > MAX_TRIALS:
            problems.add("search.num_samples", f"{kw['num_samples']} > {MAX_TRIALS} trials")
    if "max_concurrent" in search:
        kw["max_concurrent"] = _positive_int(problems, "search.max_concurrent", search["max_concurrent"],
                                             optional=True)
    if "seed" in search:
        kw["seed"] = _positive_int(problems, "search.seed", search["seed"], 0)
    if "n_startup_trials" in search:
        kw["n_startup_trials"] = _positive_int(problems, "search.n_startup_trials", search["n_startup_trials"], 0)
    if "start" in search:
        start = search["start"]
        if not isinstance(start, (list, tuple)) or not all(isinstance(p, Mapping) for p in start):
            problems.add("search.start", f"{start!r} must be a list of mappings (field -> value)")
        else:
            kw["start"] = tuple(dict(p) for p in start)
    asha = search.get("asha", {})
    if asha is None:
        kw["grace_period"] = None
    elif not isinstance(asha, Mapping):
        problems.add("search.asha", "must be a mapping (grace_period:, reduction_factor:) or null")
    else:
        _unknown(problems, "search.asha", asha, {"grace_period", "reduction_factor"})
        for key, low in (("grace_period", 1), ("reduction_factor", 2)):
            if key in asha:
                kw[key] = _positive_int(problems, f"search.asha.{key}", asha[key], low)
    return SearchSettings(**{k: v for k, v in kw.items() if v is not None or k in ("max_concurrent", "grace_period")})


def _parse_resources(problems: _Problems, res: Any) -> TuneResources:
    if not isinstance(res, Mapping):
        problems.add("resources", "must be a mapping (num_actors:, num_cpus_per_actor:, num_gpus_per_actor:)")
        return TuneResources()
    _unknown(problems, "resources", res, set(TuneResources.__dataclass_fields__))
    kw: dict[str, Any] = {}
    if "num_actors" in res:
        kw["num_actors"] = _positive_int(problems, "resources.num_actors", res["num_actors"])
    for key in ("num_cpus_per_actor", "num_gpus_per_actor"):
        value = res.get(key)
        if key in res and not (value in (None, "auto") and key == "num_gpus_per_actor"):
            if not _is_num(value) or value < 0:
                problems.add(f"resources.{key}", f"{value!r} is out of range (allowed: a number >= 0)")
            else:
                kw[key] = float(value)
    return TuneResources(**{k: v for k, v in kw.items() if v is not None})


# --- the budget no configuration can meet --------------------------------------------------------
def _offered(spec_base: Mapping[str, Any], dims: dict[str, Dimension], name: str) -> list[Any]:
    """Every value a setting takes in the space (its base value when it is not searched)."""
    dim = dims.get(name)
    if dim is None:
        return [spec_base.get(name)]
    if dim.kind == "choice" or dim.allocation:
        return list(dim.values)
    return [dim.values[0]]  # the low end of a range


def min_avg_bits(base: Mapping[str, Any], space: tuple[Dimension, ...], tokens: int) -> float | None:
    """A lower bound of the average measured bits (key and value) of any config of the space,
    for items of `tokens` tokens (see the module docstring); None for methods without these
    settings."""
    dims = {d.field: d for d in space}
    needed = ("key_bits_normal", "value_bits_normal", "key_bits_sink_outlier", "value_bits_sink_outlier",
              "attention_sink_size", "sink_protection")
    if any(n not in base and n not in dims for n in needed):
        return None
    protect = _offered(base, dims, "sink_protection")
    sinks = 0 if False in protect else min(_offered(base, dims, "attention_sink_size"))
    s = min(sinks, tokens)
    bounds = []
    for kind in ("key", "value"):
        normal = _offered(base, dims, f"{kind}_bits_normal")
        for field_name in (f"layer_{kind}_bits", f"head_{kind}_bits"):
            if field_name in dims:  # a per-layer / per-head allocation replaces the normal bits
                normal = list(dims[field_name].values)
            elif base.get(field_name):
                normal = [b for entry in base[field_name] for b in (entry if isinstance(entry, (list, tuple))
                                                                     else [entry])]
        lo, hi = min(normal), min(_offered(base, dims, f"{kind}_bits_sink_outlier"))
        bounds.append(((tokens - s) * lo + s * max(hi, lo)) / tokens)
    return sum(bounds) / 2


# --- the whole spec ----------------------------------------------------------------------------------
def _parse_base(problems: _Problems, base: Any) -> tuple[type[Method] | None, dict[str, Any]]:
    if base is None:
        base = {}
    if not isinstance(base, Mapping):
        problems.add("base", "must be a method settings mapping ({preset: NAME, ...} or {method: NAME, ...})")
        return None, {}
    cls, values, found = resolve_settings(base)
    for p in found:
        problems.add(f"base.{p.field}" if p.field else "base", p.message)
    if cls is None:
        return None, {}
    defaults = {f.name: f.default for f in cls.setting_fields()}
    return cls, {**defaults, **values}


def parse_search_spec(data: Any, *, source: str = "spec", default_name: str = "search") -> SearchSpec:
    """A validated `SearchSpec`; raises `SpecError` with every problem (model-independent
    checks; `model_problems` adds those that need the model's config)."""
    problems = _Problems()
    if not isinstance(data, Mapping):
        raise SpecError([f"the top level must be a mapping, got {type(data).__name__}"], source)
    _unknown(problems, "", data, _TOP_KEYS)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _SWEEP_ID.match(name):
        problems.add("name", f"{name!r} must be 1-128 of letters, digits, '_', '.', '-'")
    model = data.get("model", "smollm2-135m")
    if not isinstance(model, str) or not model:
        problems.add("model", f"{model!r} must be a model name, hub id or folder")
    cls, base = _parse_base(problems, data.get("base"))
    space = tuple(_parse_space(problems, data.get("space"), cls))
    dspec = _parse_data(problems, data.get("data", {}))
    objective = _parse_objective(problems, data, dspec.task)
    max_bits, max_bytes = _parse_constraint(problems, data.get("constraint"))
    search = _parse_search(problems, data.get("search", {}) or {})
    resources = _parse_resources(problems, data.get("resources", {}) or {})
    if search.grace_period is not None and search.grace_period > len(dspec.search_shards):
        problems.add("search.asha.grace_period", f"{search.grace_period} > the {len(dspec.search_shards)} "
                                                 "search shards (a trial reports once per shard)")
    store = data.get("store", {}) or {}
    if not isinstance(store, Mapping):
        problems.add("store", "must be a mapping (url:, blobs:)")
        store = {}
    _unknown(problems, "store", store, {"url", "blobs"})
    for key in ("storage", "search_id"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.add(key, f"{data[key]!r} must be a string")
    if isinstance(data.get("search_id"), str) and not _SWEEP_ID.match(data["search_id"]):
        problems.add("search_id", f"{data['search_id']!r} must be 1-128 of letters, digits, '_', '.', '-'")
    for key, allowed in (("dtype", ("float32", "float16", "bfloat16")), ("device", ("auto", "cpu", "cuda"))):
        if key in data and data[key] not in allowed:
            problems.add(key, f"{data[key]!r} is out of range (allowed: {' | '.join(allowed)})")
    searched = {d.field for d in space}
    for d in space:
        if not d.allocation:
            continue
        kind = d.kv_kind
        high = base.get(f"{kind}_bits_sink_outlier")
        if high is not None and f"{kind}_bits_sink_outlier" not in searched and max(d.values) > high:
            problems.add(f"space.{d.field}.{d.kind}", f"{max(d.values)} > base {kind}_bits_sink_outlier={high} "
                                                      "(protected tokens/channels never get fewer bits)")
        other = ("head_" if d.kind == "per_layer" else "layer_") + f"{kind}_bits"
        if other in searched or base.get(other) is not None:
            how = "also searched" if other in searched else "set in base"
            problems.add(f"space.{d.field}", f"searched with {other} {how} (a layer's bits come from one of them)")
    _start_problems(problems, search.start, space)
    if max_bits is not None and cls is not None:
        floor = min_avg_bits(base, space, dspec.context_length)
        if floor is not None and max_bits < floor:
            problems.add("constraint.max_avg_bits", _unmeetable(max_bits, floor, "bits"))
    if problems:
        raise SpecError(problems, source)
    return SearchSpec(name=name, model=model, method=cls, base=base, space=space, data=dspec,
                      objective=objective, multi_objective=bool(data.get("multi_objective", False)),
                      max_avg_bits=max_bits, max_cache_bytes=max_bytes, search=search, resources=resources,
                      store=StoreSpec(url=store.get("url"), blobs=store.get("blobs")),
                      storage=data.get("storage"), dtype=data.get("dtype", "float32"),
                      device=data.get("device", "auto"), search_id=data.get("search_id"), raw=dict(data))


def _start_problems(problems: _Problems, start: tuple[dict[str, Any], ...], space: tuple[Dimension, ...]) -> None:
    """Each start point gives every searched field (Ray's warm start takes whole points only)
    and no other, with values its dimension allows."""
    dims = {d.field: d for d in space}
    for i, point in enumerate(start):
        missing = [name for name in dims if name not in point]
        if missing:
            problems.add(f"search.start[{i}]", f"missing {', '.join(missing)} (a start point gives every searched field)")
        for name, value in point.items():
            path = f"search.start[{i}].{name}"
            d = dims.get(name)
            if d is None:
                problems.add(path, f"not a searched field (allowed: {', '.join(dims)})")
            elif d.allocation:
                entries = value if isinstance(value, (list, tuple)) else [value]
                # per_head: each group's entry is one value for all its heads or a list, one per head
                flat = [v for e in entries for v in (e if d.kind == "per_head" and isinstance(e, (list, tuple))
                                                     else [e])]
                bad = [v for v in flat if isinstance(v, (list, tuple)) or v not in d.values]
                if bad or not flat:
                    problems.add(path, f"{value!r} is out of range (allowed: one of {list(d.values)} or a list of them)")
                elif isinstance(value, (list, tuple)) and d.groups is not None and len(value) != d.groups:
                    problems.add(path, f"{len(value)} values for {d.groups} groups (allowed: one value or {d.groups})")
            elif d.kind == "choice":
                if value not in d.values:
                    problems.add(path, f"{value!r} is out of range (allowed: one of {list(d.values)})")
            else:
                low, high = d.values
                ok = _is_int(value) if d.kind == "int" else _is_num(value)
                if not ok or not low <= value <= high:
                    problems.add(path, f"{value!r} is out of range (allowed: {d.kind} in [{low}, {high}])")


def _unmeetable(budget: float, floor: float, unit: str) -> str:
    return (f"{budget:g} cannot be met: the lowest any configuration of this space can measure is "
            f">= {floor:.4g} {unit} (its lowest normal bits on every token but the fewest sink tokens, "
            "which take the lowest sink/outlier bits; scales only add to it)")


def model_shape(model_config) -> ModelShape:
    from streamkv.families import kv_heads_of

    return ModelShape(int(model_config.num_hidden_layers), int(kv_heads_of(model_config)))


def model_problems(spec: SearchSpec, model_config) -> list[str]:
    """The checks that need the model's config: per-layer groups and lengths, settings that
    must fit the model (value groups dividing head_dim), and a byte budget's floor."""
    from streamkv.families import head_dim_of

    problems = []
    shape = model_shape(model_config)
    n_layers = shape.n_layers
    for d in spec.space:
        if d.allocation and d.groups is not None and d.groups > n_layers:
            problems.append(f"space.{d.field}.groups: {d.groups} > the model's num_hidden_layers={n_layers}")
        for i, point in enumerate(spec.search.start):
            value = point.get(d.field)
            if d.allocation and d.groups is None and isinstance(value, (list, tuple)) and len(value) != n_layers:
                problems.append(f"search.start[{i}].{d.field}: {len(value)} values for the model's "
                                f"{n_layers} layers (allowed: one value or {n_layers})")
            if d.kind == "per_head" and isinstance(value, (list, tuple)):
                wrong = [j for j, e in enumerate(value) if isinstance(e, (list, tuple)) and len(e) != shape.n_kv_heads]
                if wrong:
                    problems.append(f"search.start[{i}].{d.field}: group(s) {wrong} do not give one value per KV "
                                    f"head (the model has num_key_value_heads={shape.n_kv_heads})")
    try:
        problems += [f"base.{p.field}: {p.message}" for p in spec.method(**spec.base).model_problems(model_config)]
    except ValueError as err:  # cross-field problems of the base alone
        problems.append(f"base: {err}")
    for d in spec.space:
        if d.field == "value_quant_groups" and d.kind == "choice":
            head_dim = head_dim_of(model_config)
            bad = [g for g in d.values if g and head_dim % g]
            if bad:
                problems.append(f"space.value_quant_groups.choice: {bad} do not divide the model's "
                                f"head_dim={head_dim} (allowed: 0 or a divisor of {head_dim})")
    if spec.max_cache_bytes is not None:
        floor = min_avg_bits(spec.base, spec.space, spec.data.context_length)
        if floor is not None:
            elements = n_layers * model_config.num_key_value_heads * head_dim_of(model_config) \
                * spec.data.context_length
            floor_bytes = math.ceil(floor * 2 * elements / 8)
            if spec.max_cache_bytes < floor_bytes:
                problems.append("constraint.max_cache_bytes: " + _unmeetable(spec.max_cache_bytes, floor_bytes, "bytes"))
    return problems


def load_search_spec(path: str | Path) -> SearchSpec:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"search spec {p} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], str(p)) from None
    return parse_search_spec(data, source=str(p), default_name=p.stem)


__all__ = ["DataSpec", "Dimension", "SearchSpec", "load_search_spec", "min_avg_bits", "model_problems",
           "parse_search_spec"]
