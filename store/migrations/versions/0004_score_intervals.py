"""Score intervals: unit_summaries.score_ci_low / score_ci_high (nullable), in both views.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

A task score from a few samples says little on its own: workers now store, with every score,
its 95 % bootstrap interval over the unit's samples (`workers.intervals`). Rows written before
this revision get NULL in both columns (their samples are in `samples`, but the interval is
the worker's to compute, seeded by the unit's seed). v_unit_results gains both columns;
v_task_scores gains them for tasks that ran as one shard (NULL for several: the intervals of
shards do not combine into the interval of their pooled samples).

The downgrade drops the views, then both columns, then recreates the 0002 views. Frozen like
0001 and 0002: the SQL of the views is spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _wmean(col: str) -> str:
    # Mean over shards weighted by n_samples, ignoring shards where the value is NULL.
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


def _views(with_intervals: bool) -> tuple[str, str]:
    """(v_unit_results, v_task_scores): 0004's with the interval columns, else 0002's."""
    unit_extra = ",\n       s.score_ci_low, s.score_ci_high" if with_intervals else ""
    # One shard: its own interval; several: NULL (MAX over one row is that row's value).
    agg_extra = (",\n           CASE WHEN COUNT(*) = 1 THEN MAX(s.score_ci_low) END AS score_ci_low,"
                 "\n           CASE WHEN COUNT(*) = 1 THEN MAX(s.score_ci_high) END AS score_ci_high"
                 if with_intervals else "")
    tail_extra = ",\n       a.score_ci_low, a.score_ci_high" if with_intervals else ""
    unit_results = f"""
CREATE VIEW v_unit_results AS
SELECT u.unit_id, u.sweep_id, sw.name AS sweep_name, u.model_id, u.config_id,
       c.method, c.chunk_size, c.quantize_current_chunk, c.config_json,
       u.task, u.shard, u.status,
       {_SUMMARY_COLUMNS}{unit_extra}
{_UNIT_JOINS}
JOIN sweeps sw ON sw.sweep_id = u.sweep_id
"""
    task_scores = f"""
CREATE VIEW v_task_scores AS
WITH agg AS (
    SELECT u.sweep_id, u.model_id, u.config_id, c.method, u.task,
           {_AGGREGATES}{agg_extra}
    {_UNIT_JOINS}
    GROUP BY u.sweep_id, u.model_id, u.config_id, c.method, u.task
), {_BASELINE}
SELECT a.sweep_id, a.model_id, a.config_id, a.method, c.chunk_size, c.quantize_current_chunk,
       c.config_json, {_TASK_SCORE_TAIL}{tail_extra}
FROM agg a
JOIN configs c ON c.config_id = a.config_id
{_BASELINE_JOIN}
"""
    return unit_results, task_scores


def _drop_views() -> None:
    op.execute("DROP VIEW IF EXISTS v_task_scores")
    op.execute("DROP VIEW IF EXISTS v_unit_results")


def upgrade() -> None:
    _drop_views()
    # Plain ADD COLUMN on both dialects (SQLite needs no table rebuild for nullable columns).
    with op.batch_alter_table("unit_summaries", recreate="never") as batch:
        batch.add_column(sa.Column("score_ci_low", sa.Double(), nullable=True))
        batch.add_column(sa.Column("score_ci_high", sa.Double(), nullable=True))
    for sql in _views(with_intervals=True):
        op.execute(sql)


def downgrade() -> None:
    _drop_views()
    # SQLite >= 3.35 drops a column in place (the views that name the table are gone already).
    with op.batch_alter_table("unit_summaries", recreate="never") as batch:
        batch.drop_column("score_ci_high")
        batch.drop_column("score_ci_low")
    for sql in _views(with_intervals=False):
        op.execute(sql)
