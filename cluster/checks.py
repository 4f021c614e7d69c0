"""Checks of a parsed sweep spec that read something outside it, run before any unit is
scheduled or any database created: each model's config (not its weights: the family must be
one streamkv compresses, and every config's model-dependent settings must fit it), each data
file (read and validated once), and the store's URL. Every problem is reported with its path
in the spec, like the spec's own checks (`cluster.spec`).
"""

from __future__ import annotations

from pathlib import Path

from cluster.spec import SpecError, SweepSpec
from workers.units import task_kind

SUPPORTED_STORES = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"


def store_url_problem(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return f"{url!r} is not a database URL (allowed: {SUPPORTED_STORES})"
    if backend not in ("sqlite", "postgresql"):
        return f"{backend!r} databases are not supported (allowed: {SUPPORTED_STORES})"
    return None


def model_problems(spec: SweepSpec) -> list[str]:
    from streamkv.families import unsupported_reason
    from streamkv.loading import model_config

    problems = []
    for i, name in enumerate(spec.models):
        path = f"models[{i}]"
        try:
            config = model_config(name)
        except (OSError, ValueError) as err:  # unknown hub id, missing wheel, unreadable folder
            problems.append(f"{path}: cannot read the config of model {name!r}: {str(err).splitlines()[0]}")
            continue
        reason = unsupported_reason(config)
        if reason:
            problems.append(f"{path}: {reason}")
            continue
        for named in spec.configs:
            problems += [f"{named.label} on {path} {name}: {p}" for p in named.config.model_problems(config)]
    return problems


def data_problems(spec: SweepSpec) -> list[str]:
    from workers import data as lb_data
    from workers.perplexity import DEFAULT_WIKITEXT
    from workers.tasks import get_task

    problems = []
    for i, d in enumerate(spec.datasets):
        path = f"datasets[{i}]"
        if task_kind(d.task) == "longbench":
            try:
                lb_data.load_longbench(d.source, get_task(d.task).rows_of)  # every row validated, once
            except (OSError, ValueError) as err:
                problems.append(f"{path} ({d.task}): {err}")
        elif not Path(d.source or DEFAULT_WIKITEXT).is_file():
            problems.append(f"{path}.source: no text file {d.source or DEFAULT_WIKITEXT}")
    return problems


def preflight(spec: SweepSpec) -> None:
    """Raises `SpecError` with every problem of what the spec names; returns when all is well."""
    problems = []
    url_problem = store_url_problem(spec.store.resolved_url)
    if url_problem:
        problems.append(f"store.url: {url_problem}")
    problems += model_problems(spec) + data_problems(spec)
    if problems:
        raise SpecError(problems, "sweep")


__all__ = ["SUPPORTED_STORES", "data_problems", "model_problems", "preflight", "store_url_problem"]
