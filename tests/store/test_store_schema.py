"""Schema: migrations equal the ORM metadata, views exist, config fields all have columns,
schema versions are checked, engines are set up as documented."""

from __future__ import annotations

import dataclasses

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from store import SchemaVersionError, StoreConnectionError, create_store_engine, upgrade
from store.db import alembic_config, current_revision, head_revision
from store.schema import (
    CONFIG_FIELDS,
    VIEW_CONFIG_COLUMNS,
    VIEW_NAMES,
    Base,
    configs_table,
    views_metadata,
)
from streamkv.config import CompressionConfig

TABLES = {"sweeps", "configs", "units", "unit_summaries", "results", "samples", "blobs"}


def test_every_config_field_has_a_column():
    names = [f.name for f in dataclasses.fields(CompressionConfig)]
    assert list(CONFIG_FIELDS) == names
    for name in names:
        assert name in configs_table.c, f"CompressionConfig.{name} has no column in configs"
    assert set(VIEW_CONFIG_COLUMNS) <= set(names)


def test_migrations_produce_the_orm_schema_and_the_views(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        assert diff == [], f"migrations and store/schema.py differ: {diff}"
        insp = inspect(conn)
        assert TABLES <= set(insp.get_table_names())
        assert set(VIEW_NAMES) <= set(insp.get_view_names())
        # Every CompressionConfig field is a column of the migrated configs table.
        assert set(CONFIG_FIELDS) <= {c["name"] for c in insp.get_columns("configs")}
        # The typed column lists that queries use match the views the migration created.
        for view in views_metadata.tables.values():
            result = conn.execute(text(f"SELECT * FROM {view.name} WHERE 1 = 0"))
            assert list(result.keys()) == list(view.c.keys()), view.name
            conn.execute(select(view)).all()
    assert current_revision(engine) == head_revision()


def test_downgrade_then_upgrade_round_trips(db_url, engine):
    engine.dispose()
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert not (TABLES | set(VIEW_NAMES)) & set(inspect(conn).get_table_names()
                                                    + inspect(conn).get_view_names())
    upgrade(db_url)
    assert current_revision(engine) == head_revision()


def test_ensure_schema_is_idempotent_and_refuses_unknown_revisions(db_url, engine):
    create_store_engine(db_url).dispose()  # second first-use: nothing to do
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(SchemaVersionError, match="ffffffff.*newer"):
        create_store_engine(db_url)


def test_store_tables_without_alembic_revision_are_refused(db_url, engine):
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(SchemaVersionError, match="no Alembic revision"):
        create_store_engine(db_url)


def test_default_url_makes_the_results_folder_with_wal_and_foreign_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = create_store_engine()
    try:
        assert (tmp_path / "results" / "streamkv.db").is_file()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


def test_unreachable_postgres_says_what_to_check():
    with pytest.raises(StoreConnectionError) as info:
        create_store_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message and "running" in message and "URL" in message


def test_passwords_are_not_shown_in_connection_errors():
    with pytest.raises(StoreConnectionError) as info:
        create_store_engine("postgresql://bob:s3cret@127.0.0.1:1/nowhere")
    assert "s3cret" not in str(info.value)


def test_a_database_missing_a_config_field_column_is_refused(db_url, engine):
    # What a new CompressionConfig field without a migration looks like to ensure_schema.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE configs DROP COLUMN calibration_path"))
    with pytest.raises(SchemaVersionError, match="calibration_path.*migration"):
        create_store_engine(db_url)
