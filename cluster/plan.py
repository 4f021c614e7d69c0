"""`plan(spec) -> list[WorkUnit]`: the units of a sweep, pure and deterministic.

Order: model (an actor holds one model, so a model's units are contiguous), then dataset
(file order), then config (file order: grid points, points, presets; duplicates by
`config_id` dropped), then shard. The sweep id is `spec.sweep_id` or `<name>-<content hash>`
(`SweepSpec.resolved_sweep_id`), so running the same spec again resumes the same sweep.
"""

from __future__ import annotations

from itertools import groupby

from workers.units import WorkUnit

from .spec import SweepSpec


def plan(spec: SweepSpec) -> list[WorkUnit]:
    sweep_id = spec.resolved_sweep_id
    units: list[WorkUnit] = []
    for model in spec.models:
        for ds in spec.datasets:
            shards = ds.shards or spec.shards
            limit = ds.limit if ds.limit is not None else spec.limit
            max_length = ds.max_length or spec.max_length
            for named in spec.configs:
                for i in range(shards):
                    units.append(WorkUnit(model=model, config=named.config, task=ds.task,
                                          shard=f"{i}/{shards}", source=ds.source, limit=limit,
                                          max_length=max_length, context_length=ds.context_length,
                                          depth=ds.depth, difficulty=ds.difficulty, length_class=ds.length,
                                          seed=spec.seed, sweep_id=sweep_id))
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):  # parse_spec rejects duplicate tasks; configs are deduplicated
        raise AssertionError("plan produced duplicate unit keys")
    return units


def by_model(units: list[WorkUnit]) -> list[tuple[str, list[WorkUnit]]]:
    """Consecutive runs of one model (plan() makes each model one run)."""
    return [(model, list(group)) for model, group in groupby(units, key=lambda u: u.model)]


__all__ = ["by_model", "plan"]
