"""A database written by the 0001 release (tests/data/store-0001.*, made by
tests/data/make_store_0001.py at 4be70fa) upgrades to head without losing anything, and the
downgrade to 0001 gives back what 0001 had."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url

from store import (
    SchemaVersionError,
    UnitKey,
    create_store_engine,
    run_readonly_query,
    upgrade,
    write_unit_result,
)
from store.db import alembic_config, current_revision, head_revision
from store.schema import Base, views_metadata
from streamkv.hashing import content_id

from tests.store.conftest import config_dict

DATA = Path(__file__).resolve().parents[1] / "data"
README = Path(__file__).resolve().parents[2] / "README.md"
EXPECTED = json.loads((DATA / "store-0001.expected.json").read_text())
TABLES = ("sweeps", "configs", "units", "unit_summaries", "results", "samples", "blobs")
# 0001's per-field columns of `configs`, which the downgrade must refill from config_json.
FIELDS_0001 = ("ema_decay", "attention_sink_size", "key_bits_normal", "value_bits_normal",
               "key_bits_sink_outlier", "value_bits_sink_outlier", "outlier_threshold_relative",
               "outlier_threshold_abs", "value_quant_groups", "pre_rope_keys", "sink_protection",
               "outlier_detection", "statistics", "range_mode", "group_size", "residual_length",
               "calibration_path")
# psql meta-commands that pg_dump (>= 15.14) writes around the dump; they only guard psql.
PSQL_GUARDS = ("\\restrict ", "\\unrestrict ")


def load_pg_dump(url: str, path: Path) -> None:
    """Replays a plain `pg_dump --inserts` file into the (empty) database of `url`."""
    lines = path.read_text().splitlines()
    meta = [line for line in lines if line.startswith("\\")]
    assert all(line.startswith(PSQL_GUARDS) for line in meta), meta
    sql = "\n".join(line for line in lines if not line.startswith("\\"))
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:  # its own session: the dump empties search_path
        conn.execute(sql)


@pytest.fixture
def old_db(db_url: str) -> str:
    """URL of a database exactly as the 0001 release left it (SQLite file or PostgreSQL)."""
    if db_url.startswith("sqlite"):
        shutil.copy(DATA / "store-0001.sqlite", make_url(db_url).database)
    else:
        load_pg_dump(db_url, DATA / "store-0001.postgres.sql")
    return db_url


def _plain_engine(url: str) -> Engine:
    """An engine that neither migrates nor checks: sees the database as it is."""
    return create_store_engine(url, ensure=False)


def _rows(conn: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(sql)).mappings()]


def _task_scores(conn: Any) -> list[dict[str, Any]]:
    return _rows(conn, "SELECT sweep_id, model_id, config_id, method, task, n_shards, n_samples, "
                       "score, baseline_score, score_delta FROM v_task_scores "
                       "ORDER BY sweep_id, model_id, config_id, task")


def _config_json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value  # SQLite hands back text


def assert_nothing_lost(engine: Engine) -> None:
    with engine.connect() as conn:
        counts = {t: conn.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in TABLES}
        counts["v_unit_results"] = conn.scalar(text("SELECT COUNT(*) FROM v_unit_results"))
        assert counts == EXPECTED["counts"]
        status = {r["status"]: r["n"] for r in _rows(
            conn, "SELECT status, COUNT(*) AS n FROM units GROUP BY status")}
        assert status == EXPECTED["unit_status"]
        configs = {r["config_id"]: _config_json(r["config_json"])
                   for r in _rows(conn, "SELECT config_id, config_json FROM configs")}
        assert configs == EXPECTED["configs"]
        assert _task_scores(conn) == EXPECTED["v_task_scores"]


def assert_schema_is_the_orm(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        assert diff == [], f"migrated schema and store/schema.py differ: {diff}"
        for view in views_metadata.tables.values():
            result = conn.execute(text(f"SELECT * FROM {view.name} WHERE 1 = 0"))
            assert list(result.keys()) == list(view.c.keys()), view.name


def test_fixture_is_a_0001_database(old_db):
    engine = _plain_engine(old_db)
    try:
        assert current_revision(engine) == "0001"
        with engine.connect() as conn:
            assert _task_scores(conn) == EXPECTED["v_task_scores"]
            names = list(conn.execute(text("SELECT * FROM configs WHERE 1 = 0")).keys())
        assert set(FIELDS_0001) <= set(names)
    finally:
        engine.dispose()


def test_first_use_upgrades_a_0001_database_without_losing_a_row(old_db):
    engine = create_store_engine(old_db)  # the store's own path: migrates on first use
    try:
        assert current_revision(engine) == head_revision() != "0001"
        if engine.dialect.name == "sqlite":  # the migration's connection, back in the pool
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert_nothing_lost(engine)
        assert_schema_is_the_orm(engine)
        with engine.connect() as conn:
            rows = _rows(conn, "SELECT config_id, method, chunk_size, quantize_current_chunk, "
                               "config_json FROM configs")
        for row in rows:
            config = _config_json(row["config_json"])
            assert content_id(config) == row["config_id"]
            assert (row["method"], row["chunk_size"], bool(row["quantize_current_chunk"])) == (
                config["method"], config["chunk_size"], config["quantize_current_chunk"])
    finally:
        engine.dispose()


def test_a_migrated_database_takes_new_results_for_old_and_new_configs(old_db, blobs,
                                                                      make_result):
    engine = create_store_engine(old_db)
    try:
        with engine.connect() as conn:
            pending = conn.execute(text(
                "SELECT sweep_id, model_id, config_id, task, shard FROM units "
                "WHERE status = 'pending' AND error IS NULL ORDER BY unit_id")).first()
        old_key = UnitKey(*pending)
        config = EXPECTED["configs"][old_key.config_id]  # as 0001 stored it: still its own id
        write_unit_result(engine, blobs, make_result(old_key, config, score=0.25))
        toy = config_dict(method="toy", chunk_size=None, toy_scale=0.5)
        new_key = UnitKey("sw-a", "m1", content_id(toy), "qa", "0/1")
        new_id = write_unit_result(engine, blobs, make_result(new_key, toy))
        # PostgreSQL: the dump restored the unit_id sequence, so new rows do not collide
        assert new_id == EXPECTED["counts"]["units"] + 1
        with engine.connect() as conn:
            done = conn.scalar(text("SELECT COUNT(*) FROM units WHERE status = 'done'"))
            toy_row = conn.execute(text("SELECT method, chunk_size FROM configs "
                                        f"WHERE config_id = '{new_key.config_id}'")).one()
        assert done == EXPECTED["unit_status"]["done"] + 2
        assert tuple(toy_row) == ("toy", None)
    finally:
        engine.dispose()


def _check_0001_columns(engine: Engine) -> None:
    """After the downgrade every 0001 column holds its config_json value again."""
    with engine.connect() as conn:
        rows = _rows(conn, "SELECT * FROM configs")
    assert len(rows) == EXPECTED["counts"]["configs"]
    for row in rows:
        config = _config_json(row["config_json"])
        for name in ("method", "chunk_size", "quantize_current_chunk", *FIELDS_0001):
            got, want = row[name], config[name]
            assert (bool(got) if isinstance(want, bool) and got is not None else got) == want, (
                row["config_id"], name)


def test_downgrade_to_0001_and_upgrade_again_lose_nothing(old_db):
    create_store_engine(old_db).dispose()
    command.downgrade(alembic_config(old_db), "0001")
    engine = _plain_engine(old_db)
    try:
        assert current_revision(engine) == "0001"
        assert_nothing_lost(engine)
        _check_0001_columns(engine)
        with engine.connect() as conn:  # the 0001 view is back, with its key_bits_normal
            bits = {r["config_id"]: r["key_bits_normal"] for r in _rows(
                conn, "SELECT DISTINCT config_id, key_bits_normal FROM v_task_scores")}
        assert bits == {cid: EXPECTED["configs"][cid]["key_bits_normal"] for cid in bits}
        upgrade(old_db)
        assert current_revision(engine) == head_revision()
        assert_nothing_lost(engine)
        assert_schema_is_the_orm(engine)
    finally:
        engine.dispose()


def test_readme_queries_run_on_a_migrated_database(old_db):
    """The README's SQL (with `config_json->>`) on both dialects, on real migrated rows."""
    create_store_engine(old_db).dispose()
    queries = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    assert len(queries) >= 5
    for sql in queries:
        columns, rows = run_readonly_query(old_db, sql)
        assert rows, sql
    _, ablation = run_readonly_query(old_db, queries[2])
    # key_bits, sink_protection, outlier_detection of the two streamkv configs (both 4-bit)
    assert {tuple(bool(x) if i else x for i, x in enumerate(r[:3])) for r in ablation} == {
        (4, True, True)}


