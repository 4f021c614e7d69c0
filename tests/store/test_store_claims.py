"""Claims on units (`claim_unit`, leases, `renew_leases`) on SQLite and PostgreSQL: one winner
among concurrent claimers, no claim on a unit another live driver holds or on a finished one,
expired leases taken over, and a driver that lost a unit not recording over the new holder."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from store import (
    claim_unit,
    create_store_engine,
    live_claims,
    mark_failed,
    mark_running,
    mark_skipped,
    register_sweep,
    renew_leases,
    write_unit_result,
)
from store import queries
from store.schema import utcnow


@pytest.fixture
def keys(engine, small_sweep):
    register_sweep(engine, "sw", "claims", {}, small_sweep["keys"], small_sweep["configs"])
    return small_sweep["keys"]


def _claim(engine, key, driver, **kw):
    return claim_unit(engine, key, driver, worker=f"w-{driver}", device="cpu", **kw)


def test_a_unit_held_by_a_live_driver_is_not_claimed(engine, keys):
    before = utcnow()
    first = _claim(engine, keys[0], "A", lease_s=60)
    assert (first.claimed, first.status, first.holder, first.attempts) == (True, "running", "A", 1)
    assert first.took_over_from is None
    again = _claim(engine, keys[0], "A")  # A's claim retried: still one attempt
    assert (again.claimed, again.holder, again.attempts) == (True, "A", 1)
    second = _claim(engine, keys[0], "B")
    assert (second.claimed, second.status, second.holder, second.attempts) == (
        False, "running", "A", 1)
    record = queries.unit_record(engine, keys[0])
    assert (record.claimed_by, record.worker, record.attempts) == ("A", "w-A", 1)
    assert before + timedelta(seconds=59) < record.lease_until <= utcnow() + timedelta(seconds=60)
    assert live_claims(engine, "sw") == {keys[0]: "A"}


def test_an_expired_lease_is_taken_over_and_the_old_driver_records_nothing(engine, blobs, keys):
    _claim(engine, keys[0], "A", lease_s=0.2)
    time.sleep(0.3)  # A stalled past its lease
    assert live_claims(engine, "sw") == {}
    taken = _claim(engine, keys[0], "B")
    assert (taken.claimed, taken.holder, taken.attempts, taken.took_over_from) == (
        True, "B", 2, "A")
    # A wakes up: its renewal and its failure no longer touch B's unit.
    assert renew_leases(engine, "A") == 0
    assert mark_failed(engine, keys[0], "A's late error", final=True, driver="A") is False
    assert mark_skipped(engine, keys[0], "A's late skip", driver="A") is False
    record = queries.unit_record(engine, keys[0])
    assert (record.status, record.claimed_by, record.error) == ("running", "B", None)
    assert mark_failed(engine, keys[0], "B's error", final=False, driver="B") is True
    record = queries.unit_record(engine, keys[0])
    assert (record.status, record.lease_until) == ("pending", None)  # released


def test_a_finished_unit_is_never_reclaimed(engine, blobs, keys, make_result, small_sweep):
    done, failed, skipped, _ = keys
    _claim(engine, done, "A")
    write_unit_result(engine, blobs, make_result(done, small_sweep["configs"][0]))
    record = queries.unit_record(engine, done)
    assert (record.status, record.claimed_by, record.lease_until) == ("done", "A", None)
    for key in (failed, skipped):
        _claim(engine, key, "A")
    mark_failed(engine, failed, "boom", final=True, driver="A")
    mark_skipped(engine, skipped, "backend missing", driver="A")
    began = utcnow() - timedelta(seconds=60)  # a driver that began before they finished
    for key, status in ((done, "done"), (failed, "failed"), (skipped, "skipped")):
        for since in (None, began):
            claim = _claim(engine, key, "B", retry_finished_before=since)
            assert (claim.claimed, claim.status, claim.holder) == (False, status, "A"), since
    # A later run (begun after they finished) retries failed and skipped units, never done ones.
    later = utcnow() + timedelta(seconds=1)
    assert [_claim(engine, k, "C", retry_finished_before=later).claimed
            for k in (done, failed, skipped)] == [False, True, True]
    assert queries.unit_record(engine, done).attempts == 1


def test_a_unit_of_a_driver_known_to_be_gone_is_taken_over_at_once(engine, keys):
    _claim(engine, keys[0], "A", lease_s=600)
    assert not _claim(engine, keys[0], "B", gone={"C"}).claimed
    taken = _claim(engine, keys[0], "B", gone={"A"})
    assert (taken.claimed, taken.took_over_from, taken.attempts) == (True, "A", 2)
    assert not _claim(engine, keys[0], "C", gone={"A"}).claimed  # B's now, and B is alive


def test_a_running_unit_without_lease_counts_as_abandoned(engine, keys):
    # Left `running` by a driver from before claims (or by mark_running): nobody renews it.
    mark_running(engine, keys[1], "old-driver", "cpu")
    assert live_claims(engine, "sw") == {}
    claim = _claim(engine, keys[1], "B")
    assert claim.claimed and claim.attempts == 2


def test_renewal_extends_only_the_drivers_running_units(engine, blobs, keys, make_result,
                                                        small_sweep):
    for key in keys[:3]:
        _claim(engine, key, "A", lease_s=5)
    _claim(engine, keys[3], "B", lease_s=5)
    write_unit_result(engine, blobs, make_result(keys[2], small_sweep["configs"][1]))
    assert renew_leases(engine, "A", lease_s=600) == 2
    leases = {k: queries.unit_record(engine, k).lease_until for k in keys}
    soon = utcnow() + timedelta(seconds=5)
    assert leases[keys[0]] > soon and leases[keys[1]] > soon
    assert leases[keys[2]] is None and leases[keys[3]] <= soon


def test_concurrent_claims_from_threads_have_one_winner(db_url, keys):
    """Eight drivers (threads, an engine each) claim every unit at once."""
    n = 8
    barrier = threading.Barrier(n, timeout=60)
    won: dict[str, list] = {}

    def driver(name: str) -> None:
        engine = create_store_engine(db_url)
        try:
            barrier.wait()
            won[name] = [k for k in keys if _claim(engine, k, name).claimed]
        finally:
            engine.dispose()

    threads = [threading.Thread(target=driver, args=(f"d{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(won) == n, "a driver thread failed"
    winners = [k for ks in won.values() for k in ks]
    assert sorted(winners) == sorted(keys)  # each unit claimed exactly once
    engine = create_store_engine(db_url)
    try:
        assert {queries.unit_record(engine, k).attempts for k in keys} == {1}
    finally:
        engine.dispose()


def test_claim_checks_the_driver_id(engine, keys):
    with pytest.raises(ValueError, match="driver id"):
        _claim(engine, keys[0], "")
    with pytest.raises(ValueError, match="driver id"):
        _claim(engine, keys[0], "x" * 129)
