"""The guarded read-only query (CLI `streamkv db query`, dashboard box)."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import func, select

from store import ReadOnlyQueryError, StoreConnectionError, UnitKey, readonly_engine
from store import queries, register_sweep, run_readonly_query
from store.db import bounded_query, single_statement
from store.repository import units_t
from tests.store.conftest import INT8, cid


@pytest.fixture
def thirty_units(engine):
    keys = [UnitKey("ro", "m", cid(INT8), "t", f"{i}/30") for i in range(30)]
    register_sweep(engine, "ro", "read-only", {}, keys, [INT8])
    return keys


def _units(engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(units_t)))


def test_reads_work_and_the_row_limit_applies(db_url, engine, thirty_units):
    columns, rows = run_readonly_query(db_url, "SELECT shard, status FROM units ORDER BY unit_id",
                                       limit=10)
    assert columns == ["shard", "status"] and len(rows) == 10 and rows[0] == ("0/30", "pending")
    _, rows = run_readonly_query(db_url, "select count(*) as n from units;  ")
    assert rows == [(30,)]
    _, rows = run_readonly_query(db_url, "SELECT ';' AS semi, 'it''s' AS q -- a ; comment")
    assert rows == [(";", "it's")]
    _, rows = run_readonly_query(db_url, "SELECT method FROM v_unit_results")
    assert rows == []


@pytest.mark.parametrize("sql", [
    "INSERT INTO sweeps (sweep_id, name, spec, created_at, status) "
    "VALUES ('x', 'x', '{}', '2026-01-01', 'running')",
    "DELETE FROM units",
    "UPDATE units SET status = 'done'",
    "DROP TABLE units",
    "CREATE TABLE evil (x INTEGER)",
])
def test_writes_fail_in_the_database(db_url, engine, thirty_units, sql):
    with pytest.raises(ReadOnlyQueryError, match="(?i)read.?only"):
        run_readonly_query(db_url, sql)
    assert _units(engine) == 30


@pytest.mark.parametrize("sql", [
    "SELECT 1; DROP TABLE units",
    "SELECT 1; SELECT 2;",
    "SELECT 'a\\'; DROP TABLE units; --'",  # a string one dialect ends earlier than the other
    "",
    " ; ",
])
def test_several_statements_are_refused_before_running(db_url, engine, thirty_units, sql):
    with pytest.raises(ReadOnlyQueryError):
        run_readonly_query(db_url, sql)
    assert _units(engine) == 30


def test_single_statement_keeps_literals_and_comments():
    assert single_statement("SELECT ';' /* ; */ ;;") == "SELECT ';' /* ; */"
    assert single_statement('SELECT 1 AS "a;b"') == 'SELECT 1 AS "a;b"'


def test_sqlite_escape_hatches_are_closed(tmp_path, engine, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite-specific")
    for sql in (f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x", "PRAGMA query_only = OFF",
                f"VACUUM INTO '{tmp_path / 'copy.db'}'"):
        with pytest.raises(ReadOnlyQueryError):
            run_readonly_query(db_url, sql)
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "copy.db").exists()


def test_long_queries_time_out(db_url, engine):
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000)"
            " SELECT count(*) FROM n")
    with pytest.raises(ReadOnlyQueryError, match="(?i)interrupt|cancel|timeout"):
        run_readonly_query(db_url, slow, timeout_s=0.3)


def test_readonly_engine_serves_pandas_and_queries_and_refuses_writes(db_url, engine,
                                                                    thirty_units):
    ro = readonly_engine(db_url)
    try:
        frame = pd.read_sql("SELECT shard FROM units", ro)
        assert len(frame) == 30
        assert queries.unit_status(ro, "ro")["status"].eq("pending").all()
        assert queries.list_sweeps(ro).loc[0, "n_pending"] == 30
        with pytest.raises(Exception, match="(?i)read.?only"):
            with ro.begin() as conn:
                conn.exec_driver_sql("DELETE FROM units")
    finally:
        ro.dispose()
    assert _units(engine) == 30


def test_readonly_on_a_missing_sqlite_file_says_so(tmp_path):
    with pytest.raises(StoreConnectionError, match="missing.db"):
        run_readonly_query(f"sqlite:///{tmp_path / 'missing.db'}", "SELECT 1")
    assert not (tmp_path / "missing.db").exists()


def _big_value_sql(db_url: str, n: int) -> str:
    if db_url.startswith("sqlite"):
        return f"SELECT randomblob({n}) AS b, 'after' AS a"
    return f"SELECT decode(repeat('ab', {n}), 'hex') AS b, 'after' AS a"


def test_the_row_cap_says_when_rows_were_left_out(db_url, engine, thirty_units):
    result = bounded_query(db_url, "SELECT shard FROM units ORDER BY unit_id", max_rows=10)
    assert len(result.rows) == 10 and result.cut == "more than 10 rows"
    exact = bounded_query(db_url, "SELECT shard FROM units", max_rows=30)
    assert len(exact.rows) == 30 and exact.cut is None


def test_the_byte_cap_shortens_a_huge_value_and_fetches_nothing_after_it(db_url, engine):
    result = bounded_query(db_url, _big_value_sql(db_url, 5_000_000), max_bytes=1000)
    (value, after), = result.rows
    assert isinstance(value, bytes) and len(value) == 1000 and after == ""
    assert "1000 bytes" in result.cut
    many = ("SELECT 'row' || CAST(i AS TEXT) AS r FROM (SELECT 1 AS i UNION ALL SELECT 2 "
            "UNION ALL SELECT 3 UNION ALL SELECT 4) AS t ORDER BY i")
    assert bounded_query(db_url, many, max_bytes=9).rows == [("row1",), ("row2",), ("r",)]
    assert bounded_query(db_url, many, max_bytes=100).cut is None
