"""configs keeps only the fields every method has as columns; config_json is the source of truth.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

0001 had one column per CompressionConfig field, so every new knob of any method needed a
migration. Now `configs` is (config_id, method NOT NULL, chunk_size, quantize_current_chunk,
config_json) and the views expose config_json instead of the per-field columns; a method's own
fields are read with `config_json->>'name'`. No row is lost: config_json already held every
field, so dropping the columns drops only copies. The downgrade re-adds the 0001 columns and
fills them from config_json (NULL where a config lacks the key), then recreates 0001's views.

Frozen like 0001: the SQL of both versions of the views is spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 0001 per-field columns this revision drops (method, chunk_size and
# quantize_current_chunk stay), in 0001's order, with their 0001 types.
DROPPED: tuple[tuple[str, sa.types.TypeEngine], ...] = (
    ("ema_decay", sa.Double()),
    ("attention_sink_size", sa.Integer()),
    ("key_bits_normal", sa.Integer()),
    ("value_bits_normal", sa.Integer()),
    ("key_bits_sink_outlier", sa.Integer()),
    ("value_bits_sink_outlier", sa.Integer()),
    ("outlier_threshold_relative", sa.Double()),
    ("outlier_threshold_abs", sa.Double()),
    ("value_quant_groups", sa.Integer()),
    ("pre_rope_keys", sa.Boolean()),
    ("sink_protection", sa.Boolean()),
    ("outlier_detection", sa.Boolean()),
    ("statistics", sa.String(length=64)),
    ("range_mode", sa.String(length=64)),
    ("group_size", sa.Integer()),
    ("residual_length", sa.Integer()),
    ("calibration_path", sa.Text()),
)


def _wmean(col: str) -> str:
    # Mean over shards weighted by n_samples, ignoring shards where the value is NULL.
    # NULLIF: PostgreSQL raises on division by zero, SQLite would return NULL.
    return (f"SUM(s.{col} * s.n_samples) / "
            f"NULLIF(SUM(CASE WHEN s.{col} IS NOT NULL THEN s.n_samples END), 0) AS {col}")


_SUMMARY_COLUMNS = """s.n_samples, s.score, s.perplexity, s.kl, s.top1_agreement,
       s.avg_key_bits, s.avg_value_bits, s.kv_bytes, s.fp16_kv_bytes, s.compression_ratio,
       s.outlier_ratio, s.prefill_tokens_per_s, s.decode_tokens_per_s, s.peak_memory_bytes,
       s.worker, s.device, s.finished_at"""
_UNIT_JOINS = """FROM units u
JOIN unit_summaries s ON s.unit_id = u.unit_id
JOIN configs c ON c.config_id = u.config_id"""
_AGGREGATES = f"""COUNT(*) AS n_shards, SUM(s.n_samples) AS n_samples,
           {_wmean("score")}, {_wmean("perplexity")}, {_wmean("kl")},
           {_wmean("top1_agreement")}, {_wmean("avg_key_bits")}, {_wmean("avg_value_bits")},
           {_wmean("compression_ratio")}"""
# The uncompressed reference: every method='none' config of the same sweep/model/task, pooled
# (weighted by n_samples). Deliberately not matched on chunk_size, as in 0001.
_BASELINE = """baseline AS (
    SELECT sweep_id, model_id, task,
           SUM(score * n_samples) / NULLIF(SUM(CASE WHEN score IS NOT NULL THEN n_samples END), 0)
               AS baseline_score
    FROM agg
    WHERE method = 'none'
    GROUP BY sweep_id, model_id, task
)"""
_TASK_SCORE_TAIL = """a.task, a.n_shards, a.n_samples, a.score, a.perplexity, a.kl, a.top1_agreement,
       a.avg_key_bits, a.avg_value_bits, a.compression_ratio,
       b.baseline_score, a.score - b.baseline_score AS score_delta"""
_BASELINE_JOIN = """LEFT JOIN baseline b
  ON b.sweep_id = a.sweep_id AND b.model_id = a.model_id AND b.task = a.task"""

# --- 0002 views: the common config columns plus config_json ---------------------------------
V_UNIT_RESULTS = f"""
CREATE VIEW v_unit_results AS
SELECT u.unit_id, u.sweep_id, sw.name AS sweep_name, u.model_id, u.config_id,
       c.method, c.chunk_size, c.quantize_current_chunk, c.config_json,
       u.task, u.shard, u.status,
       {_SUMMARY_COLUMNS}
{_UNIT_JOINS}
JOIN sweeps sw ON sw.sweep_id = u.sweep_id
"""

# Aggregated by config_id only (config_json is joined afterwards): PostgreSQL cannot GROUP BY
# a json column, and grouping by the id is the same grouping.
V_TASK_SCORES = f"""
CREATE VIEW v_task_scores AS
WITH agg AS (
    SELECT u.sweep_id, u.model_id, u.config_id, c.method, u.task,
           {_AGGREGATES}
    {_UNIT_JOINS}
    GROUP BY u.sweep_id, u.model_id, u.config_id, c.method, u.task
), {_BASELINE}
SELECT a.sweep_id, a.model_id, a.config_id, a.method, c.chunk_size, c.quantize_current_chunk,
       c.config_json, {_TASK_SCORE_TAIL}
