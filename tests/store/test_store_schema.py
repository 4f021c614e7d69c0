"""Schema: migrations equal the ORM metadata, views exist, configs hold any method's fields in
config_json (readable with `->>` on both dialects), schema versions are checked, engines are
set up as documented."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from store import (
    SchemaVersionError,
    StoreConnectionError,
    UnitKey,
    create_store_engine,
    register_sweep,
    upgrade,
)
from store.db import alembic_config, current_revision, head_revision
from store.schema import VIEW_CONFIG_COLUMNS, VIEW_NAMES, Base, views_metadata
from tests.store.conftest import cid, config_dict

TABLES = {"sweeps", "configs", "units", "unit_summaries", "results", "samples", "blobs"}
CONFIG_COLUMNS = ["config_id", "method", "chunk_size", "quantize_current_chunk", "config_json"]


def test_migrations_produce_the_orm_schema_and_the_views(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        assert diff == [], f"migrations and store/schema.py differ: {diff}"
        insp = inspect(conn)
        assert TABLES <= set(insp.get_table_names())
        assert set(VIEW_NAMES) <= set(insp.get_view_names())
        # No method's own field is a column: they all live in config_json.
        assert [c["name"] for c in insp.get_columns("configs")] == CONFIG_COLUMNS
        assert not next(c for c in insp.get_columns("configs") if c["name"] == "method")[
            "nullable"]
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


def test_views_expose_the_common_columns_and_config_json(engine):
    for view in views_metadata.tables.values():
        assert set(VIEW_CONFIG_COLUMNS) <= set(view.c.keys()), view.name
        assert not {"key_bits_normal", "value_bits_normal"} & set(view.c.keys()), view.name


def test_method_fields_read_with_the_json_operator_as_documented(engine):
    """What store/schema.py's docstring tells plain-SQL users about `->>` on each dialect."""
    cfg = config_dict("toy", key_bits_normal=2, ema_decay=0.5, sink_protection=True,
                      mode="clip")
    register_sweep(engine, "sw", "x", {}, [UnitKey("sw", "m", cid(cfg), "t", "0/1")], [cfg])
    raw = ("SELECT config_json->>'key_bits_normal', config_json->>'sink_protection', "
           "config_json->>'ema_decay', config_json->>'mode', config_json->>'absent' FROM configs")
    cast = ("SELECT CAST(config_json->>'key_bits_normal' AS INTEGER), "
            "CAST(config_json->>'sink_protection' AS BOOLEAN) = TRUE, "
            "CAST(config_json->>'ema_decay' AS REAL) FROM configs "
            "WHERE CAST(config_json->>'key_bits_normal' AS INTEGER) = 2")
    with engine.connect() as conn:
        got = tuple(conn.execute(text(raw)).one())
        typed = tuple(conn.execute(text(cast)).one())
    if engine.dialect.name == "sqlite":
        assert got == (2, 1, 0.5, "clip", None)  # SQL values; true is 1
    else:
        assert got == ("2", "true", "0.5", "clip", None)  # always text
    assert typed == (2, True, 0.5)  # the casts agree (SQLite's 1 == True)
