"""Initial schema: sweeps, configs, units, unit_summaries, results, samples, blobs + views.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Migrations are frozen: they spell out every column instead of importing store.schema, so a
later change to the ORM (e.g. a new CompressionConfig field) shows up as a diff in
tests/store/test_store_schema.py until a new migration adds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _unit_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["unit_id"], ["units.unit_id"],
                                   name=op.f(f"fk_{table}_unit_id_units"), ondelete="CASCADE")


# One row per finished unit with the config fields that matter for plots and tables.
V_UNIT_RESULTS = """
CREATE VIEW v_unit_results AS
SELECT u.unit_id, u.sweep_id, sw.name AS sweep_name, u.model_id, u.config_id,
       c.method, c.key_bits_normal, c.value_bits_normal, c.key_bits_sink_outlier,
       c.value_bits_sink_outlier, c.chunk_size, c.ema_decay, c.attention_sink_size,
       c.outlier_threshold_relative, c.outlier_threshold_abs, c.value_quant_groups,
       c.group_size, c.residual_length, c.pre_rope_keys, c.sink_protection,
       c.outlier_detection, c.statistics, c.range_mode, c.quantize_current_chunk,
       u.task, u.shard, u.status,
       s.n_samples, s.score, s.perplexity, s.kl, s.top1_agreement,
       s.avg_key_bits, s.avg_value_bits, s.kv_bytes, s.fp16_kv_bytes, s.compression_ratio,
       s.outlier_ratio, s.prefill_tokens_per_s, s.decode_tokens_per_s, s.peak_memory_bytes,
       s.worker, s.device, s.finished_at
FROM units u
JOIN unit_summaries s ON s.unit_id = u.unit_id
JOIN configs c ON c.config_id = u.config_id
JOIN sweeps sw ON sw.sweep_id = u.sweep_id
"""


def _wmean(col: str) -> str:
    # Mean over shards weighted by n_samples, ignoring shards where the value is NULL.
    # NULLIF: PostgreSQL raises on division by zero, SQLite would return NULL.
    return (f"SUM(s.{col} * s.n_samples) / "
            f"NULLIF(SUM(CASE WHEN s.{col} IS NOT NULL THEN s.n_samples END), 0) AS {col}")


# Per sweep x model x config x task over the shards that have results; score_delta is the
# difference to the method='none' config(s) of the same sweep/model/task (NULL without one).
V_TASK_SCORES = f"""
CREATE VIEW v_task_scores AS
WITH agg AS (
    SELECT u.sweep_id, u.model_id, u.config_id, c.method, c.key_bits_normal,
           c.value_bits_normal, u.task,
           COUNT(*) AS n_shards, SUM(s.n_samples) AS n_samples,
           {_wmean("score")}, {_wmean("perplexity")}, {_wmean("kl")},
           {_wmean("top1_agreement")}, {_wmean("avg_key_bits")}, {_wmean("avg_value_bits")},
           {_wmean("compression_ratio")}
    FROM units u
    JOIN unit_summaries s ON s.unit_id = u.unit_id
    JOIN configs c ON c.config_id = u.config_id
    GROUP BY u.sweep_id, u.model_id, u.config_id, c.method, c.key_bits_normal,
             c.value_bits_normal, u.task
), baseline AS (
    SELECT sweep_id, model_id, task,
           SUM(score * n_samples) / NULLIF(SUM(CASE WHEN score IS NOT NULL THEN n_samples END), 0)
               AS baseline_score
    FROM agg
    WHERE method = 'none'
    GROUP BY sweep_id, model_id, task
)
SELECT a.sweep_id, a.model_id, a.config_id, a.method, a.key_bits_normal, a.value_bits_normal,
       a.task, a.n_shards, a.n_samples, a.score, a.perplexity, a.kl, a.top1_agreement,
       a.avg_key_bits, a.avg_value_bits, a.compression_ratio,
       b.baseline_score, a.score - b.baseline_score AS score_delta
FROM agg a
LEFT JOIN baseline b
  ON b.sweep_id = a.sweep_id AND b.model_id = a.model_id AND b.task = a.task
