"""Writes to the results store: sweeps, unit lifecycle and finished unit results.

Every function takes the engine explicitly and runs in one transaction (`session_scope`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from streamkv.hashing import content_id

from .blobs import BlobStore
from .db import read_connection, session_scope
from .entities import SWEEP_STATUSES, UNIT_STATUSES, BlobRef, Claim, UnitKey, UnitResult
from .schema import (
    SUMMARY_METRICS,
    BlobRow,
    ConfigRow,
    MetricRow,
    SampleRowDB,
    SweepRow,
    UnitRow,
    UnitSummaryRow,
    utcnow,
)

sweeps_t: Table = SweepRow.__table__  # type: ignore[assignment]
configs_t: Table = ConfigRow.__table__  # type: ignore[assignment]
units_t: Table = UnitRow.__table__  # type: ignore[assignment]
summaries_t: Table = UnitSummaryRow.__table__  # type: ignore[assignment]
results_t: Table = MetricRow.__table__  # type: ignore[assignment]
samples_t: Table = SampleRowDB.__table__  # type: ignore[assignment]
blobs_t: Table = BlobRow.__table__  # type: ignore[assignment]

KEY_COLUMNS: tuple[str, ...] = ("sweep_id", "model_id", "config_id", "task", "shard")
_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")
MAX_ERROR_CHARS = 64_000
# PostgreSQL: deadlock, serialization failure, unique violation -> the write is retried.
_RETRY_PGCODES = {"40P01", "40001", "23505"}


class UnknownSweepError(KeyError):
    """No sweep with this id is registered."""


class UnknownUnitError(KeyError):
    """No unit with this key is registered."""


# --- value cleaning ---------------------------------------------------------------------------
def _text(value: str) -> str:
    # PostgreSQL text and JSONB reject NUL characters; model output can contain them.
    return value.replace("\x00", "\ufffd")


def jsonable(value: Any) -> Any:
    """`value` as plain JSON: NaN/inf -> None (JSONB rejects them), numpy scalars -> Python."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return _text(str(value))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None  # SQLite turns NaN into NULL anyway: be uniform


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# The fields every method has; the store knows no other (they live in config_json only).
COMMON_CONFIG_FIELDS: tuple[str, ...] = ("method", "chunk_size", "quantize_current_chunk")


def _config_value_problem(path: str, value: Any) -> str | None:
    """Why `value` cannot be stored as JSON unchanged (None if it can)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}={value!r} is not finite"
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value)
                     if (p := _config_value_problem(f"{path}[{i}]", v))), None)
    if isinstance(value, Mapping):
        return _config_mapping_problem(path, value)
    return f"{path}={value!r} ({type(value).__name__}) is not a JSON value"


def _config_mapping_problem(path: str, config: Mapping[Any, Any]) -> str | None:
    for key, value in config.items():
        if not isinstance(key, str):
            return f"{path} has a non-string key {key!r}"
        if problem := _config_value_problem(f"{path}.{key}" if path else key, value):
            return problem
    return None


def _common_field_problem(config: Mapping[str, Any]) -> str | None:
    method, chunk = config.get("method"), config.get("chunk_size")
    if not isinstance(method, str) or not method:
        return f"config['method']={method!r} must be a non-empty string"
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        return f"config['chunk_size']={chunk!r} must be None or an integer >= 1"
    quantize = config.get("quantize_current_chunk")
    if quantize is not None and not isinstance(quantize, bool):
        return f"config['quantize_current_chunk']={quantize!r} must be true or false"
    return None


def check_config(config: Any) -> dict[str, Any]:
    """`config` as a plain dict after checking what the store relies on; ValueError otherwise.

    A config is {"method": non-empty str, "chunk_size": None | int >= 1,
    "quantize_current_chunk": bool, ...the method's own fields}, all JSON values (finite
    floats, string keys); a missing chunk_size / quantize_current_chunk is stored as NULL.
    Nothing is converted: the stored config_json must hash to the config_id the caller
    computed.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    problem = _common_field_problem(config) or _config_mapping_problem("", config)
    if problem:
        raise ValueError(f"invalid config {dict(config)!r}: {problem}")
    return dict(config)


def config_row(config: Any) -> dict[str, Any]:
    """The configs row of a config dict (checked by `check_config`; id = content_id)."""
    fields = check_config(config)
    common = {name: fields.get(name) for name in COMMON_CONFIG_FIELDS}
    return {"config_id": content_id(fields), **common, "config_json": fields}