FROM agg a
JOIN configs c ON c.config_id = a.config_id
{_BASELINE_JOIN}
"""

# --- 0001 views, for the downgrade (the SQL of 0001_initial.py) ------------------------------
V_UNIT_RESULTS_0001 = f"""
CREATE VIEW v_unit_results AS
SELECT u.unit_id, u.sweep_id, sw.name AS sweep_name, u.model_id, u.config_id,
       c.method, c.key_bits_normal, c.value_bits_normal, c.key_bits_sink_outlier,
       c.value_bits_sink_outlier, c.chunk_size, c.ema_decay, c.attention_sink_size,
       c.outlier_threshold_relative, c.outlier_threshold_abs, c.value_quant_groups,
       c.group_size, c.residual_length, c.pre_rope_keys, c.sink_protection,
       c.outlier_detection, c.statistics, c.range_mode, c.quantize_current_chunk,
       u.task, u.shard, u.status,
       {_SUMMARY_COLUMNS}
{_UNIT_JOINS}
JOIN sweeps sw ON sw.sweep_id = u.sweep_id
"""

V_TASK_SCORES_0001 = f"""
CREATE VIEW v_task_scores AS
WITH agg AS (
    SELECT u.sweep_id, u.model_id, u.config_id, c.method, c.key_bits_normal,
           c.value_bits_normal, u.task,
           {_AGGREGATES}
    {_UNIT_JOINS}
    GROUP BY u.sweep_id, u.model_id, u.config_id, c.method, c.key_bits_normal,
             c.value_bits_normal, u.task
), {_BASELINE}
SELECT a.sweep_id, a.model_id, a.config_id, a.method, a.key_bits_normal, a.value_bits_normal,
       {_TASK_SCORE_TAIL}
FROM agg a
{_BASELINE_JOIN}
"""


def _drop_views() -> None:
    op.execute("DROP VIEW IF EXISTS v_task_scores")
    op.execute("DROP VIEW IF EXISTS v_unit_results")


def upgrade() -> None:
    _drop_views()
    # 0001 always filled `method`; this only guards the NOT NULL below against odd rows.
    # On SQLite batch mode rebuilds `configs` (copy, drop, rename): store.db.ensure_schema runs
    # migrations with foreign keys off, as SQLite's table-rebuild procedure requires.
    op.execute("UPDATE configs SET method = config_json->>'method' WHERE method IS NULL")
    with op.batch_alter_table("configs") as batch:
        for name, _type in DROPPED:
            batch.drop_column(name)
        batch.alter_column("method", existing_type=sa.String(length=64), nullable=False)
    op.execute(V_UNIT_RESULTS)
    op.execute(V_TASK_SCORES)


def _from_json(name: str, type_: sa.types.TypeEngine, dialect: str) -> str:
    """SQL reading config_json's `name` as `type_` (`->>` gives text on PostgreSQL, an SQL value
    on SQLite; a missing key gives NULL on both)."""
    value = f"config_json->>'{name}'"
    if isinstance(type_, sa.String):  # Text too
        return value
    if isinstance(type_, sa.Boolean):
        return f"CAST({value} AS BOOLEAN)"
    if isinstance(type_, sa.Integer):
        return f"CAST({value} AS INTEGER)"
    return f"CAST({value} AS {'REAL' if dialect == 'sqlite' else 'DOUBLE PRECISION'})"


def downgrade() -> None:
    _drop_views()
    with op.batch_alter_table("configs") as batch:
        for name, type_ in DROPPED:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.alter_column("method", existing_type=sa.String(length=64), nullable=True)
    dialect = op.get_bind().dialect.name
    op.execute("UPDATE configs SET " + ", ".join(
        f"{name} = {_from_json(name, type_, dialect)}" for name, type_ in DROPPED))
    op.execute(V_UNIT_RESULTS_0001)
    op.execute(V_TASK_SCORES_0001)
