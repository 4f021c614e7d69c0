"""Sweep specs: YAML -> validated, frozen `SweepSpec`.

A spec names the model(s), the compression configs (a cartesian `grid` over one method's
settings, explicit `points` and named `presets`), the datasets, and how to run them (shards,
sample limits, prompt length, seed, store, resources). Configs are validated by the method
objects themselves (`Method.problems_of`, see `streamkv.methods`), and every problem of a
file is reported at once, each prefixed with its path in the file::

    grid.key_bits_normal[2]: 5 is out of range (allowed: 2 | 3 | 4 | 8 | 16)
    datasets[1].task: unknown task 'foo'; allowed: ...

Defaults live in one place, the dataclass defaults below; the YAML overrides them, and the
command line overrides the YAML (`apply_overrides`).

    name: smoke                       # default: the file's stem
    models: [smollm2-135m]            # or model: NAME
    dtype: float32                    # float32 | float16 | bfloat16
    device: auto                      # auto (cuda when there, else cpu) | cpu | cuda
    grid:                             # cartesian product over one method's settings
      preset: streamkv-4              # optional: the preset (or method: NAME) the grid starts
      key_bits_normal: [4, 3]         #   from; default: streamkv's own defaults
      value_bits_normal: [4, 3]
    points:                           # explicit extra configs
      - {preset: kivi-4, residual_length: 64}
      - {method: kivi, key_bits: 2, value_bits: 4}
      - {chunk_size: 256}             # streamkv's settings
    presets: [none, kivi-4, hf-quanto-4]
    datasets:
      - {task: passage_retrieval_synth, context_length: 400}
      - {tasks: [narrativeqa, qasper], source: data/longbench}
      - {task: wikitext2_ppl, context_length: 1024, limit: 2, shards: 1}
      - {tasks: [ruler_niah_single_1, ruler_vt], context_lengths: [1024, 2048]}  # RULER cells
      - {task: ruler_niah_single_2, context_lengths: [1024, 2048], depths: [0, 50, 100]}  # NIAH grid
      - {task: longbench_v2, source: data/v2, length: short}   # a v2 split: difficulty: / length:
      - {lm_eval: {tasks: [streamkv_facts_mc], include_path: null}, limit: 8}
    shards: 2                         # per task (datasets[i].shards overrides)
    limit: 2                          # samples (windows) per shard; null = all
    generation: {max_length: 3500}    # prompt tokens (middle truncation)
    seed: 0
    max_attempts: 2                   # application errors: attempts before a unit fails
    store: {url: sqlite:///results/streamkv.db, blobs: results/blobs}
    resources: {num_actors: 2, num_gpus_per_actor: auto, num_cpus_per_actor: 1}
    sweep_id: null                    # default: <name>-<hash of what determines the results>
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamkv.methods import Method, preset, preset_names, resolve_settings
from streamkv.settings import Problem
from store.cells import v2_split_name
from workers.data import V2_DIFFICULTIES, V2_LENGTHS, V2_TASK
from workers.ruler import cell_name, ruler_problems
from workers.tasks import get_task
from workers.units import PERPLEXITY_TASKS, TASK_NAMES, task_kind

DEFAULT_BLOBS = "results/blobs"
MAX_GRID_POINTS = 10_000
# Units = configs x models x (tasks x shards): checked before any write (`--max-units` raises it).
MAX_UNITS = 100_000
_SWEEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SpecError(ValueError):
    """An invalid spec; `problems` lists every problem, each starting with its path."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


