"""Without Ray: store write errors in the driver (`cluster.driver.StoreWrites`): which errors
are tried again, with what backoff and for how long, and what the error says at the end. A
whole run whose store stops taking writes: tests/cluster/test_faults_interrupt.py."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from cluster.driver import RetryPolicy, StoreWriteError, StoreWrites, open_sweep, transient
from store.repository import mark_running


def _wrapped(message: str, cls=OperationalError) -> DBAPIError:
    return cls("UPDATE units SET status=?", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize("err, expected", [
    (_wrapped("database is locked"), True),
    (_wrapped("attempt to write a readonly database"), True),
    (_wrapped("disk I/O error"), True),
    (_wrapped("database or disk is full"), True),
    (sqlite3.OperationalError("attempt to write a readonly database"), True),  # raised in an engine event
    (DBAPIError("SELECT 1", {}, Exception("server closed the connection unexpectedly"),
                connection_invalidated=True), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EFBIG, "File too large"), True),
    (_wrapped("no such table: units"), False),  # a retry cannot fix these
    (_wrapped("UNIQUE constraint failed", IntegrityError), False),
    (OSError(errno.EACCES, "Permission denied"), False),
])
def test_which_errors_are_tried_again(err, expected):
    assert transient(err) is expected


class FakeTime:
    def __init__(self):
        self.now, self.waits = 100.0, []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_a_refused_write_is_tried_again_with_backoff_and_stored(make_tiny_spec, store_paths, helpers):
    sweep = open_sweep(make_tiny_spec())
    refusals = []

    @event.listens_for(sweep.engine, "before_cursor_execute")
    def _refuse_twice(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE") and len(refusals) < 2:
            refusals.append(statement)
            raise sqlite3.OperationalError("attempt to write a readonly database")

    fake = FakeTime()
    store = StoreWrites(sweep.engine, sweep.blobs, url=sweep.url, blob_root=sweep.blob_root,
                        sleep=fake.sleep, clock=lambda: fake.now)
    key = sweep.todo[0].key
    store.call(mark_running, key, worker="w", device="cpu")
    assert len(refusals) == 2 and fake.waits == [0.5, 1.0]
    assert helpers.db_rows(store_paths[0], "SELECT status, attempts FROM units WHERE task = ? AND shard = ? "
                                           "AND config_id = ?", key.task, key.shard, key.config_id) == [("running", 1)]
    assert store.failed is None


def test_a_store_that_keeps_failing_gives_one_error_naming_it_password_masked():
    fake = FakeTime()
    url = "postgresql+psycopg://sweeper:s3cret@db.example:5432/results"
    store = StoreWrites(None, None, url=url, blob_root="/data/blobs", sleep=fake.sleep,  # type: ignore[arg-type]
                        clock=lambda: fake.now, retry=RetryPolicy(attempts=10, first_wait_s=1.0, budget_s=10.0))
    calls = []

    def lost_connection(engine, *args):
        calls.append(args)
        raise _wrapped("server closed the connection unexpectedly")

    with pytest.raises(StoreWriteError) as info:
        store.call(lost_connection, "unit")
    assert fake.waits == [1.0, 2.0, 4.0]  # the next wait (8 s) would end past the 10 s budget
    assert len(calls) == 4 and store.failed is info.value
    text = str(info.value)
    assert "s3cret" not in text and "sweeper:***@db.example:5432/results" in text
    assert "server closed the connection unexpectedly" in text and "4 attempt(s) in 7s" in text
    assert "\n" not in text
    # After that, cleanup writes are skipped instead of waiting on the broken store again.
    assert store.best_effort(lost_connection, "unit") is False and len(calls) == 4


def test_a_permanent_error_is_not_retried():
    fake = FakeTime()
    store = StoreWrites(None, None, url="sqlite:///x.db", blob_root="b", sleep=fake.sleep,  # type: ignore[arg-type]
                        clock=lambda: fake.now)

    def no_table(engine):
        raise _wrapped("no such table: units")

    with pytest.raises(StoreWriteError, match="1 attempt"):
        store.call(no_table)
    assert fake.waits == []
