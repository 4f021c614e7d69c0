"""Claims on units: units.claimed_by and units.lease_until (nullable), indexed by claimed_by.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10

Before 0003 `mark_running` overwrote any status, so two drivers on one sweep computed every
unit twice. A driver now claims a unit with a conditional update that records its id
(`claimed_by`) and a lease (`lease_until`) that it renews while the unit runs; another driver
takes a running unit over only once its lease has passed. Existing rows get NULL in both:
a unit left `running` by an older driver has no lease, so it counts as abandoned.

The downgrade drops the index and both columns (nothing else refers to them; the views do not).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both dialects (SQLite needs no table rebuild for nullable columns).
    with op.batch_alter_table("units", recreate="never") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_units_claimed_by"), "units", ["claimed_by"])


def downgrade() -> None:
    op.drop_index(op.f("ix_units_claimed_by"), table_name="units")
    # SQLite >= 3.35 drops a column in place; never rebuilding `units` keeps the views (which
    # name it) and the foreign keys of its child tables untouched.
    with op.batch_alter_table("units", recreate="never") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
