"""One trial of a search: sampled parameters -> a config -> its units on the shared model actors.

- `param_space(spec, shape)`: the Tune search space; a per-layer dimension becomes one
  categorical parameter per group of adjacent layers (`<field>.g<j>`), a per-head one one per
  group and KV head (`<field>.g<j>.h<h>`), expanded back to one entry per layer (per head) by
  `trial_config`.
- `Dispatcher` (an async Ray actor, no CPU): hands each unit to an idle model actor. The
  model actors are created once by the driver and shared by every trial (a trial is a light
  Tune function holding no model); the dispatcher, not the trial, gives an actor back when its
  unit ends, so a trial that Tune stops mid-unit cannot leak one.
- `run_trial` (the Tune function): per search shard either reads the stored result (a unit done before, by this trial
  before an interruption or by an earlier trial with the same config) or registers the unit
  (and the config) under the search id, runs it and stores it; after each shard it reports the running figures (`tune.report`), so ASHA can stop a
  bad trial after a few shards. A trial measured over its budget stops after that shard: its
  bits do not come down with more windows. An error is stored on its unit (`mark_failed`) and
  re-raised: Tune records the trial as errored and the search goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from store import BlobStore, create_store_engine
from store.queries import result_frame
from store.repository import completed_units, mark_failed, mark_running, register_sweep, write_unit_result
from streamkv.methods import Method
from workers.units import WorkUnit

from store.searches import aggregate, feasible, penalized, unit_figures
from .tune_spec import Dimension, ModelShape, SearchSpec


# --- parameters <-> configs --------------------------------------------------------------------------
def n_groups(dim: Dimension, shape: ModelShape) -> int:
    """Layer groups of an allocation dimension (one per layer when it names none)."""
    return min(dim.groups or shape.n_layers, shape.n_layers)


def group_params(dim: Dimension, shape: ModelShape) -> list[str]:
    """A per-layer dimension's parameters, one per layer group; per-head: one per group and head."""
    groups = range(n_groups(dim, shape))
    if dim.kind == "per_head":
        return [f"{dim.field}.g{j}.h{h}" for j in groups for h in range(shape.n_kv_heads)]
    return [f"{dim.field}.g{j}" for j in groups]


def param_space(spec: SearchSpec, shape: ModelShape) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for d in spec.space:
        if d.kind == "choice":
            space[d.field] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            space[d.field] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            space[d.field] = tune.loguniform(*d.values)
        elif d.kind == "int":
            space[d.field] = tune.randint(d.values[0], d.values[1] + 1)  # randint's high is excluded
        else:
            space.update({name: tune.choice(list(d.values)) for name in group_params(d, shape)})
    return space


def start_points(spec: SearchSpec, shape: ModelShape) -> list[dict[str, Any]]:
    """`search.start` as Tune parameters (an allocation's value spread over its groups and heads)."""
    points = []
    for point in spec.search.start:
        params: dict[str, Any] = {}
        for d in spec.space:
            if not d.allocation:
                params[d.field] = point[d.field]
                continue
            names = group_params(d, shape)
            value = point[d.field]
            per_group = list(value) if isinstance(value, (list, tuple)) else [value] * n_groups(d, shape)
            if d.kind == "per_head":
                per_group = [list(e) if isinstance(e, (list, tuple)) else [e] * shape.n_kv_heads for e in per_group]
                params.update(zip(names, [b for e in per_group for b in e]))
            else:
                params.update(zip(names, per_group))
        points.append(params)
    return points


