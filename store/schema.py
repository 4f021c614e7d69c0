"""Tables of the results store (SQLAlchemy 2 typed ORM) and the column lists of its views.

Written for people querying the database with plain SQL. All timestamps are UTC.

sweeps         one row per sweep.
  sweep_id (PK), name, spec (JSON: the sweep's full specification), created_by,
  created_at, status (running | done | failed | cancelled), finished_at.

configs        one row per distinct compression config, of any method (built-in or
  registered at run time); the store knows no method's fields.
  config_id (PK: a 12-hex content hash of the config, `streamkv.hashing.content_id`),
  method, chunk_size (NULL = the method does not chunk its prefill), quantize_current_chunk
  (the fields every method has, as columns for joins and GROUP BY), config_json (the whole
  config as the worker gave it: the source of truth; content_id(config_json) == config_id).
  A method's own fields are keys of config_json; read them with `->>`, which SQLite >= 3.38
  and PostgreSQL both understand, e.g.

      SELECT config_id FROM configs WHERE CAST(config_json->>'key_bits_normal' AS INTEGER) = 2

  `->>` returns an SQL value on SQLite (JSON numbers as INTEGER/REAL, true/false as 1/0,
  strings as TEXT, null as NULL) but always TEXT on PostgreSQL ('4', '0.9', 'true', 'false';
  JSON null as NULL). CAST(... AS INTEGER | REAL | BOOLEAN) gives the same value on both:
  `CAST(config_json->>'sink_protection' AS BOOLEAN) = TRUE` (1 = 1 on SQLite, true on
  PostgreSQL). A key that a config lacks reads as NULL.

units          one row per unit of work = (sweep_id, model_id, config_id, task, shard).
  unit_id (PK, surrogate), sweep_id (FK sweeps), model_id, config_id (FK configs), task,
  shard ("i/n"), status (pending | running | done | failed | skipped), attempts (how many
  times a worker started it), worker, device, started_at, finished_at (of the latest
  attempt), error (text of the latest failure), claimed_by (id of the driver that claimed the
  latest attempt: "<host>:<pid>:<random>"; kept after the attempt ends, NULL when the attempt
  was not claimed), lease_until (while running: until when the claim holds; the driver renews
  it while the unit runs, and NULL once the attempt ends). A running unit whose lease_until has
  passed (or is NULL) belongs to a driver that died: another driver may claim it.
  UNIQUE(sweep_id, model_id, config_id, task, shard).

unit_summaries one row per finished unit (unit_id PK, FK units).
  method, n_samples, score, perplexity, kl, top1_agreement (copies of the metrics of the same
  name, NULL if not measured), score_ci_low, score_ci_high (the 95 % bootstrap interval of
  score over the unit's n_samples samples, `store.intervals`; NULL in rows written before
  migration 0004 and for units without a score), avg_key_bits, avg_value_bits (average stored bits per element),
  kv_bytes (measured bytes of the compressed cache), fp16_kv_bytes (same cache in fp16),
  compression_ratio (fp16_kv_bytes / kv_bytes), outlier_ratio (share of outlier channels),
  prefill_tokens_per_s, decode_tokens_per_s, peak_memory_bytes, worker, device, started_at,
  finished_at (of the run that produced the result), written_at, git_commit, environment
  (JSON: model_id, weights_sha256, dataset_sha256, git_commit, library versions, seed, device).

results        long format: one row per (unit_id, metric) with its float `value`.

samples        one row per evaluated sample: unit_id, sample_id, prediction, answers (JSON
  list), score (NULL when the task has no per-sample score), prompt_tokens, extra (JSON).

blobs          one row per (unit_id, kind): a Parquet trace table in the blob store.
  uri (relative to the blob root: <kind>/<sha[:2]>/<sha>.parquet), sha256 (of the file),
  bytes, row_count, schema_json (the Arrow schema), created_at.

Views (created by the migrations, typed in views_metadata): v_unit_results (one row per finished
unit with method, chunk_size, quantize_current_chunk and config_json of its config),
v_task_scores (per sweep x model x config x task, aggregated over shards weighted by
n_samples, same config columns, with baseline_score / score_delta against the method='none'
configs of the same sweep, model and task, whatever their chunk_size; score_ci_low /
score_ci_high are the single shard's interval when the task ran as one shard, NULL for several
shards: shard intervals do not combine; `store.queries.pooled_intervals` computes the one of
their samples pooled, and `baseline_deltas` fills it in).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

from .entities import SWEEP_STATUSES, UNIT_STATUSES

# Explicit names make migrations reproducible and errors readable on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned timezone-aware.

    SQLite has no time zones and hands back naive values; PostgreSQL's timestamptz hands back
    aware ones. Normalizing here keeps both dialects returning the same objects.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite views lose the column type
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# JSONB on PostgreSQL so plain SQL users get its operators and indexing.
JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- configs: the common fields as columns, everything in config_json -------------------------
class ConfigRow(Base):
    __tablename__ = "configs"

    config_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    # The fields every method has, copied out of config_json for joins and GROUP BY. Nullable:
    # chunk_size None = no chunked prefill; the store checks their types, not their presence.
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    quantize_current_chunk: Mapped[bool | None] = mapped_column(Boolean)
    config_json: Mapped[dict[str, Any]] = mapped_column(JsonType)


class SweepRow(Base):
    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in SWEEP_STATUSES) + ")", name="status"
        ),
    )

    sweep_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class UnitRow(Base):
    __tablename__ = "units"
    __table_args__ = (
        UniqueConstraint("sweep_id", "model_id", "config_id", "task", "shard"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in UNIT_STATUSES) + ")", name="status"
        ),
        Index(None, "sweep_id", "status"),
        Index(None, "finished_at"),
        Index(None, "claimed_by"),  # a driver's lease renewal finds its units
    )

    unit_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("sweeps.sweep_id", ondelete="CASCADE")
    )
    model_id: Mapped[str] = mapped_column(String(256))
    config_id: Mapped[str] = mapped_column(String(64), ForeignKey("configs.config_id"))
    task: Mapped[str] = mapped_column(String(128))
    shard: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(256))
    device: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


def _unit_fk() -> ForeignKey:
    # Children go with their unit: deleting a unit (or sweep) leaves no stray rows.
    return ForeignKey("units.unit_id", ondelete="CASCADE")


class UnitSummaryRow(Base):
    __tablename__ = "unit_summaries"

    unit_id: Mapped[int] = mapped_column(Integer, _unit_fk(), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Double)
    perplexity: Mapped[float | None] = mapped_column(Double)
    kl: Mapped[float | None] = mapped_column(Double)
    top1_agreement: Mapped[float | None] = mapped_column(Double)
    avg_key_bits: Mapped[float | None] = mapped_column(Double)
    avg_value_bits: Mapped[float | None] = mapped_column(Double)
    kv_bytes: Mapped[int | None] = mapped_column(BigInteger)
    fp16_kv_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Double)
    outlier_ratio: Mapped[float | None] = mapped_column(Double)
    prefill_tokens_per_s: Mapped[float | None] = mapped_column(Double)
    decode_tokens_per_s: Mapped[float | None] = mapped_column(Double)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    worker: Mapped[str | None] = mapped_column(String(256))
    device: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    written_at: Mapped[datetime] = mapped_column(UtcDateTime)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    environment: Mapped[dict[str, Any]] = mapped_column(JsonType)
    # Added by migration 0004 (so at the end of the table, as ADD COLUMN puts them).
    score_ci_low: Mapped[float | None] = mapped_column(Double)
    score_ci_high: Mapped[float | None] = mapped_column(Double)


class MetricRow(Base):
    __tablename__ = "results"

    unit_id: Mapped[int] = mapped_column(Integer, _unit_fk(), primary_key=True)
    metric: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)  # NULL for NaN (SQLite cannot store it)


class SampleRowDB(Base):
    __tablename__ = "samples"

    unit_id: Mapped[int] = mapped_column(Integer, _unit_fk(), primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    prediction: Mapped[str] = mapped_column(Text)
    answers: Mapped[list[str]] = mapped_column(JsonType)
    score: Mapped[float | None] = mapped_column(Double)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict[str, Any]] = mapped_column(JsonType)


class BlobRow(Base):
    __tablename__ = "blobs"
    __table_args__ = (Index(None, "sha256"),)  # finds the rows of a file, e.g. for cleanup

    unit_id: Mapped[int] = mapped_column(Integer, _unit_fk(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(128), primary_key=True)
    uri: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    row_count: Mapped[int] = mapped_column(BigInteger)
    schema_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# Summary columns filled from `UnitResult.metrics` entries of the same name.
SUMMARY_METRICS: tuple[str, ...] = ("score", "perplexity", "kl", "top1_agreement", "score_ci_low",
                                     "score_ci_high")

# --- views ------------------------------------------------------------------------------------
# The SQL lives in the migrations (views are schema); these typed column lists let queries
# select from them with bound parameters and proper result types. A test checks they match.
# The config columns of both views; a method's own fields are keys of config_json.
VIEW_CONFIG_COLUMNS: tuple[str, ...] = ("method", "chunk_size", "quantize_current_chunk",
                                        "config_json")

views_metadata = MetaData()  # separate: create_all / autogenerate must never treat them as tables


def _config_view_columns() -> list[Column[Any]]:
    return [Column("method", String), Column("chunk_size", Integer),
            Column("quantize_current_chunk", Boolean), Column("config_json", JsonType)]


v_unit_results = Table(
    "v_unit_results",
    views_metadata,
    Column("unit_id", Integer),
    Column("sweep_id", String),
    Column("sweep_name", String),
    Column("model_id", String),
    Column("config_id", String),
    *_config_view_columns(),
    Column("task", String),
    Column("shard", String),
    Column("status", String),
    Column("n_samples", Integer),
    Column("score", Double),
    Column("perplexity", Double),
    Column("kl", Double),
    Column("top1_agreement", Double),
    Column("avg_key_bits", Double),
    Column("avg_value_bits", Double),
    Column("kv_bytes", BigInteger),
    Column("fp16_kv_bytes", BigInteger),
    Column("compression_ratio", Double),
    Column("outlier_ratio", Double),
    Column("prefill_tokens_per_s", Double),
    Column("decode_tokens_per_s", Double),
    Column("peak_memory_bytes", BigInteger),
    Column("worker", String),
    Column("device", String),
    Column("finished_at", UtcDateTime),
    Column("score_ci_low", Double),
    Column("score_ci_high", Double),
)

v_task_scores = Table(
    "v_task_scores",
    views_metadata,
    Column("sweep_id", String),
    Column("model_id", String),
    Column("config_id", String),
    *_config_view_columns(),
    Column("task", String),
    Column("n_shards", Integer),
    Column("n_samples", Integer),
    Column("score", Double),
    Column("perplexity", Double),
    Column("kl", Double),
    Column("top1_agreement", Double),
    Column("avg_key_bits", Double),
    Column("avg_value_bits", Double),
    Column("compression_ratio", Double),
    Column("baseline_score", Double),
    Column("score_delta", Double),
    Column("score_ci_low", Double),
    Column("score_ci_high", Double),
)

VIEW_NAMES: tuple[str, ...] = ("v_unit_results", "v_task_scores")