def check_unit_key(key: UnitKey) -> None:
    for name in KEY_COLUMNS:
        value = getattr(key, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"UnitKey.{name}={value!r} must be a non-empty string")
    m = _SHARD_RE.match(key.shard)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"UnitKey.shard={key.shard!r} must be 'i/n' with 0 <= i < n")


def _key_where(key: UnitKey) -> list[Any]:
    return [units_t.c[name] == getattr(key, name) for name in KEY_COLUMNS]


def _key_of(row: Any) -> UnitKey:
    return UnitKey(*(getattr(row, name) for name in KEY_COLUMNS))


def _insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]],
                   conflict: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent registrations never fail on duplicates."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    elif dialect == "sqlite":
        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    else:
        raise NotImplementedError(f"unsupported database dialect {dialect!r}")
    session.execute(stmt, list(rows))


def _ensure_configs(session: Session, rows: Iterable[dict[str, Any]]) -> None:
    by_id = {r["config_id"]: r for r in rows}
    if not by_id:
        return
    have = set(session.scalars(select(configs_t.c.config_id)
                               .where(configs_t.c.config_id.in_(list(by_id)))))
    # Insert only the missing ones: an upsert on an existing row would take a lock for nothing.
    _insert_ignore(session, configs_t, [r for cid, r in by_id.items() if cid not in have],
                   ["config_id"])


# --- sweeps and units -------------------------------------------------------------------------
def register_sweep(engine: Engine, sweep_id: str, name: str, spec: dict[str, Any],
                   units: Sequence[UnitKey], configs: Sequence[dict[str, Any]], *,
                   created_by: str | None = None) -> int:
    """Registers a sweep, its configs and units; returns how many units were new.

    Idempotent: registering again adds missing units and leaves existing ones (status,
    attempts, results) untouched; name and spec are updated to the latest registration.
    """
    config_rows = [config_row(c) for c in configs]
    given = {r["config_id"] for r in config_rows}
    for key in units:
        check_unit_key(key)
        if key.sweep_id != sweep_id:
            raise ValueError(f"unit {key} belongs to sweep {key.sweep_id!r}, not {sweep_id!r}")
    spec_json = jsonable(spec)
    with session_scope(engine) as s:
        _insert_ignore(s, sweeps_t, [{
            "sweep_id": sweep_id, "name": name, "spec": spec_json, "created_by": created_by,
            "created_at": utcnow(), "status": "running", "finished_at": None,
        }], ["sweep_id"])
        _ensure_configs(s, config_rows)
        needed = {k.config_id for k in units} - given
        if needed:
            known = set(s.scalars(select(configs_t.c.config_id)
                                  .where(configs_t.c.config_id.in_(sorted(needed)))))
            if needed - known:
                raise ValueError(f"units refer to config_id(s) {sorted(needed - known)} that are "
                                 "neither in `configs` nor already stored")
        existing = {_key_of(r) for r in s.execute(
            select(*(units_t.c[n] for n in KEY_COLUMNS)).where(units_t.c.sweep_id == sweep_id))}
        new = [k for k in dict.fromkeys(units) if k not in existing]
        _insert_ignore(s, units_t, [{**{n: getattr(k, n) for n in KEY_COLUMNS},
                                     "status": "pending", "attempts": 0} for k in new],
                       KEY_COLUMNS)
        values: dict[str, Any] = {"name": name, "spec": spec_json}
        if new:  # a finished sweep that gains units is running again
            values.update(status="running", finished_at=None)
        s.execute(update(sweeps_t).where(sweeps_t.c.sweep_id == sweep_id).values(**values))
    return len(new)


def finish_sweep(engine: Engine, sweep_id: str, status: str = "done") -> None:
    """Marks a sweep done / failed / cancelled."""
    if status not in SWEEP_STATUSES:
        raise ValueError(f"sweep status {status!r} is not one of {SWEEP_STATUSES}")
    with session_scope(engine) as s:
        res = s.execute(update(sweeps_t).where(sweeps_t.c.sweep_id == sweep_id)
                        .values(status=status, finished_at=utcnow()))
        if res.rowcount == 0:  # type: ignore[attr-defined]
            raise UnknownSweepError(sweep_id)


def completed_units(engine: Engine, sweep_id: str) -> set[UnitKey]:
    """Keys of the units of `sweep_id` whose results are stored (status done)."""
    with read_connection(engine) as conn:
        rows = conn.execute(select(*(units_t.c[n] for n in KEY_COLUMNS))
                            .where(units_t.c.sweep_id == sweep_id, units_t.c.status == "done"))
        return {_key_of(r) for r in rows}