def trial_settings(spec: SearchSpec, params: dict[str, Any], shape: ModelShape) -> dict[str, Any]:
    """The full settings mapping of a trial: the base, with the sampled values."""
    settings = dict(spec.base)
    n_layers = shape.n_layers
    for d in spec.space:
        if d.allocation:
            # layer i belongs to group i * groups // n_layers: contiguous, sizes differ by <= 1
            group_of = [i * n_groups(d, shape) // n_layers for i in range(n_layers)]
            if d.kind == "per_head":
                settings[d.field] = tuple(tuple(int(params[f"{d.field}.g{g}.h{h}"]) for h in range(shape.n_kv_heads))
                                          for g in group_of)
            else:
                settings[d.field] = tuple(int(params[f"{d.field}.g{g}"]) for g in group_of)
        elif d.kind == "int":
            settings[d.field] = int(params[d.field])
        elif d.kind in ("uniform", "loguniform"):
            settings[d.field] = float(params[d.field])
        else:
            settings[d.field] = params[d.field]
    return settings


def trial_config(spec: SearchSpec, params: dict[str, Any], shape: ModelShape) -> Method:
    """The method object of a trial (raises `InvalidSettings` for a combination the method refuses)."""
    return spec.method(**trial_settings(spec, params, shape))


def unit_of(spec: SearchSpec, config: Method, shard: int, search_id: str) -> WorkUnit:
    d = spec.data
    return WorkUnit(model=spec.model, config=config, task=d.task, shard=f"{shard}/{d.shards}", source=d.source,
                    limit=d.limit, max_length=d.max_length, context_length=d.context_length, seed=d.seed,
                    sweep_id=search_id)


# --- the shared model actors ----------------------------------------------------------------------------
class Dispatcher:
    """Wrapped in `ray.remote(num_cpus=0)`: runs a unit on the next idle model actor."""

    def __init__(self, workers: list[Any]):
        self.workers = workers
        self.idle: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(workers)):
            self.idle.put_nowait(i)

    async def run(self, unit: WorkUnit):
        i = await self.idle.get()
        try:
            return await self.workers[i].run_unit.remote(unit)
        finally:
            self.idle.put_nowait(i)

    async def size(self) -> int:
        return len(self.workers)


# --- the trial -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, passed with `tune.with_parameters` (one copy in the object store)."""

    spec: SearchSpec
    search_id: str
    shape: ModelShape
    store_url: str  # absolute (trials run in other processes, maybe other nodes)
    blob_root: str
    dispatcher: Any  # the `Dispatcher` actor handle


def _stored_figures(engine, key):
    rows = result_frame(engine, key.sweep_id, filters={"config_id": key.config_id, "shard": key.shard})
    return unit_figures(rows.iloc[0].to_dict())


def _run_unit(ctx: TrialContext, engine, blobs, unit: WorkUnit):
    import ray

    mark_running(engine, unit.key, worker="tune-trial", device="")
    try:
        result = ray.get(ctx.dispatcher.run.remote(unit))
    except Exception as err:  # recorded on the unit, then Tune records the trial as errored
        mark_failed(engine, unit.key, f"{type(err).__name__}: {err}", final=True)
        raise
    write_unit_result(engine, blobs, result)
    return unit_figures({"n_samples": result.n_samples, **result.metrics, "avg_key_bits": result.avg_key_bits,
                         "avg_value_bits": result.avg_value_bits, "kv_bytes": result.kv_bytes})


def run_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    from ray import tune

    spec = ctx.spec
    try:
        config = trial_config(spec, params, ctx.shape)
    except ValueError as err:  # InvalidSettings: a plain ValueError, which Ray can copy into its error
        raise ValueError(f"the method refuses these settings: {err}") from None
    units = [unit_of(spec, config, s, ctx.search_id) for s in spec.data.search_shards]
    engine = create_store_engine(ctx.store_url)
    blobs = BlobStore(ctx.blob_root)
    try:
        done = completed_units(engine, ctx.search_id)
        figures = []
        for step, unit in enumerate(units, start=1):
            if unit.key in done:
                figures.append(_stored_figures(engine, unit.key))
            else:  # registered when it runs: a trial stopped early leaves no pending units behind
                register_sweep(engine, ctx.search_id, spec.name, spec.raw, [unit.key], [config.to_dict()])
                figures.append(_run_unit(ctx, engine, blobs, unit))
            fig = aggregate(figures)
            ok = feasible(fig, spec.max_avg_bits, spec.max_cache_bytes)
            tune.report({"objective": penalized(fig, spec.objective, spec.max_avg_bits, spec.max_cache_bytes),
                         "kl": fig.kl, "perplexity": fig.perplexity, "score": fig.score,
                         "avg_bits": fig.avg_bits, "kv_bytes": fig.kv_bytes, "feasible": ok,
                         "shards_done": step, "config_id": config.config_id})
            if not ok:
                return
    finally:
        engine.dispose()


__all__ = ["Dispatcher", "TrialContext", "param_space", "run_trial", "trial_config", "trial_settings", "unit_of"]
