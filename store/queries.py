"""Reads for the dashboard and the CLI: pandas DataFrames or entity dataclasses.

All SQL is built from SQLAlchemy constructs with bound parameters; user-supplied filter names
are checked against the known column names, never pasted into SQL.

The store knows no compression method's fields: frames read from the views carry each row's
config_json (a dict) and one column per key found in them (`expand_config`), filled with the
JSON values as they are (None where a config lacks the key). Filters on such a field run in
pandas after the SQL ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import DateTime, Float, Integer, Select, Table, and_, case, func, or_, select
from sqlalchemy.engine import Engine

from .blobs import BlobStore
from .db import read_connection
from .entities import BlobRef, SampleRow, SweepRecord, UnitKey, UnitRecord, UnitResult
from .repository import (
    COMMON_CONFIG_FIELDS,
    KEY_COLUMNS,
    blobs_t,
    configs_t,
    results_t,
    samples_t,
    summaries_t,
    sweeps_t,
    units_t,
)
from .entities import UNIT_STATUSES
from .intervals import DEFAULT_RESAMPLES, bootstrap_interval
from .schema import UtcDateTime, v_task_scores, v_unit_results
from .searches import shard_index

FilterValues = Any  # a scalar or an iterable of allowed values (None matches NULL)

CONFIG_JSON = "config_json"
# View columns that `result_frame` / `baseline_deltas(filters=...)` filter on in SQL; any other
# name must be a config field column (see `config_field_column`).
RESULT_FILTER_COLUMNS: frozenset[str] = frozenset(v_unit_results.c.keys()) - {CONFIG_JSON}
TASK_SCORE_FILTER_COLUMNS: frozenset[str] = frozenset(v_task_scores.c.keys()) - {CONFIG_JSON}
# Names a config field cannot take as a column: it would overwrite a view column.
_TAKEN_COLUMNS: frozenset[str] = (
    frozenset(v_unit_results.c.keys()) | frozenset(v_task_scores.c.keys())
) - frozenset(COMMON_CONFIG_FIELDS)


def _frame(engine: Engine, stmt: Select[Any]) -> pd.DataFrame:
    with read_connection(engine) as conn:
        result = conn.execute(stmt)
        df = pd.DataFrame(result.all(), columns=list(result.keys()))
    # Give columns the dtype of their SQL type even when they hold NULLs (which would
    # otherwise leave them as object columns of None): NaN floats, nullable Int64, UTC times.
    for col in stmt.selected_columns:
        name = col.key
        if name not in df.columns:
            continue
        if isinstance(col.type, Float):
            df[name] = pd.to_numeric(df[name]).astype("float64")
        elif isinstance(col.type, Integer) and df[name].isna().any():
            df[name] = df[name].astype("Int64")
        elif isinstance(col.type, (DateTime, UtcDateTime)):
            df[name] = pd.to_datetime(df[name], utc=True)
    return df


def _values(value: FilterValues) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _where(table: Table, filters: Mapping[str, FilterValues], allowed: frozenset[str]) -> list[Any]:
    """Conditions `column IN (...)` for each filter; unknown names raise ValueError."""
    unknown = sorted(set(filters) - allowed)
    if unknown:
        raise ValueError(f"unknown filter column(s) {unknown}; allowed: {sorted(allowed)}")
    conds = []
    for name, value in filters.items():
        col = table.c[name]
        vals = _values(value)
        non_null = [v for v in vals if v is not None]
        cond = col.in_(non_null)
        conds.append(or_(cond, col.is_(None)) if len(non_null) < len(vals) else cond)
    return conds


def _common(sweep_id: FilterValues, models: FilterValues, tasks: FilterValues,
            methods: FilterValues) -> dict[str, FilterValues]:
    named = {"sweep_id": sweep_id, "model_id": models, "task": tasks, "method": methods}
    return {k: v for k, v in named.items() if v is not None}


# --- config fields (keys of config_json) as columns ------------------------------------------
def config_field_column(key: str) -> str:
    """The frame column of config field `key`: the key itself, or `config_<key>` when a view
    column has that name (a method's field called e.g. "score" must not hide the score)."""
    return f"config_{key}" if key in _TAKEN_COLUMNS else key


def _field_keys(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of `configs`: the common fields first, then the others sorted (PostgreSQL's
    JSONB does not keep key order, so first-seen order would differ between dialects)."""
    keys = {k for c in configs for k in c}
    common = [k for k in COMMON_CONFIG_FIELDS if k in keys]
    return common + sorted(keys - set(common))


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The config field columns of a frame from `result_frame` / `baseline_deltas`."""
    if CONFIG_JSON not in frame.columns:
        return []
    return [config_field_column(k) for k in _field_keys(_configs_of(frame))
            if config_field_column(k) in frame.columns]


def _configs_of(frame: pd.DataFrame) -> list[Mapping[str, Any]]:
    return [c if isinstance(c, Mapping) else {} for c in frame[CONFIG_JSON]]


def _cell(value: Any) -> Any:
    # Lists / objects as compact JSON text: a cell must be hashable to filter and group on.
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _field_series(values: list[Any], index: pd.Index) -> pd.Series:
    """JSON values unchanged; a column without gaps gets its natural dtype (int64, bool...),
    one with gaps stays object so 4 stays 4 next to None instead of becoming 4.0 next to NaN."""
    series = pd.Series(values, index=index, dtype="object")
    return series if series.isna().any() else series.infer_objects()


def expand_config(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus one column per config_json key (method, chunk_size and
    quantize_current_chunk are already columns of the views)."""
    if CONFIG_JSON not in frame.columns:
        return frame
    configs = _configs_of(frame)
    columns = {config_field_column(k): _field_series([_cell(c.get(k)) for c in configs],
                                                     frame.index)
               for k in _field_keys(configs) if config_field_column(k) not in frame.columns}
    return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)


def _stored_config_columns(engine: Engine) -> set[str]:
    with read_connection(engine) as conn:
        configs = list(conn.scalars(select(configs_t.c.config_json)))
    return {config_field_column(k) for k in _field_keys(configs)}


def _split_filters(engine: Engine, filters: Mapping[str, FilterValues],
                   sql_columns: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(view-column filters, config-field filters); a name that is neither raises ValueError."""
    sql = {k: v for k, v in filters.items() if k in sql_columns}
    fields = {k: v for k, v in filters.items() if k not in sql_columns}
    unknown = sorted(set(fields) - _stored_config_columns(engine)) if fields else []
    if unknown:
        raise ValueError(f"unknown filter column(s) {unknown}: neither a view column "
                         f"({sorted(sql_columns)}) nor a field of a stored config")
    return sql, fields


def _field_mask(column: pd.Series, value: FilterValues) -> pd.Series:
    """Pandas twin of `_where`: the value is one of the allowed ones; None matches a gap."""
    allowed = _values(value)
    non_null = [v for v in allowed if v is not None]
    gaps = column.isna()
    hits = column.astype("object").where(~gaps, None).map(
        lambda v: v is not None and any(v == a for a in non_null))
    return hits | gaps if len(non_null) < len(allowed) else hits


def _filter_fields(frame: pd.DataFrame, filters: Mapping[str, FilterValues]) -> pd.DataFrame:
    for name, value in filters.items():
        column = frame[name] if name in frame.columns else pd.Series(None, index=frame.index)
        frame = frame[_field_mask(column, value).astype(bool)]
    return frame.reset_index(drop=True)


def _view_frame(engine: Engine, view: Table, sql_columns: frozenset[str],
                filters: Mapping[str, FilterValues], order: Sequence[str]) -> pd.DataFrame:
    sql, fields = _split_filters(engine, filters, sql_columns)
    stmt = (select(view).where(*_where(view, sql, sql_columns))
            .order_by(*(view.c[name] for name in order)))
    return _filter_fields(expand_config(_frame(engine, stmt)), fields)


# --- sweeps and units -------------------------------------------------------------------------
def list_sweeps(engine: Engine) -> pd.DataFrame:
    """One row per sweep, newest first, with unit counts per status."""
    counts = [func.coalesce(func.sum(case((units_t.c.status == s, 1), else_=0)), 0)
              .label(f"n_{s}") for s in UNIT_STATUSES]
    stmt = (select(sweeps_t.c.sweep_id, sweeps_t.c.name, sweeps_t.c.status,
                   sweeps_t.c.created_by, sweeps_t.c.created_at, sweeps_t.c.finished_at,
                   func.count(units_t.c.unit_id).label("n_units"), *counts)
            .select_from(sweeps_t.outerjoin(units_t, units_t.c.sweep_id == sweeps_t.c.sweep_id))
            .group_by(*(sweeps_t.c[n] for n in ("sweep_id", "name", "status", "created_by",
                                                "created_at", "finished_at")))
            .order_by(sweeps_t.c.created_at.desc(), sweeps_t.c.sweep_id))
    return _frame(engine, stmt)


def get_sweep(engine: Engine, sweep_id: str) -> SweepRecord | None:
    with read_connection(engine) as conn:
        row = conn.execute(select(sweeps_t).where(sweeps_t.c.sweep_id == sweep_id)).first()
    if row is None:
        return None
    return SweepRecord(sweep_id=row.sweep_id, name=row.name, spec=row.spec,
                       created_by=row.created_by, created_at=row.created_at,
                       status=row.status, finished_at=row.finished_at)


def unit_status(engine: Engine, sweep_id: str, statuses: FilterValues = None) -> pd.DataFrame:
    """The units of a sweep with their status, attempts, worker, timing and last error."""
    stmt = (select(units_t.c.unit_id, *(units_t.c[n] for n in KEY_COLUMNS), configs_t.c.method,
                   units_t.c.status, units_t.c.attempts, units_t.c.worker, units_t.c.device,
                   units_t.c.started_at, units_t.c.finished_at, units_t.c.error)
            .join(configs_t, configs_t.c.config_id == units_t.c.config_id)
            .where(units_t.c.sweep_id == sweep_id)
            .order_by(units_t.c.model_id, units_t.c.config_id, units_t.c.task, units_t.c.shard))
    if statuses is not None:
        stmt = stmt.where(units_t.c.status.in_(_values(statuses)))
    return _frame(engine, stmt)


def unit_record(engine: Engine, key: UnitKey) -> UnitRecord | None:
    with read_connection(engine) as conn:
        row = conn.execute(select(units_t).where(
            *(units_t.c[n] == getattr(key, n) for n in KEY_COLUMNS))).first()
    if row is None:
        return None
    return UnitRecord(key=key, status=row.status, attempts=row.attempts, worker=row.worker,
                      device=row.device, started_at=row.started_at,
                      finished_at=row.finished_at, error=row.error,
                      claimed_by=row.claimed_by, lease_until=row.lease_until)


def failures(engine: Engine, sweep_id: str | None = None) -> pd.DataFrame:
    """Failed units, and units waiting for a retry after an error, with the error text."""
    stmt = (select(*(units_t.c[n] for n in KEY_COLUMNS), units_t.c.status, units_t.c.attempts,
                   units_t.c.worker, units_t.c.device, units_t.c.finished_at, units_t.c.error)
            .where(or_(units_t.c.status == "failed",
                       and_(units_t.c.error.is_not(None),
                            units_t.c.status.in_(["pending", "running"]))))
            .order_by(units_t.c.finished_at.desc(), units_t.c.unit_id))
    if sweep_id is not None:
        stmt = stmt.where(units_t.c.sweep_id == sweep_id)
    return _frame(engine, stmt)


def throughput(engine: Engine, sweep_id: str | None = None, freq: str = "5min") -> pd.DataFrame:
    """Finished units and samples per time bucket of `freq` (pandas offset), plus the
    cumulative unit count: columns bucket, units, samples, cumulative_units."""
    stmt = (select(units_t.c.finished_at, summaries_t.c.n_samples)
            .join(summaries_t, summaries_t.c.unit_id == units_t.c.unit_id)
            .where(units_t.c.status == "done", units_t.c.finished_at.is_not(None)))
    if sweep_id is not None:
        stmt = stmt.where(units_t.c.sweep_id == sweep_id)
    df = _frame(engine, stmt)
    if df.empty:
        return pd.DataFrame({"bucket": pd.Series(dtype="datetime64[us, UTC]"),
                             "units": pd.Series(dtype="int64"),
                             "samples": pd.Series(dtype="int64"),
                             "cumulative_units": pd.Series(dtype="int64")})
    df["finished_at"] = pd.to_datetime(df["finished_at"], utc=True)
    out = (df.set_index("finished_at").sort_index()
           .resample(freq).agg(units=("n_samples", "size"), samples=("n_samples", "sum"))
           .reset_index().rename(columns={"finished_at": "bucket"}))
    out["cumulative_units"] = out["units"].cumsum()
    return out


# --- results ----------------------------------------------------------------------------------
def result_frame(engine: Engine, sweep_id: FilterValues = None, models: FilterValues = None,
                 tasks: FilterValues = None, methods: FilterValues = None,
                 filters: Mapping[str, FilterValues] | None = None) -> pd.DataFrame:
    """Rows of v_unit_results (one per finished unit) with one column per config field,
    filtered by sweep/model/task/method and by `filters`: column or config field name ->
    allowed value(s), e.g. {"shard": "0/2", "key_bits_normal": [2, 4]}."""
    return _view_frame(engine, v_unit_results, RESULT_FILTER_COLUMNS,
                       {**_common(sweep_id, models, tasks, methods), **(filters or {})},
                       ("sweep_id", "model_id", "config_id", "task", "shard"))


def baseline_deltas(engine: Engine, sweep_id: FilterValues = None, models: FilterValues = None,
                    tasks: FilterValues = None, methods: FilterValues = None,
                    filters: Mapping[str, FilterValues] | None = None, *, pooled: bool = True) -> pd.DataFrame:
    """Rows of v_task_scores: per sweep x model x config x task, shards aggregated (weighted by
    n_samples), with baseline_score and score_delta against method='none', and one column
    per config field; `filters` as in `result_frame`. With `pooled`, the interval of a task run
    as several shards (NULL in the view) is the one of its pooled samples (`pooled_intervals`)."""
    frame = _view_frame(engine, v_task_scores, TASK_SCORE_FILTER_COLUMNS,
                        {**_common(sweep_id, models, tasks, methods), **(filters or {})},
                        ("sweep_id", "model_id", "task", "config_id"))
    if not pooled or frame.empty or not (frame["n_shards"] > 1).any():
        return frame
    keys = ["sweep_id", "model_id", "config_id", "task"]
    found = pooled_intervals(engine, frame.loc[frame["n_shards"] > 1, keys])
    if found.empty:
        return frame
    merged = frame.merge(found, on=keys, how="left", suffixes=("", "_pooled"))
    for bound in ("score_ci_low", "score_ci_high"):
        merged[bound] = merged[bound].fillna(merged.pop(f"{bound}_pooled"))
    return merged


def pooled_intervals(engine: Engine, groups: pd.DataFrame, *,
                     n_resamples: int = DEFAULT_RESAMPLES) -> pd.DataFrame:
    """The 95 % bootstrap interval of each (sweep_id, model_id, config_id, task) of `groups`
    over the samples of all its finished shards pooled, the interval a single unit holding all
    those samples would get (`store.intervals`, x 100 like the score).

    Shard intervals do not combine, so the samples are re-read: in shard order, then sample id
    (the bootstrap's draws depend on the order), seeded by the units' seed (`environment`, 0
    when absent). A group gets no interval (left out) unless every one of its finished units
    has a per-sample score for each of its n_samples samples, so the pooled mean is the task
    score the view reports. Columns: the four keys, n_pooled, score_ci_low, score_ci_high."""
    keys = ["sweep_id", "model_id", "config_id", "task"]
    columns = [*keys, "n_pooled", "score_ci_low", "score_ci_high"]
    if groups.empty:
        return pd.DataFrame(columns=columns)
    stmt = (select(units_t.c.unit_id, *(units_t.c[k] for k in keys), units_t.c.shard,
                   summaries_t.c.n_samples, summaries_t.c.environment, samples_t.c.sample_id, samples_t.c.score)
            .join(summaries_t, summaries_t.c.unit_id == units_t.c.unit_id)
            .join(samples_t, samples_t.c.unit_id == units_t.c.unit_id)
            .where(units_t.c.status == "done", units_t.c.sweep_id.in_(sorted(set(groups["sweep_id"]))),
                   units_t.c.task.in_(sorted(set(groups["task"])))))
    with read_connection(engine) as conn:
        rows = pd.DataFrame(conn.execute(stmt).all(),
                            columns=["unit_id", *keys, "shard", "n_samples", "environment", "sample_id", "score"])
    wanted = set(map(tuple, groups[keys].itertuples(index=False)))
    out = []
    for key, group in rows.groupby(keys, sort=True):
        if key not in wanted:
            continue
        per_unit = group.groupby("unit_id").agg(n=("n_samples", "first"), scored=("score", "count"))
        if (per_unit["n"] != per_unit["scored"]).any():
            continue  # a unit without per-sample scores (or with missing ones): no pooled figure
        group = group.assign(shard_index=group["shard"].map(shard_index))
        group = group.sort_values(["shard_index", "sample_id"])
        env = group["environment"].iloc[0]
        env = json.loads(env) if isinstance(env, str) else (env or {})
        seed = int(env.get("seed", 0) or 0)
        ci = bootstrap_interval([float(v) for v in group["score"]], n_resamples=n_resamples, seed=seed)
        out.append((*key, ci.n, 100.0 * ci.low, 100.0 * ci.high))
    return pd.DataFrame(out, columns=columns)


def metric_frame(engine: Engine, sweep_id: str, metrics: FilterValues = None) -> pd.DataFrame:
    """Long format: one row per unit x metric (all metrics, not only the summary ones)."""
    stmt = (select(*(units_t.c[n] for n in KEY_COLUMNS), results_t.c.metric, results_t.c.value)
            .join(results_t, results_t.c.unit_id == units_t.c.unit_id)
            .where(units_t.c.sweep_id == sweep_id)
            .order_by(units_t.c.unit_id, results_t.c.metric))
    if metrics is not None:
        stmt = stmt.where(results_t.c.metric.in_(_values(metrics)))
    return _frame(engine, stmt)


def _unit_id_query(key: UnitKey) -> Any:
    return select(units_t.c.unit_id).where(
        *(units_t.c[n] == getattr(key, n) for n in KEY_COLUMNS)).scalar_subquery()


def samples_frame(engine: Engine, key: UnitKey) -> pd.DataFrame:
    stmt = (select(samples_t.c.sample_id, samples_t.c.prediction, samples_t.c.answers,
                   samples_t.c.score, samples_t.c.prompt_tokens, samples_t.c.extra)
            .where(samples_t.c.unit_id == _unit_id_query(key)).order_by(samples_t.c.sample_id))
    return _frame(engine, stmt)


def trace_refs(engine: Engine, key: UnitKey) -> dict[str, BlobRef]:
    """The trace blobs of a unit by kind."""
    stmt = select(blobs_t).where(blobs_t.c.unit_id == _unit_id_query(key))
    with read_connection(engine) as conn:
        rows = conn.execute(stmt).all()
    return {r.kind: BlobRef(kind=r.kind, uri=r.uri, sha256=r.sha256, bytes=r.bytes,
                            row_count=r.row_count, schema_json=r.schema_json) for r in rows}


def load_trace(engine: Engine, blobs: BlobStore, key: UnitKey, kind: str) -> pa.Table:
    """A unit's trace table, verified against its sha256 (BlobCorruptedError otherwise)."""
    refs = trace_refs(engine, key)
    if kind not in refs:
        raise KeyError(f"unit {key} has no trace {kind!r}; it has {sorted(refs)}")
    return blobs.get_table(refs[kind])


def load_unit_result(engine: Engine, blobs: BlobStore | None, key: UnitKey) -> UnitResult | None:
    """A stored unit back as a UnitResult (traces loaded only when `blobs` is given)."""
    uid = _unit_id_query(key)
    with read_connection(engine) as conn:
        summ = conn.execute(select(summaries_t).where(summaries_t.c.unit_id == uid)).first()
        if summ is None:
            return None
        config = conn.scalar(select(configs_t.c.config_json)
                             .where(configs_t.c.config_id == key.config_id))
        metrics = {r.metric: r.value for r in conn.execute(
            select(results_t.c.metric, results_t.c.value).where(results_t.c.unit_id == uid))}
        samples = [SampleRow(sample_id=r.sample_id, prediction=r.prediction,
                             answers=list(r.answers), score=r.score,
                             prompt_tokens=r.prompt_tokens, extra=dict(r.extra))
                   for r in conn.execute(select(samples_t).where(samples_t.c.unit_id == uid)
                                         .order_by(samples_t.c.sample_id))]
    traces = ({kind: blobs.get_table(ref) for kind, ref in trace_refs(engine, key).items()}
              if blobs is not None else {})
    return UnitResult(
        key=key, config=dict(config or {}), method=summ.method, metrics=metrics,
        n_samples=summ.n_samples, avg_key_bits=summ.avg_key_bits,
        avg_value_bits=summ.avg_value_bits, kv_bytes=summ.kv_bytes,
        fp16_kv_bytes=summ.fp16_kv_bytes, compression_ratio=summ.compression_ratio,
        outlier_ratio=summ.outlier_ratio, prefill_tokens_per_s=summ.prefill_tokens_per_s,
        decode_tokens_per_s=summ.decode_tokens_per_s, peak_memory_bytes=summ.peak_memory_bytes,
        environment=dict(summ.environment), samples=samples, traces=traces,
        worker=summ.worker or "", device=summ.device or "", started_at=summ.started_at,
        finished_at=summ.finished_at)


def unreferenced_blobs(engine: Engine, blobs: BlobStore) -> list[str]:
    """Blob files no row refers to (left by crashed or replaced writes).

    Only delete ones older than any write in progress: a writer stores its blobs before the
    transaction that references them commits.
    """
    with read_connection(engine) as conn:
        referenced = set(conn.scalars(select(blobs_t.c.uri).distinct()))
    return sorted(set(blobs.iter_uris()) - referenced)
