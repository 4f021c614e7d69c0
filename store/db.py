"""Engines, sessions, migrations and the guarded read-only query of the results store.

There is no module-level engine: callers create one with `create_store_engine(url)` and pass
it around. SQLite (default `sqlite:///results/streamkv.db`) and PostgreSQL
(`postgresql+psycopg://user@host:port/db`) are supported.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from .schema import Base

DEFAULT_URL = "sqlite:///results/streamkv.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# Serializes concurrent `ensure_schema` calls on PostgreSQL (arbitrary constant: "sKVs").
_PG_MIGRATION_LOCK = 0x734B5673
_READ_OPTION = "streamkv_read_only"


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreConnectionError(StoreError):
    """The database cannot be reached or opened."""


class SchemaVersionError(StoreError):
    """The database schema is ahead of / unknown to this code, or was not made by it."""


class ReadOnlyQueryError(StoreError):
    """A query given to `run_readonly_query` was refused or failed."""


# --- URLs and engines -------------------------------------------------------------------------
def normalize_url(url: str | URL | None) -> URL:
    """`url` (default DEFAULT_URL) with `postgres://` / `postgresql://` mapped to psycopg 3."""
    u = make_url(url or DEFAULT_URL)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def safe_url(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_path(u: URL) -> Path | None:
    """The file of a SQLite URL; None for in-memory or `file:` URI databases."""
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _connection_hint(u: URL, exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0:1]
    where = safe_url(u)
    if u.get_backend_name() == "sqlite":
        check = ("check the path in the URL, that its folder exists and is readable "
                 "(a read-only connection never creates the database)")
    else:
        check = ("check the URL (host, port, database name, user, password) and that the "
                 "PostgreSQL server is running and reachable from here "
                 "(for tests: `bash scripts/start_postgres.sh`)")
    return f"cannot connect to the results database {where}: {' '.join(detail)}; {check}"


def connect(engine: Engine, url: str | URL | None = None) -> Connection:
    """`engine.connect()` turning connection failures into a StoreConnectionError with hints
    (naming `url`, default the engine's)."""
    try:
        return engine.connect()
    except DBAPIError as exc:
        raise StoreConnectionError(_connection_hint(normalize_url(url or engine.url), exc)) from exc


def create_store_engine(url: str | URL | None = None, *, ensure: bool = True) -> Engine:
    """An engine for `url`; with `ensure`, migrates the schema to head on this first use."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        engine = _sqlite_engine(u)
    else:
        engine = create_engine(u, pool_pre_ping=True,
                               connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
    if ensure:
        try:
            ensure_schema(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _sqlite_engine(u: URL) -> Engine:
    path = _sqlite_path(u)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # We emit BEGIN ourselves (below); pysqlite's implicit BEGIN is deferred and lets two
        # writers deadlock on the read->write lock upgrade instead of waiting on busy_timeout.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        # With WAL, NORMAL survives a killed process; a power cut may drop the last commits
        # but never corrupts the file. Results can be recomputed; throughput matters more.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock at BEGIN so they queue instead of failing; readers
        # (`read_connection`) take a deferred snapshot that never waits for writers.
        if conn.get_execution_options().get(_READ_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads: on SQLite its transaction does not take the write lock."""
    with connect(engine) as conn:
        conn.execution_options(**{_READ_OPTION: True})
        yield conn


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session committed on success, rolled back on error, closed either way."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- migrations -------------------------------------------------------------------------------
def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic configured from code: no alembic.ini needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url",
                            normalize_url(url).render_as_string(hide_password=False)
                            .replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | URL | None = None) -> None:
    """Applies the Alembic migrations to head (same checks and locking as `ensure_schema`)."""
    engine = create_store_engine(url, ensure=False)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


def ensure_schema(engine: Engine) -> None:
    """Brings the database to the latest revision, or fails if it is ahead of this code.

    A database older than the code (an earlier revision, e.g. one written by the 0001 release)
    is migrated here, on first use. Runs inside one transaction holding a lock (BEGIN IMMEDIATE
    on SQLite, an advisory lock on PostgreSQL) so that many workers starting at once migrate
    exactly once.
    """
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with connect(engine) as conn, _sqlite_foreign_keys_off(conn), conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            _check_revision(conn, script, current, head)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            _check_foreign_keys(conn)


@contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite's procedure for rebuilding a table (batch migrations): foreign keys off around
    the transaction, since the pragma is a no-op inside one, and a DROP of a referenced table
    would fail (or leave a deferred violation behind even though the rebuilt table has every
    row). `_check_foreign_keys` re-checks before the commit."""
    raw = conn.connection.dbapi_connection
    if conn.dialect.name != "sqlite" or raw is None:
        yield
        return
    raw.execute("PRAGMA foreign_keys = OFF")  # autocommit connection: runs outside BEGIN
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")  # the connection goes back to the pool


def _check_foreign_keys(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return  # PostgreSQL checked every statement of the migration
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise SchemaVersionError(
            f"{safe_url(conn.engine.url)}: after the migration rows have dangling foreign keys "
            f"(table, rowid, parent, fk): {broken[:5]}; rolled back, the database is unchanged")


def _check_revision(conn: Connection, script: ScriptDirectory, current: str | None,
                    head: str | None) -> None:
    """SchemaVersionError unless `current` is an older revision of ours (or an empty database)."""
    where = safe_url(conn.engine.url)
    if current is None:
        ours = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
        if ours:
            raise SchemaVersionError(
                f"{where} has store tables {sorted(ours)} but no Alembic "
                "revision; it was not created by store migrations (stamp or recreate it)"
            )
        return
    try:
        script.get_revision(current)
    except CommandError as exc:
        raise SchemaVersionError(
            f"{where} is at schema revision {current!r}, unknown to "
            f"this code (head {head!r}): the database is newer, update streamkv"
        ) from exc


# --- read-only access -------------------------------------------------------------------------
def readonly_engine(url: str | URL | None = None, *, statement_timeout_s: float = 10.0,
                    pooled: bool = True) -> Engine:
    """An engine that cannot write: SQLite opened with `mode=ro`, PostgreSQL sessions with
    `default_transaction_read_only=on` and a `statement_timeout`.

    Defense in depth only: give the dashboard a database role with SELECT rights alone.
    """
    u = normalize_url(url)
    poolclass = QueuePool if pooled else NullPool
    if u.get_backend_name() == "sqlite":
        path = _sqlite_path(u)
        if path is None:
            raise ValueError(f"read-only access needs a SQLite file URL, got {safe_url(u)}")
        uri = path.resolve().as_uri() + "?mode=ro"

        def _creator() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, check_same_thread=False,
                                   timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)

        engine = create_engine("sqlite://", creator=_creator, poolclass=poolclass)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA query_only = ON")
            cur.close()
            dbapi_conn.set_authorizer(_sqlite_readonly_authorizer)

        return engine
    options = (f"-c default_transaction_read_only=on "
               f"-c statement_timeout={int(statement_timeout_s * 1000)}")
    return create_engine(u, poolclass=poolclass, pool_pre_ping=pooled,
                         connect_args={"options": options,
                                       "connect_timeout": PG_CONNECT_TIMEOUT_S})


def _sqlite_readonly_authorizer(action: int, arg1: str | None, _arg2: str | None,
                                _db: str | None, _trigger: str | None) -> int:
    # mode=ro protects the main file; ATTACH could still create other files, and
    # `PRAGMA query_only=OFF` would undo the second guard.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in (
            "query_only", "writable_schema", "journal_mode", "wal_checkpoint"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _find_inner_semicolon(sql: str, backslash_escapes: bool) -> bool:
    """Whether `sql` has a ';' outside quotes and comments (dollar quotes count as text)."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            i += 1
            while i < n:
                if backslash_escapes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == ch:
                    if i + 1 < n and sql[i + 1] == ch:  # doubled quote = escaped quote
                        i += 2
                        continue
                    break
                i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 1
        elif ch == ";":
            return True
        i += 1
    return False


def single_statement(sql: str) -> str:
    """`sql` without trailing semicolons; ReadOnlyQueryError if it holds several statements."""
    statement = sql.strip()
    while statement.endswith(";"):
        statement = statement[:-1].rstrip()
    if not statement:
        raise ReadOnlyQueryError("empty query")
    # Scan with and without backslash escapes: a string that one dialect ends and the other
    # does not can then never hide a second statement.
    if _find_inner_semicolon(statement, False) or _find_inner_semicolon(statement, True):
        raise ReadOnlyQueryError("only a single SQL statement is allowed (found ';' inside)")
    return statement


DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 10_000_000


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    cut: str | None = None  # why rows are missing or values shortened; None: complete


def run_readonly_query(url: str | URL | None, sql: str, limit: int = 1000, *,
                       timeout_s: float = 10.0) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Runs one statement on a read-only connection; returns (columns, at most `limit` rows).

    Writes fail in the database itself (read-only file / transaction); the transaction is
    always rolled back. Errors come back as ReadOnlyQueryError with the database's message.
    """
    result = bounded_query(url, sql, max_rows=limit, max_bytes=None, timeout_s=timeout_s)
    return result.columns, result.rows


def bounded_query(url: str | URL | None, sql: str, *, max_rows: int = DEFAULT_MAX_ROWS,
                  max_bytes: int | None = DEFAULT_MAX_BYTES,
                  timeout_s: float = 10.0) -> QueryResult:
    """`run_readonly_query` bounded in rows and in bytes of values (str / bytes counted by
    length, other values by their text): rows are fetched one at a time, the value that
    passes `max_bytes` is shortened and no row is fetched after it, so `SELECT randomblob(1e8)`
    costs one value, not a copy of each. `cut` says what was left out."""
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes} must be >= 1")
    statement = single_statement(sql)
    engine = readonly_engine(url, statement_timeout_s=timeout_s, pooled=False)
    try:
        with connect(engine, url) as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            try:
                if conn.dialect.name == "sqlite":
                    return _sqlite_query(raw, statement, max_rows, max_bytes,  # type: ignore[arg-type]
                                         timeout_s)
                return _pg_query(raw, statement, max_rows, max_bytes)
            except DBAPIError as exc:
                raise ReadOnlyQueryError(str(exc.orig).strip()) from exc
            except (sqlite3.Error, _psycopg_error()) as exc:
                raise ReadOnlyQueryError(str(exc).strip()) from exc
            finally:
                raw.rollback()
    finally:
        engine.dispose()


def _psycopg_error() -> type[Exception]:
    try:
        import psycopg
    except ImportError:  # PostgreSQL support is optional
        return sqlite3.Error
    return psycopg.Error


def _value_size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value)
    return len(str(value))


def _shorten(value: Any, n: int) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:n])
    return (value if isinstance(value, str) else str(value))[:n]


def _take(rows: Iterator[Any], max_rows: int,
          max_bytes: int | None) -> tuple[list[tuple[Any, ...]], str | None]:
    """At most `max_rows` rows of `rows` holding at most `max_bytes` of values, and why it
    stopped early (None: `rows` was exhausted)."""
    taken: list[tuple[Any, ...]] = []
    used = 0
    for row in rows:
        if len(taken) == max_rows:
            return taken, f"more than {max_rows} rows"
        values = list(row)
        for i, value in enumerate(values):
            size = _value_size(value)
            if max_bytes is not None and used + size > max_bytes:
                values[i], size = _shorten(value, max_bytes - used), max_bytes - used
            used += size
        taken.append(tuple(values))
        if max_bytes is not None and used >= max_bytes:
            return taken, f"values over {max_bytes} bytes (the last one shortened)"
    return taken, None


def _sqlite_query(raw: sqlite3.Connection, statement: str, max_rows: int,
                  max_bytes: int | None, timeout_s: float) -> QueryResult:
    # SQLite has no statement timeout: abort from the progress handler past the deadline.
    deadline = time.monotonic() + timeout_s
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    cur = raw.cursor()
    cur.execute(statement)  # sqlite3 itself refuses several statements
    rows, cut = _take(iter(cur), max_rows, max_bytes)  # rows are produced lazily
    columns = [d[0] for d in cur.description or ()]
    cur.close()
    return QueryResult(columns, rows, cut)


def _pg_query(raw: Any, statement: str, max_rows: int, max_bytes: int | None) -> QueryResult:
    # stream() fetches row by row (single-row mode over the extended protocol, which refuses
    # several statements), so a huge result never lands in memory before the limit applies.
    cur = raw.cursor()
    gen = cur.stream(statement)
    try:
        rows, cut = _take(gen, max_rows, max_bytes)
    finally:
        gen.close()
    columns = [d.name for d in cur.description or ()]
    cur.close()
    return QueryResult(columns, rows, cut)