def _set_unit(engine: Engine, key: UnitKey, *only_if: Any, **values: Any) -> int | None:
    """Updates `key` where `only_if` holds; its attempts, or None when `only_if` did not hold."""
    with session_scope(engine) as s:
        attempts = s.scalar(update(units_t).where(*_key_where(key), *only_if).values(**values)
                            .returning(units_t.c.attempts))
        if attempts is None and s.scalar(select(units_t.c.unit_id).where(*_key_where(key))) is None:
            raise UnknownUnitError(key)
        return None if attempts is None else int(attempts)


def mark_running(engine: Engine, key: UnitKey, worker: str, device: str) -> int:
    """A worker starts `key`: status running, attempts + 1; returns the attempt number.

    Unconditional (any status, done included) and without a lease, so a driver can take the
    unit over at once: for tools and tests that own the store. A driver claims units with
    `claim_unit` instead, which never takes a unit another live driver runs or one finished.
    """
    attempts = _set_unit(engine, key, status="running", attempts=units_t.c.attempts + 1,
                         worker=worker, device=device, started_at=utcnow(), finished_at=None,
                         error=None, claimed_by=None, lease_until=None)
    assert attempts is not None
    return attempts


# --- claims: which driver runs a unit -----------------------------------------------------------
# Leases compare the drivers' clocks (UTC, stored by each driver): they must agree to well
# within a lease, as NTP-synchronized hosts do.
DEFAULT_LEASE_S = 120.0


def _claimable(now: datetime, retry_finished_before: datetime | None,
               gone: Collection[str]) -> Any:
    """Units a driver may claim: pending ones, running ones whose lease has passed (or that have
    none: left by a driver that died) or whose driver is in `gone`, and with
    `retry_finished_before` failed / skipped ones that finished before it (a rerun retries
    those; ones finished since are never taken)."""
    c = units_t.c
    allowed = [c.status == "pending",
               and_(c.status == "running", or_(c.lease_until.is_(None), c.lease_until < now))]
    if gone:
        allowed.append(and_(c.status == "running", c.claimed_by.in_(sorted(gone))))
    if retry_finished_before is not None:
        allowed.append(and_(c.status.in_(("failed", "skipped")),
                            c.finished_at < retry_finished_before))
    return or_(*allowed)


def claim_unit(engine: Engine, key: UnitKey, driver: str, *, worker: str, device: str,
               lease_s: float = DEFAULT_LEASE_S, retry_finished_before: datetime | None = None,
               gone: Collection[str] = ()) -> Claim:
    """Claims `key` for `driver`: running, attempts + 1, claimed_by = driver, a lease of
    `lease_s` seconds (renew it with `renew_leases`), if the unit is claimable (`_claimable`).
    `gone`: drivers the caller knows have stopped (e.g. their process on this host is gone),
    whose units are taken over without waiting for their leases.

    One conditional UPDATE, so of several drivers claiming at once exactly one wins, on SQLite
    (writers serialized by BEGIN IMMEDIATE) and PostgreSQL (the losers' UPDATE re-checks the
    row the winner committed). A done unit is never claimed. Claiming a unit this driver
    already runs is a no-op that says claimed (a retried claim whose first answer was lost).
    The returned `Claim` says who holds the unit when it was not claimed.
    """
    if not driver or len(driver) > 128:
        raise ValueError(f"driver id {driver!r} must be 1 to 128 characters")
    now = utcnow()
    cols = (units_t.c.status, units_t.c.claimed_by, units_t.c.attempts)
    with session_scope(engine) as s:
        before = s.execute(select(*cols).where(*_key_where(key))).first()
        if before is None:
            raise UnknownUnitError(key)
        attempts = s.scalar(
            update(units_t).where(*_key_where(key), _claimable(now, retry_finished_before, gone))
            .values(status="running", attempts=units_t.c.attempts + 1, worker=worker,
                    device=device, started_at=now, finished_at=None, error=None,
                    claimed_by=driver, lease_until=now + timedelta(seconds=lease_s))
            .returning(units_t.c.attempts))
        if attempts is not None:
            # `before` is exact on SQLite; on PostgreSQL a racing claim may make it stale, so
            # it feeds only a message, never the decision (the UPDATE's WHERE decides).
            took = before.claimed_by if before.status == "running" else None
            return Claim(key, True, "running", driver, int(attempts), took_over_from=took)
        now_row = s.execute(select(*cols).where(*_key_where(key))).one()
        # Already this driver's: a claim retried after its commit's answer was lost.
        mine = now_row.status == "running" and now_row.claimed_by == driver
        return Claim(key, mine, now_row.status, now_row.claimed_by, int(now_row.attempts))