def test_a_sqlite_migration_leaving_dangling_rows_is_rolled_back(tmp_path):
    # Foreign keys are off while SQLite rebuilds `configs`; the check before COMMIT is what
    # stops a broken database (here: a config deleted behind the store's back) from passing.
    path = tmp_path / "store.db"
    shutil.copy(DATA / "store-0001.sqlite", path)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM configs WHERE method = 'kivi'")  # foreign keys are off by default
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError, match="dangling foreign keys.*units"):
        create_store_engine(f"sqlite:///{path}")
    engine = _plain_engine(f"sqlite:///{path}")
    try:
        assert current_revision(engine) == "0001"
    finally:
        engine.dispose()


def test_downgrade_to_0002_drops_only_the_claim_columns(old_db):
    create_store_engine(old_db).dispose()
    engine = _plain_engine(old_db)
    try:
        with engine.connect() as conn:
            assert {"claimed_by", "lease_until"} <= set(
                conn.execute(text("SELECT * FROM units WHERE 1 = 0")).keys())
        command.downgrade(alembic_config(old_db), "0002")
        assert current_revision(engine) == "0002"
        with engine.connect() as conn:
            names = set(conn.execute(text("SELECT * FROM units WHERE 1 = 0")).keys())
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("units")}
        assert not names & {"claimed_by", "lease_until"} and "ix_units_claimed_by" not in indexes
        assert {"status", "attempts", "worker", "error"} <= names
        assert_nothing_lost(engine)  # the views still work on the table they name
        upgrade(old_db)
        assert_nothing_lost(engine)
        assert_schema_is_the_orm(engine)
    finally:
        engine.dispose()


def test_downgrade_to_0003_drops_only_the_interval_columns(old_db):
    create_store_engine(old_db).dispose()
    engine = _plain_engine(old_db)
    interval = {"score_ci_low", "score_ci_high"}
    try:
        with engine.connect() as conn:  # old rows: no interval was ever computed for them
            assert _rows(conn, "SELECT COUNT(*) AS n FROM unit_summaries "
                               "WHERE score_ci_low IS NOT NULL OR score_ci_high IS NOT NULL") == [{"n": 0}]
            for view in ("v_unit_results", "v_task_scores"):
                assert interval <= set(conn.execute(text(f"SELECT * FROM {view} WHERE 1 = 0")).keys())
        command.downgrade(alembic_config(old_db), "0003")
        assert current_revision(engine) == "0003"
        with engine.connect() as conn:
            for table in ("unit_summaries", "v_unit_results", "v_task_scores"):
                names = set(conn.execute(text(f"SELECT * FROM {table} WHERE 1 = 0")).keys())
                assert not names & interval and "n_samples" in names, table
        assert_nothing_lost(engine)
        upgrade(old_db)
        assert_nothing_lost(engine)
        assert_schema_is_the_orm(engine)
    finally:
        engine.dispose()