# --- the parsed spec ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    task: str
    source: str | None = None  # LongBench file/folder/hf://; WikiText file for synthetic/ppl
    context_length: int = 2048  # perplexity window tokens / synthetic context words
    shards: int | None = None  # None: SweepSpec.shards
    limit: int | None = None  # None: SweepSpec.limit
    max_length: int | None = None  # None: SweepSpec.max_length
    depth: int | None = None  # RULER single-needle NIAH: needle depth, percent
    difficulty: str | None = None  # LongBench v2: easy | hard only
    length: str | None = None  # LongBench v2: short | medium | long only

    @property
    def stored_task(self) -> str:
        """The task name its results are keyed by (a RULER cell, a LongBench v2 split)."""
        if task_kind(self.task) == "ruler":
            return cell_name(self.task, self.context_length, self.depth)
        if self.difficulty is not None or self.length is not None:
            return v2_split_name(self.task, self.difficulty, self.length)
        return self.task

    def content(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("depth", "difficulty", "length"):  # absent before they existed: older sweep ids stay
            if data[key] is None:
                del data[key]
        return data


@dataclass(frozen=True)
class StoreSpec:
    url: str | None = None  # None: $STREAMKV_DB, then sqlite:///results/streamkv.db
    blobs: str | None = None  # None: $STREAMKV_BLOBS, then results/blobs

    @property
    def resolved_url(self) -> str:
        from store.db import DEFAULT_URL

        return self.url or os.environ.get("STREAMKV_DB") or DEFAULT_URL

    @property
    def resolved_blobs(self) -> str:
        return self.blobs or os.environ.get("STREAMKV_BLOBS") or DEFAULT_BLOBS


@dataclass(frozen=True)
class ResourceSpec:
    num_actors: int = 1  # per model
    num_gpus_per_actor: float | None = None  # None ("auto"): 1 when the cluster has GPUs, else 0
    num_cpus_per_actor: float = 1.0
    max_restarts: int = 3  # Ray restarts of a dead actor
    max_task_retries: int = 3  # Ray retries of a unit whose actor died (system failures)
    write_results: str = "driver"  # "driver" | "actor": who calls store.write_unit_result


@dataclass(frozen=True)
class NamedConfig:
    label: str  # where it came from: "grid[...]", "points[1]", "preset kivi-4"
    config: Method

    @property
    def config_id(self) -> str:
        return self.config.config_id


@dataclass(frozen=True)
class SweepSpec:
    name: str = "sweep"
    models: tuple[str, ...] = ("smollm2-135m",)
    configs: tuple[NamedConfig, ...] = ()
    datasets: tuple[DatasetSpec, ...] = ()
    shards: int = 1
    limit: int | None = None
    max_length: int = 3500
    seed: int = 0
    max_attempts: int = 2
    dtype: str = "float32"
    device: str = "auto"
    store: StoreSpec = field(default_factory=StoreSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    sweep_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def content(self) -> dict[str, Any]:
        """What determines the results (not where they go or how they are scheduled)."""
        return {
            "models": list(self.models),
            "configs": [{"label": c.label, "config_id": c.config_id, **c.config.to_dict()}
                        for c in self.configs],
            "datasets": [d.content() for d in self.datasets],
            "shards": self.shards, "limit": self.limit, "max_length": self.max_length,
            "seed": self.seed, "dtype": self.dtype,
        }

    @property
    def content_hash(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def resolved_sweep_id(self) -> str:
        if self.sweep_id:
            return self.sweep_id
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-")[:60] or "sweep"
        return f"{slug}-{self.content_hash}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description recorded with the sweep."""
        return {"name": self.name, "sweep_id": self.resolved_sweep_id, **self.content(),
                "max_attempts": self.max_attempts, "device": self.device,
                "store": {"url": _safe_url(self.store.resolved_url), "blobs": self.store.resolved_blobs},
                "resources": dataclasses.asdict(self.resources), "file": dict(self.raw)}


def _safe_url(url: str) -> str:
    try:
        from store.db import safe_url

        return safe_url(url)
    except Exception:  # noqa: BLE001 (any URL it cannot parse is masked by hand)
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


# --- parsing ---------------------------------------------------------------------------------------
_TOP_KEYS = {"name", "model", "models", "dtype", "device", "grid", "points", "presets", "datasets",
             "shards", "limit", "generation", "seed", "max_attempts", "store", "resources", "sweep_id",
             "description"}
_DATASET_KEYS = {"task", "tasks", "lm_eval", "source", "context_length", "context_lengths", "depths", "shards",
                 "limit", "max_length", "difficulty", "length"}
_LM_EVAL_KEYS = {"tasks", "include_path"}
_DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")
_DEVICES = ("auto", "cpu", "cuda")


class _Problems(list):
    def add(self, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        if text not in self:
            self.append(text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown(problems: _Problems, path: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            problems.add(where, f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _int_field(problems: _Problems, path: str, value: Any, low: int, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not _is_int(value) or value < low:
        allowed = f"{'null or ' if optional else ''}integer >= {low}"
        problems.add(path, f"{value!r} is out of range (allowed: {allowed})")
        return None
    return value


def _list_of(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _report(problems: _Problems, found: list[Problem], path_of) -> None:
    """Adds each setting problem at the YAML path `path_of(setting)` returns (None: the
    enclosing entry, with the setting named in the message)."""
    for p in found:
        path = path_of(p.field)
        if path is None:  # a setting the entry did not write: a preset's, or a default
            involved = [q for q in (path_of(f) for f in p.involves) if q]
            problems.add(" + ".join(involved) or path_of(None), f"{p.field}: {p.message}")
        else:
            problems.add(path, p.message)


def _parse_grid(grid: Any, problems: _Problems) -> list[NamedConfig]:
    if grid is None:
        return []
    if not isinstance(grid, Mapping):
        problems.add("grid", f"must be a mapping of one method's settings to lists of values, got {grid!r}")
        return []
    head = {k: grid[k] for k in ("preset", "method") if k in grid}
    for key, name in head.items():
        if not isinstance(name, str):
            problems.add(f"grid.{key}", f"{name!r} must be one {key} name (a grid varies one method's settings; "
                                        "list other methods under points: or presets:)")
    if any(not isinstance(name, str) for name in head.values()):
        return []
    axes = [(k, _list_of(v)) for k, v in grid.items() if k not in head]
    for key, values in axes:
        if not values:
            problems.add(f"grid.{key}", "empty list (give at least one value)")
    axes = [(k, v) for k, v in axes if v]
    n_points = 1
    for _, values in axes:
        n_points *= len(values)
    if n_points > MAX_GRID_POINTS:
        problems.add("grid", f"{n_points} points is more than {MAX_GRID_POINTS}; split the sweep")
        return []
    out = []
    for combo in itertools.product(*(range(len(v)) for _, v in axes)):
        values = {**head, **{key: vals[i] for (key, vals), i in zip(axes, combo)}}
        paths = {key: f"grid.{key}[{i}]" if isinstance(grid[key], (list, tuple)) else f"grid.{key}"
                 for (key, _), i in zip(axes, combo)}
        paths.update({k: f"grid.{k}" for k in head})
        cls, settings, found = resolve_settings(values)
        _report(problems, found, lambda f: paths.get(f) if f else "grid")  # noqa: B023 (used at once)
        if not found:
            label = "grid " + ",".join(f"{k}={values[k]}" for k, _ in axes) if axes else "grid"
            out.append(NamedConfig(label, cls(**settings)))
    return out


def _parse_points(points: Any, problems: _Problems) -> list[NamedConfig]:
    if points is None:
        return []
    if not isinstance(points, (list, tuple)):
        problems.add("points", "must be a list of config mappings")
        return []
    out = []
    for i, point in enumerate(points):
        path = f"points[{i}]"
        if not isinstance(point, Mapping):
            problems.add(path, f"must be a mapping (preset: NAME or method: NAME, plus settings), got {point!r}")
            continue
        cls, settings, found = resolve_settings(point)
        _report(problems, found, lambda f: (f"{path}.{f}" if f in point else None) if f else path)  # noqa: B023
        if not found:
            name = point.get("preset") or point.get("method")
            out.append(NamedConfig(f"points[{i}]" + (f" {name}" if name else ""), cls(**settings)))
    return out


def _parse_presets(names: Any, problems: _Problems) -> list[NamedConfig]:
    if names is None:
        return []
    out = []
    for i, name in enumerate(_list_of(names)):
        path = f"presets[{i}]" if isinstance(names, (list, tuple)) else "presets"
        if name in preset_names():
            out.append(NamedConfig(f"preset {name}", preset(name)))
        else:
            problems.add(path, f"unknown preset {name!r}; allowed: {', '.join(preset_names())}")
    return out


def _parse_datasets(data: Any, problems: _Problems, base_dir: Path | None) -> list[DatasetSpec]:
    if not isinstance(data, (list, tuple)) or not data:
        problems.add("datasets", "required: a non-empty list of {task: NAME, ...} entries")
        return []
    out: list[DatasetSpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(data):
        path = f"datasets[{i}]"
        if not isinstance(entry, Mapping):
            problems.add(path, f"must be a mapping with task: NAME, got {entry!r}")
            continue
        _unknown(problems, path, entry, _DATASET_KEYS)
        if sum(k in entry for k in ("task", "tasks", "lm_eval")) != 1:
            problems.add(path, "give exactly one of task: NAME, tasks: [NAMES] or lm_eval: {tasks: [NAMES]}")
            continue
        if "lm_eval" in entry:
            out.extend(_parse_lm_eval(entry, path, problems, base_dir, seen))
            continue
        key = "task" if "task" in entry else "tasks"
        tasks = _list_of(entry[key])
        kwargs: dict[str, Any] = {}
        if "context_length" in entry:
            kwargs["context_length"] = _int_field(problems, f"{path}.context_length", entry["context_length"], 2)
        cells = _ruler_cells(problems, path, entry, tasks)
        if "shards" in entry:
            kwargs["shards"] = _int_field(problems, f"{path}.shards", entry["shards"], 1)
        if "limit" in entry:
            kwargs["limit"] = _int_field(problems, f"{path}.limit", entry["limit"], 1, optional=True)
        if "max_length" in entry:
            kwargs["max_length"] = _int_field(problems, f"{path}.max_length", entry["max_length"], 1)
        source = entry.get("source")
        if source is not None and not isinstance(source, str):
            problems.add(f"{path}.source", f"{source!r} must be a path or hf://datasets/<owner>/<name>")
            source = None
        if source and not source.startswith("hf://") and "://" not in source and base_dir is not None:
            resolved = Path(source) if Path(source).is_absolute() or Path(source).exists() else base_dir / source
            if not Path(source).is_absolute() and not _inside(resolved, base_dir):
                problems.add(f"{path}.source", f"{source!r} leads outside {base_dir} (a relative path may not; "
                             "give an absolute path to read data elsewhere)")
            elif not resolved.exists():
                problems.add(f"{path}.source", f"no local file or folder {source!r}")
            else:
                source = str(resolved)
        for j, task in enumerate(tasks):
            tpath = f"{path}.{key}" + (f"[{j}]" if key == "tasks" else "")
            if task not in TASK_NAMES:
                problems.add(tpath, f"unknown task {task!r}; allowed: {', '.join(TASK_NAMES)}")
                continue
            kind = task_kind(task)
            if kind == "longbench" and not source:
                problems.add(f"{path}.source", f"required for LongBench task {task!r} (a .jsonl/.parquet file, "
                             "a folder of <task>.jsonl, or hf://datasets/<owner>/<name>)")
                continue
            if kind == "ruler":
                _add_ruler_cells(problems, path, tpath, task, cells, kwargs, source, seen, out)
                continue
            if "context_lengths" in entry or "depths" in entry:
                problems.add(path, f"context_lengths: / depths: are for RULER tasks; {task!r} takes context_length:")
                continue
            split = {k: entry[k] for k in ("difficulty", "length") if k in entry}
            if split and task != V2_TASK:
                problems.add(path, f"difficulty: / length: select LongBench v2 samples; not for {task!r}")
                continue
            bad = [(k, allowed) for k, allowed in (("difficulty", V2_DIFFICULTIES), ("length", V2_LENGTHS))
                   if k in split and split[k] not in allowed]
            for k, allowed in bad:
                problems.add(f"{path}.{k}", f"{split[k]!r} is out of range (allowed: {' | '.join(allowed)})")
            if bad:
                continue
            ctx = kwargs.get("context_length")
            if kind == "synthetic" and isinstance(ctx, int) and ctx < 20:
                problems.add(f"{path}.context_length", f"{ctx} is too small for synthetic task {task!r} "
                             "(allowed: >= 20 words)")
            stored = v2_split_name(task, split.get("difficulty"), split.get("length")) if split else task
            if stored in seen:
                problems.add(tpath, f"task {stored!r} already appears in {seen[stored]}; results are keyed by "
                             "(model, config, task, shard), so a sweep holds one setting per task "
                             "(run another sweep for another context length or source)")
                continue
            seen[stored] = tpath
            if None in (kwargs.get("context_length", 0), kwargs.get("shards", 0), kwargs.get("max_length", 0)):
                continue  # already reported
            out.append(DatasetSpec(task=task, source=source, **kwargs, **split))
    return out


def _ruler_cells(problems: _Problems, path: str, entry: Mapping[str, Any],
                 tasks: list[Any]) -> list[tuple[str, int, str, int | None]] | None:
    """(length path, length, depth path, depth) of every cell of a RULER entry; None when the
    entry's lengths or depths are malformed (reported here)."""
    if "context_length" in entry and "context_lengths" in entry:
        problems.add(path, "give context_length: N or context_lengths: [N, ...], not both")
        return None
    def items(key: str, what: str) -> list[tuple[str, Any]] | None:
        """(path, value) of each entry of the list entry[key]; None (reported) if it is not one."""
        values = entry[key]
        if not isinstance(values, (list, tuple)) or not values:
            problems.add(f"{path}.{key}", f"{values!r} must be a non-empty list of {what}")
            return None
        return [(f"{path}.{key}[{i}]", v) for i, v in enumerate(values)]

    length_items = (items("context_lengths", "token counts") if "context_lengths" in entry else
                    [(f"{path}.context_length", entry.get("context_length", DatasetSpec.context_length))])
    depth_items = items("depths", "percents (0..100)") if "depths" in entry else [("", None)]
    if length_items is None or depth_items is None:
        return None
    return [(lp, length, dp, depth) for lp, length in length_items for dp, depth in depth_items]


def _add_ruler_cells(problems: _Problems, path: str, tpath: str, task: str, cells, kwargs: dict[str, Any],
                     source: str | None, seen: dict[str, str], out: list[DatasetSpec]) -> None:
    """One DatasetSpec per (context length, depth) cell of a RULER task, each problem at its path."""
    if cells is None:
        return
    for lpath, length, dpath, depth in cells:
        found = ruler_problems(task, length, depth)
        for message in found:
            where = dpath if message.startswith("depth") else lpath
            problems.add(where, message)
        if found:
            continue
        name = cell_name(task, length, depth)
        if name in seen:
            problems.add(tpath, f"cell {name} already appears in {seen[name]}; a sweep holds each RULER cell once")
            continue
        seen[name] = tpath
        if None in (kwargs.get("shards", 0), kwargs.get("max_length", 0)):
            continue  # already reported
        rest = {k: v for k, v in kwargs.items() if k != "context_length"}
        out.append(DatasetSpec(task=task, source=source, context_length=length, depth=depth, **rest))


def _check_ruler_lengths(datasets, max_length: int, problems: _Problems) -> None:
    """A RULER prompt is sized to its context length; a max_length below it would cut the
    middle out of the haystack (and the needle with it)."""
    for i, d in enumerate(datasets):
        if task_kind(d.task) != "ruler":
            continue
        limit = d.max_length or max_length
        prompt = d.context_length - get_task(d.task).max_new_tokens
        if prompt > limit:
            where = f"datasets[{i}].max_length" if d.max_length else "generation.max_length"
            problems.add(where, f"{limit} is below the {prompt}-token prompts of {d.stored_task} (allowed: >= "
                         "context_length - max_new_tokens; raise it)")


def _parse_lm_eval(entry: Mapping[str, Any], path: str, problems: _Problems, base_dir: Path | None,
                   seen: dict[str, str]) -> list[DatasetSpec]:
    """`{lm_eval: {tasks: [NAMES], include_path: FOLDER}, shards:, limit:}`: one dataset per
    lm-eval task, named "lm_eval:<task>", with the include folder as its source."""
    from workers.lm_eval_tasks import task_names
    from workers.units import LM_EVAL_PREFIX

    block = entry["lm_eval"]
    bpath = f"{path}.lm_eval"
    if not isinstance(block, Mapping):
        problems.add(bpath, f"must be a mapping {{tasks: [NAMES], include_path: FOLDER}}, got {block!r}")
        return []
    _unknown(problems, bpath, block, _LM_EVAL_KEYS)
    for key in ("source", "context_length", "max_length"):
        if key in entry:
            problems.add(f"{path}.{key}", "unused by lm-eval tasks (their YAML sets data, prompts and "
                         "lengths; a folder of extra task YAMLs is lm_eval.include_path)")
    kwargs: dict[str, Any] = {}
    if "shards" in entry:
        kwargs["shards"] = _int_field(problems, f"{path}.shards", entry["shards"], 1)
    if "limit" in entry:
        kwargs["limit"] = _int_field(problems, f"{path}.limit", entry["limit"], 1, optional=True)
    include = block.get("include_path")
    if include is not None:
        folder = Path(include) if isinstance(include, str) else None
        if folder is not None and not folder.is_absolute() and base_dir is not None:
            folder = base_dir / folder
        if folder is None or not folder.is_dir():
            problems.add(f"{bpath}.include_path", f"{include!r} must be a folder of lm-eval task YAMLs")
            include = None
        else:
            include = str(folder.resolve())
    tasks = block.get("tasks")
    if not isinstance(tasks, (list, tuple)) or not tasks:
        problems.add(f"{bpath}.tasks", f"required: a non-empty list of lm-eval task names, got {tasks!r}")
        return []
    _known, groups = task_names(include)
    out = []
    for j, name in enumerate(tasks):
        tpath = f"{bpath}.tasks[{j}]"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            problems.add(tpath, f"{name!r} must be an lm-eval task name (letters, digits, '_', '.', '-')")
            continue
        if name in groups:
            problems.add(tpath, f"{name!r} is an lm-eval group: list its tasks one by one (each is one unit "
                         "of work with its own score)")
            continue
        task = LM_EVAL_PREFIX + name
        if task in seen:
            problems.add(tpath, f"lm-eval task {name!r} already appears in {seen[task]}")
            continue
        seen[task] = tpath
        if None in (kwargs.get("shards", 0),):
            continue  # already reported
        out.append(DatasetSpec(task=task, source=include, **kwargs))
    return out


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, resolved (symlinks and `..` included), lies within `folder`."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def unit_count(spec: SweepSpec) -> int:
    """How many units the spec plans, counted without building them."""
    shards = sum(d.shards or spec.shards for d in spec.datasets)
    return len(spec.configs) * len(spec.models) * shards


def check_size(spec: SweepSpec, max_units: int = MAX_UNITS) -> None:
    n = unit_count(spec)
    if n > max_units:
        raise SpecError([f"{n} units (configs x models x tasks x shards) is more than {max_units}; split "
                         "the sweep, or raise the cap with --max-units"], "spec")


def parse_spec(data: Any, *, source: str = "spec", base_dir: str | Path | None = None,
               default_name: str = "sweep") -> SweepSpec:
    """A validated `SweepSpec` from a mapping; raises `SpecError` with every problem."""
    problems = _Problems()
    if not isinstance(data, Mapping):
        raise SpecError([f"the top level must be a mapping, got {type(data).__name__}"], source)
    defaults = SweepSpec()
    _unknown(problems, "", data, _TOP_KEYS)
    kw: dict[str, Any] = {}

    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        problems.add("name", f"{name!r} must be a non-empty string")
    kw["name"] = str(name)

    if "model" in data and "models" in data:
        problems.add("models", "give model: NAME or models: [NAMES], not both")
    models = _list_of(data.get("models", data.get("model", list(defaults.models))))
    mpath = "models" if "models" in data else "model"
    if not models:
        problems.add(mpath, "at least one model is required")
    for i, m in enumerate(models):
        if not isinstance(m, str) or not m.strip():
            problems.add(f"{mpath}[{i}]" if mpath == "models" else mpath, f"{m!r} must be a model name, hub id or folder")
    kw["models"] = tuple(dict.fromkeys(str(m) for m in models))

    for key, allowed in (("dtype", _DTYPES), ("device", _DEVICES)):
        if key in data:
            if data[key] not in allowed:
                problems.add(key, f"{data[key]!r} is out of range (allowed: {' | '.join(allowed)})")
            kw[key] = str(data[key])

    configs = _parse_grid(data.get("grid"), problems) + _parse_points(data.get("points"), problems) \
        + _parse_presets(data.get("presets"), problems)
    unique: dict[str, NamedConfig] = {}
    for c in configs:
        unique.setdefault(c.config_id, c)
    if not configs and not any(k in data for k in ("grid", "points", "presets")):
        problems.add("grid", "no configs: give grid:, points: and/or presets:")
    kw["configs"] = tuple(unique.values())

    kw["datasets"] = tuple(_parse_datasets(data.get("datasets"), problems,
                                           Path(base_dir) if base_dir is not None else None))

    if "shards" in data:
        kw["shards"] = _int_field(problems, "shards", data["shards"], 1)
    if "limit" in data:
        kw["limit"] = _int_field(problems, "limit", data["limit"], 1, optional=True)
    if "seed" in data:
        if not _is_int(data["seed"]):
            problems.add("seed", f"{data['seed']!r} must be an integer")
        kw["seed"] = data["seed"]
    if "max_attempts" in data:
        kw["max_attempts"] = _int_field(problems, "max_attempts", data["max_attempts"], 1)
    gen = data.get("generation", {})
    if not isinstance(gen, Mapping):
        problems.add("generation", "must be a mapping (max_length: N)")
    else:
        _unknown(problems, "generation", gen, {"max_length"})
        if "max_length" in gen:
            kw["max_length"] = _int_field(problems, "generation.max_length", gen["max_length"], 1)

    store = data.get("store", {}) or {}
    if not isinstance(store, Mapping):
        problems.add("store", "must be a mapping (url:, blobs:)")
        store = {}
    _unknown(problems, "store", store, {"url", "blobs"})
    for key in ("url", "blobs"):
        if key in store and store[key] is not None and not isinstance(store[key], str):
            problems.add(f"store.{key}", f"{store[key]!r} must be a string")
    kw["store"] = StoreSpec(url=store.get("url"), blobs=store.get("blobs"))

    res = data.get("resources", {}) or {}
    if not isinstance(res, Mapping):
        problems.add("resources", "must be a mapping")
        res = {}
    _unknown(problems, "resources", res, {f.name for f in dataclasses.fields(ResourceSpec)})
    rkw: dict[str, Any] = {}
    if "num_actors" in res:
        rkw["num_actors"] = _int_field(problems, "resources.num_actors", res["num_actors"], 1)
    for key in ("max_restarts", "max_task_retries"):
        if key in res:
            value = res[key]
            if not _is_int(value) or value < -1:
                problems.add(f"resources.{key}", f"{value!r} is out of range (allowed: integer >= -1; -1 = unlimited)")
            rkw[key] = value
    if "num_gpus_per_actor" in res:
        value = res["num_gpus_per_actor"]
        if value in (None, "auto"):
            value = None
        elif not _is_num(value) or value < 0:
            problems.add("resources.num_gpus_per_actor", f"{value!r} is out of range (allowed: auto or a number >= 0)")
        rkw["num_gpus_per_actor"] = value
    if "num_cpus_per_actor" in res:
        value = res["num_cpus_per_actor"]
        if not _is_num(value) or value < 0:
            problems.add("resources.num_cpus_per_actor", f"{value!r} is out of range (allowed: a number >= 0)")
        rkw["num_cpus_per_actor"] = value
    if "write_results" in res:
        if res["write_results"] not in ("driver", "actor"):
            problems.add("resources.write_results", f"{res['write_results']!r} is out of range (allowed: driver | actor)")
        rkw["write_results"] = res["write_results"]
    kw["resources"] = ResourceSpec(**rkw)

    if data.get("sweep_id") is not None:
        sid = data["sweep_id"]
        if not isinstance(sid, str) or not _SWEEP_ID.match(sid):
            problems.add("sweep_id", f"{sid!r} must be 1-128 of letters, digits, '_', '.', '-'")
        kw["sweep_id"] = sid

    # Impossible combinations across sections.
    if kw.get("device") == "cuda" and kw["resources"].num_gpus_per_actor == 0:
        problems.add("resources.num_gpus_per_actor", "0 GPUs per actor with device: cuda")
    _check_unquantized_windows(kw.get("configs", ()), kw.get("datasets", ()), problems)
    _check_ruler_lengths(kw.get("datasets", ()), kw.get("max_length") or defaults.max_length, problems)
    if problems:
        raise SpecError(problems, source)
    kw["raw"] = dict(data)
    return SweepSpec(**kw)


def _check_unquantized_windows(configs, datasets, problems: _Problems) -> None:
    """Under the streaming protocol a chunk attends to its own keys/values in full precision,
    so a perplexity window no longer than one chunk never sees a quantized token: its
    perplexity would equal the uncompressed one whatever the method. Reject that pairing."""
    for i, d in enumerate(datasets):
        if d.task not in PERPLEXITY_TASKS:
            continue
        for named in configs:
            cfg = named.config
            # chunk_size None: a method that prefills in one forward, by its own protocol.
            if (cfg.chunk_size is not None and not cfg.is_lossless
                    and not cfg.quantize_current_chunk and d.context_length <= cfg.chunk_size):
                problems.add(f"datasets[{i}].context_length",
                             f"{d.context_length} <= chunk_size={cfg.chunk_size} of {named.label}: a "
                             "window inside one chunk is never quantized under the streaming protocol "
                             "(use a longer context, a smaller chunk_size, or quantize_current_chunk: true)")
                break


def load_spec(path: str | Path) -> SweepSpec:
    """Reads and validates a YAML spec file (paths inside are relative to the file or the cwd)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep spec {p} not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], str(p)) from None
    return parse_spec(data if data is not None else {}, source=str(p), base_dir=Path.cwd(),
                      default_name=p.stem)


def apply_overrides(spec: SweepSpec, *, db: str | None = None, blobs: str | None = None,
                    sweep_id: str | None = None, num_actors: int | None = None,
                    max_attempts: int | None = None, limit: int | None = None) -> SweepSpec:
    """Command-line values over the file's (None leaves a value as it is). `limit` caps the
    samples per shard of every dataset (a quick end-to-end run of a real spec)."""
    problems = _Problems()
    if limit is not None and (not _is_int(limit) or limit < 1):
        problems.add("--limit", f"{limit!r} is out of range (allowed: integer >= 1)")
    if num_actors is not None and (not _is_int(num_actors) or num_actors < 1):
        problems.add("--num-actors", f"{num_actors!r} is out of range (allowed: integer >= 1)")
    if max_attempts is not None and (not _is_int(max_attempts) or max_attempts < 1):
        problems.add("--max-attempts", f"{max_attempts!r} is out of range (allowed: integer >= 1)")
    if sweep_id is not None and not _SWEEP_ID.match(sweep_id):
        problems.add("--sweep-id", f"{sweep_id!r} must be 1-128 of letters, digits, '_', '.', '-'")
    if problems:
        raise SpecError(problems, "command line")
    store = dataclasses.replace(spec.store, url=db or spec.store.url, blobs=blobs or spec.store.blobs)
    resources = spec.resources if num_actors is None else dataclasses.replace(spec.resources, num_actors=num_actors)
    datasets = spec.datasets
    if limit is not None:
        datasets = tuple(dataclasses.replace(d, limit=min(limit, d.limit or spec.limit or limit))
                         for d in spec.datasets)
    return dataclasses.replace(spec, store=store, resources=resources, sweep_id=sweep_id or spec.sweep_id,
                               max_attempts=max_attempts or spec.max_attempts, datasets=datasets,
                               limit=limit if limit is not None else spec.limit)


__all__ = ["MAX_UNITS", "check_size", "unit_count", "DatasetSpec", "NamedConfig", "ResourceSpec", "SpecError", "StoreSpec", "SweepSpec",
           "apply_overrides", "load_spec", "parse_spec"]