def renew_leases(engine: Engine, driver: str, lease_s: float = DEFAULT_LEASE_S) -> int:
    """Extends the lease of every unit `driver` is running by `lease_s` from now (one UPDATE);
    returns how many. A unit another driver took over is no longer this driver's to renew."""
    with session_scope(engine) as s:
        res = s.execute(update(units_t)
                        .where(units_t.c.claimed_by == driver, units_t.c.status == "running")
                        .values(lease_until=utcnow() + timedelta(seconds=lease_s)))
        return int(res.rowcount)  # type: ignore[attr-defined]


def live_claims(engine: Engine, sweep_id: str) -> dict[UnitKey, str]:
    """Running units of `sweep_id` whose lease has not passed: key -> the driver holding it."""
    with read_connection(engine) as conn:
        rows = conn.execute(select(*(units_t.c[n] for n in KEY_COLUMNS), units_t.c.claimed_by)
                            .where(units_t.c.sweep_id == sweep_id, units_t.c.status == "running",
                                   units_t.c.lease_until >= utcnow()))
        return {_key_of(r): r.claimed_by for r in rows}


def _held_by(driver: str | None) -> list[Any]:
    """With a driver id: only while that driver still holds the unit (it may have lost it to
    another driver after its lease passed, or the unit may be done already)."""
    if driver is None:
        return []
    return [units_t.c.claimed_by == driver, units_t.c.status == "running"]


def mark_failed(engine: Engine, key: UnitKey, error: str, final: bool, *,
                driver: str | None = None) -> bool:
    """Records a failure and ends the lease; `final=False` puts the unit back to pending for a
    retry. With `driver`, only if that driver still holds the unit; returns whether it did."""
    text = _text(str(error))
    if len(text) > MAX_ERROR_CHARS:  # keep the end: that is where the traceback's cause is
        text = "...[truncated]...\n" + text[-MAX_ERROR_CHARS:]
    return _set_unit(engine, key, *_held_by(driver), status="failed" if final else "pending",
                     error=text, finished_at=utcnow(), lease_until=None) is not None


def mark_skipped(engine: Engine, key: UnitKey, reason: str, *, driver: str | None = None) -> bool:
    """The unit cannot run here (e.g. a missing backend); `driver` as in `mark_failed`."""
    return _set_unit(engine, key, *_held_by(driver), status="skipped", error=_text(reason),
                     finished_at=utcnow(), lease_until=None) is not None