"""


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("sweep_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'done', 'failed', 'cancelled')",
                           name=op.f("ck_sweeps_status")),
        sa.PrimaryKeyConstraint("sweep_id", name=op.f("pk_sweeps")),
    )
    op.create_table(
        "configs",
        sa.Column("config_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=True),
        sa.Column("ema_decay", sa.Double(), nullable=True),
        sa.Column("attention_sink_size", sa.Integer(), nullable=True),
        sa.Column("key_bits_normal", sa.Integer(), nullable=True),
        sa.Column("value_bits_normal", sa.Integer(), nullable=True),
        sa.Column("key_bits_sink_outlier", sa.Integer(), nullable=True),
        sa.Column("value_bits_sink_outlier", sa.Integer(), nullable=True),
        sa.Column("outlier_threshold_relative", sa.Double(), nullable=True),
        sa.Column("outlier_threshold_abs", sa.Double(), nullable=True),
        sa.Column("value_quant_groups", sa.Integer(), nullable=True),
        sa.Column("pre_rope_keys", sa.Boolean(), nullable=True),
        sa.Column("sink_protection", sa.Boolean(), nullable=True),
        sa.Column("outlier_detection", sa.Boolean(), nullable=True),
        sa.Column("statistics", sa.String(length=64), nullable=True),
        sa.Column("range_mode", sa.String(length=64), nullable=True),
        sa.Column("quantize_current_chunk", sa.Boolean(), nullable=True),
        sa.Column("group_size", sa.Integer(), nullable=True),
        sa.Column("residual_length", sa.Integer(), nullable=True),
        sa.Column("calibration_path", sa.Text(), nullable=True),
        sa.Column("config_json", _json(), nullable=False),
        sa.PrimaryKeyConstraint("config_id", name=op.f("pk_configs")),
    )
    op.create_table(
        "units",
        sa.Column("unit_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sweep_id", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("config_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("shard", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=256), nullable=True),
        sa.Column("device", sa.String(length=256), nullable=True),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed', 'skipped')",
                           name=op.f("ck_units_status")),
        sa.ForeignKeyConstraint(["config_id"], ["configs.config_id"],
                                name=op.f("fk_units_config_id_configs")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.sweep_id"],
                                name=op.f("fk_units_sweep_id_sweeps"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("unit_id", name=op.f("pk_units")),
        sa.UniqueConstraint("sweep_id", "model_id", "config_id", "task", "shard",
                            name=op.f("uq_units_sweep_id_model_id_config_id_task_shard")),
    )
    op.create_index(op.f("ix_units_finished_at"), "units", ["finished_at"])
    op.create_index(op.f("ix_units_sweep_id_status"), "units", ["sweep_id", "status"])
    op.create_table(
        "unit_summaries",
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("perplexity", sa.Double(), nullable=True),
        sa.Column("kl", sa.Double(), nullable=True),
        sa.Column("top1_agreement", sa.Double(), nullable=True),
        sa.Column("avg_key_bits", sa.Double(), nullable=True),
        sa.Column("avg_value_bits", sa.Double(), nullable=True),
        sa.Column("kv_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fp16_kv_bytes", sa.BigInteger(), nullable=True),
        sa.Column("compression_ratio", sa.Double(), nullable=True),
        sa.Column("outlier_ratio", sa.Double(), nullable=True),
        sa.Column("prefill_tokens_per_s", sa.Double(), nullable=True),
        sa.Column("decode_tokens_per_s", sa.Double(), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("worker", sa.String(length=256), nullable=True),
        sa.Column("device", sa.String(length=256), nullable=True),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("written_at", _ts(), nullable=False),
        sa.Column("git_commit", sa.String(length=64), nullable=True),
        sa.Column("environment", _json(), nullable=False),
        _unit_fk("unit_summaries"),
        sa.PrimaryKeyConstraint("unit_id", name=op.f("pk_unit_summaries")),
    )
    op.create_table(
        "results",
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        _unit_fk("results"),
        sa.PrimaryKeyConstraint("unit_id", "metric", name=op.f("pk_results")),
    )
    op.create_table(
        "samples",
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=256), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=False),
        sa.Column("answers", _json(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("extra", _json(), nullable=False),
        _unit_fk("samples"),
        sa.PrimaryKeyConstraint("unit_id", "sample_id", name=op.f("pk_samples")),
    )
    op.create_table(
        "blobs",
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=128), nullable=False),
        sa.Column("uri", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("schema_json", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        _unit_fk("blobs"),
        sa.PrimaryKeyConstraint("unit_id", "kind", name=op.f("pk_blobs")),
    )
    op.create_index(op.f("ix_blobs_sha256"), "blobs", ["sha256"])
    op.execute(V_UNIT_RESULTS)
    op.execute(V_TASK_SCORES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_task_scores")
    op.execute("DROP VIEW IF EXISTS v_unit_results")
    for table in ("blobs", "samples", "results", "unit_summaries", "units", "configs", "sweeps"):
        op.drop_table(table)