def sweep_progress(engine: Engine, sweep_id: str) -> dict[str, int]:
    """Unit counts of a sweep by status (every status present, plus "total")."""
    with read_connection(engine) as conn:
        if conn.scalar(select(sweeps_t.c.sweep_id).where(sweeps_t.c.sweep_id == sweep_id)) is None:
            raise UnknownSweepError(sweep_id)
        rows = conn.execute(select(units_t.c.status, func.count()).where(
            units_t.c.sweep_id == sweep_id).group_by(units_t.c.status)).all()
    counts = dict.fromkeys(UNIT_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    counts["total"] = sum(counts[s] for s in UNIT_STATUSES)
    return counts


# --- results ----------------------------------------------------------------------------------
def _check_result(result: UnitResult) -> dict[str, Any]:
    check_unit_key(result.key)
    crow = config_row(result.config)
    if crow["config_id"] != result.key.config_id:
        raise ValueError(f"result.config hashes to config_id {crow['config_id']!r} "
                         f"(streamkv.hashing.content_id) but the unit key says "
                         f"{result.key.config_id!r}: key and config describe different configs")
    ids = [s.sample_id for s in result.samples]
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate sample_id(s) {dupes} in result of {result.key}")
    return crow


def _summary_row(unit_id: int, r: UnitResult) -> dict[str, Any]:
    env = jsonable(r.environment)
    row = {
        "unit_id": unit_id, "method": r.method, "n_samples": int(r.n_samples),
        "avg_key_bits": _num(r.avg_key_bits), "avg_value_bits": _num(r.avg_value_bits),
        "kv_bytes": _int(r.kv_bytes), "fp16_kv_bytes": _int(r.fp16_kv_bytes),
        "compression_ratio": _num(r.compression_ratio), "outlier_ratio": _num(r.outlier_ratio),
        "prefill_tokens_per_s": _num(r.prefill_tokens_per_s),
        "decode_tokens_per_s": _num(r.decode_tokens_per_s),
        "peak_memory_bytes": _int(r.peak_memory_bytes),
        "worker": r.worker or None, "device": r.device or None,
        "started_at": r.started_at, "finished_at": r.finished_at or utcnow(),
        "written_at": utcnow(), "environment": env,
        "git_commit": str(env["git_commit"])[:64] if env.get("git_commit") else None,
    }
    row.update({name: _num(r.metrics.get(name)) for name in SUMMARY_METRICS})
    return row


def _blob_row(unit_id: int, ref: BlobRef) -> dict[str, Any]:
    return {"unit_id": unit_id, "kind": ref.kind, "uri": ref.uri, "sha256": ref.sha256,
            "bytes": ref.bytes, "row_count": ref.row_count, "schema_json": ref.schema_json,
            "created_at": utcnow()}


def _lock_unit(session: Session, key: UnitKey, crow: dict[str, Any]) -> int:
    """unit_id of `key`, created if missing, with its row locked (FOR UPDATE on PostgreSQL;
    on SQLite the BEGIN IMMEDIATE transaction already excludes other writers)."""
    query = select(units_t.c.unit_id).where(*_key_where(key)).with_for_update()
    unit_id = session.scalar(query)
    if unit_id is None:
        if session.get(SweepRow, key.sweep_id) is None:
            raise UnknownSweepError(f"sweep {key.sweep_id!r} of {key} is not registered")
        _ensure_configs(session, [crow])
        _insert_ignore(session, units_t, [{**{n: getattr(key, n) for n in KEY_COLUMNS},
                                           "status": "running", "attempts": 1}], KEY_COLUMNS)
        unit_id = session.scalar(query)
    assert unit_id is not None
    return int(unit_id)


def write_unit_result(engine: Engine, blobs: BlobStore, result: UnitResult, *,
                      before_commit: Callable[[], None] | None = None,
                      max_attempts: int = 5) -> int:
    """Stores a finished unit; returns its unit_id.

    Blobs are written first: they are content-addressed, so a crash leaves at most an
    unreferenced file, never a row pointing at a missing one. Then ONE transaction replaces
    the unit's summary, metrics, samples and blob rows and sets status=done, so a retried or
    duplicated writer leaves exactly one copy. `before_commit` is a test hook called inside
    that transaction, after all rows are written.

    Claims are not checked: a result computed by a driver that lost its claim (its lease passed
    while it was stalled) is still a valid result of the unit, and storing it is idempotent.
    Claims exist so that a unit is not computed twice; writing it twice costs nothing. The
    write ends the unit's lease (claimed_by stays, as a record of who ran it).
    """
    crow = _check_result(result)
    refs = [blobs.put_table(kind, table) for kind, table in sorted(result.traces.items())]
    metric_rows = [(str(name), _num(value)) for name, value in sorted(result.metrics.items())]
    sample_rows = [{"sample_id": _text(str(x.sample_id)), "prediction": _text(str(x.prediction)),
                    "answers": jsonable(list(x.answers)), "score": _num(x.score),
                    "prompt_tokens": int(x.prompt_tokens), "extra": jsonable(x.extra or {})}
                   for x in result.samples]
    for attempt in itertools.count(1):
        try:
            with session_scope(engine) as s:
                unit_id = _lock_unit(s, result.key, crow)
                for table in (summaries_t, results_t, samples_t, blobs_t):
                    s.execute(delete(table).where(table.c.unit_id == unit_id))
                s.execute(insert(summaries_t), [_summary_row(unit_id, result)])
                if metric_rows:
                    s.execute(insert(results_t), [{"unit_id": unit_id, "metric": m, "value": v}
                                                  for m, v in metric_rows])
                if sample_rows:
                    s.execute(insert(samples_t), [{"unit_id": unit_id, **r} for r in sample_rows])
                if refs:
                    s.execute(insert(blobs_t), [_blob_row(unit_id, ref) for ref in refs])
                done: dict[str, Any] = {
                    "status": "done", "error": None, "lease_until": None,
                    "finished_at": result.finished_at or utcnow(),
                    "attempts": case((units_t.c.attempts < 1, 1), else_=units_t.c.attempts),
                }
                if result.started_at is not None:
                    done["started_at"] = result.started_at
                if result.worker:
                    done["worker"] = result.worker
                if result.device:
                    done["device"] = result.device
                s.execute(update(units_t).where(units_t.c.unit_id == unit_id).values(**done))
                if before_commit is not None:
                    before_commit()
            return unit_id
        except DBAPIError as exc:
            # Only PostgreSQL races end up here (two writers creating the same unit row, a
            # deadlock); SQLite writers are serialized by BEGIN IMMEDIATE.
            code = getattr(exc.orig, "sqlstate", None)
            if code not in _RETRY_PGCODES or attempt >= max_attempts:
                raise
    raise AssertionError("unreachable")
