"""Several processes (spawned) writing into one store: 8 concurrent writers, two writers racing
on the same units, drivers racing to claim the same units, and a writer killed (SIGKILL) inside
its transaction."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


import pytest
from sqlalchemy import func, select

from store import (
    BlobStore,
    UnitKey,
    UnitResult,
    claim_unit,
    completed_units,
    create_store_engine,
    mark_running,
    register_sweep,
    sweep_progress,
    write_unit_result,
)
from store import queries
from store.repository import blobs_t, results_t, samples_t, summaries_t, units_t
from tests.store.conftest import INT8, NONE, cid, streamkv_config

N_WRITERS = 8


# --- code run in the child processes ----------------------------------------------------------
def _wait_for_peers(barrier_dir: str, n: int, timeout_s: float = 90.0) -> None:
    """File barrier: all `n` writers start writing together (one file per process)."""
    Path(barrier_dir, str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(os.listdir(barrier_dir)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(barrier_dir))} of {n} writers started")
        time.sleep(0.005)


def _writer_task(url: str, blob_root: str, barrier_dir: str, n_peers: int,
                 register: dict[str, Any] | None, results: list[UnitResult]) -> int:
    _wait_for_peers(barrier_dir, n_peers)
    engine = create_store_engine(url)  # all writers migrate a fresh database at once
    try:
        blobs = BlobStore(blob_root)
        if register is not None:  # ...and register the same sweep at once
            register_sweep(engine, **register)
        for r in results:
            mark_running(engine, r.key, r.worker, r.device)
            write_unit_result(engine, blobs, r)
    finally:
        engine.dispose()
    return os.getpid()


def _claimer_task(url: str, barrier_dir: str, n_peers: int, driver: str,
                  keys: list[UnitKey]) -> list[UnitKey]:
    engine = create_store_engine(url)
    try:
        _wait_for_peers(barrier_dir, n_peers)
        return [k for k in keys
                if claim_unit(engine, k, driver, worker=driver, device="cpu").claimed]
    finally:
        engine.dispose()


def _write_then_hang(url: str, blob_root: str, result: UnitResult, signal_path: str) -> None:
    engine = create_store_engine(url)
    blobs = BlobStore(blob_root)

    def inside_transaction() -> None:  # rows written, not committed: wait to be killed
        Path(signal_path).write_text("in transaction")
        time.sleep(120)

    write_unit_result(engine, blobs, result, before_commit=inside_transaction)


# --- tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(max_workers=N_WRITERS, mp_context=mp.get_context("spawn")) as ex:
        yield ex


def _count(engine, table, **where: Any) -> int:
    stmt = select(func.count()).select_from(table)
    for name, value in where.items():
        stmt = stmt.where(table.c[name] == value)
    with engine.connect() as conn:
        return int(conn.scalar(stmt))


def _unit_id(engine, key: UnitKey) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(units_t.c.unit_id).where(
            units_t.c.sweep_id == key.sweep_id, units_t.c.model_id == key.model_id,
            units_t.c.config_id == key.config_id, units_t.c.task == key.task,
            units_t.c.shard == key.shard)))


def test_eight_writers_lose_nothing(db_url, tmp_path, pool, make_result):
    configs = [NONE, INT8, streamkv_config(4), streamkv_config(2)]
    by_id = {cid(c): c for c in configs}
    keys = [UnitKey("conc", m, cid(c), "t", f"{i}/4")
            for m in ("m1", "m2") for c in configs for i in range(4)]
    register = dict(sweep_id="conc", name="concurrency", spec={"units": len(keys)}, units=keys,
                    configs=configs)
    results = [make_result(k, by_id[k.config_id], tag=str(i), score=i / 64, n_samples=10,
                           minute=i) for i, k in enumerate(keys)]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    futures = [pool.submit(_writer_task, db_url, str(tmp_path / "blobs"), str(barrier),
                           N_WRITERS, register, results[w::N_WRITERS])
               for w in range(N_WRITERS)]
    pids = {f.result(timeout=180) for f in futures}
    assert len(pids) == N_WRITERS  # really 8 processes at once

    engine = create_store_engine(db_url)
    try:
        assert completed_units(engine, "conc") == set(keys)
        assert sweep_progress(engine, "conc")["done"] == len(keys)
        assert _count(engine, units_t) == len(keys)
        assert _count(engine, summaries_t) == len(keys)
        assert _count(engine, results_t) == 4 * len(keys)
        assert _count(engine, samples_t) == 10 * len(keys)
        assert _count(engine, blobs_t) == len(keys)
        frame = queries.result_frame(engine, sweep_id="conc")
        expected = {(r.key.model_id, r.key.config_id, r.key.shard): r.metrics["score"]
                    for r in results}
        assert {(m, c, s): v for m, c, s, v in frame[["model_id", "config_id", "shard", "score"]]
                .itertuples(index=False)} == expected
        assert queries.unreferenced_blobs(engine, BlobStore(tmp_path / "blobs")) == []
    finally:
        engine.dispose()


def test_two_writers_racing_on_the_same_units_leave_one_copy(db_url, tmp_path, pool,
                                                              make_result):
    cfg = streamkv_config(4)
    keys = [UnitKey("race", "m", cid(cfg), "t", f"{i}/6") for i in range(6)]
    engine = create_store_engine(db_url)
    try:
        register_sweep(engine, "race", "race", {}, keys, [cfg])
        versions = {"A": (0.25, 3), "B": (0.75, 5)}  # tag -> (score, n_samples)
        runs = {tag: [make_result(k, cfg, tag=tag, score=score, n_samples=n) for k in keys]
                for tag, (score, n) in versions.items()}
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        futures = [pool.submit(_writer_task, db_url, str(tmp_path / "blobs"), str(barrier), 2,
                               None, runs[tag]) for tag in versions]
        assert len({f.result(timeout=120) for f in futures}) == 2

        blobs = BlobStore(tmp_path / "blobs")
        for key in keys:
            uid = _unit_id(engine, key)
            assert _count(engine, summaries_t, unit_id=uid) == 1
            assert _count(engine, results_t, unit_id=uid) == 4
            assert _count(engine, blobs_t, unit_id=uid) == 1
            stored = queries.load_unit_result(engine, blobs, key)
            assert stored is not None
            # Whichever writer won, everything of the unit comes from that one writer.
            tag = "A" if stored.metrics["score"] == 0.25 else "B"
            score, n = versions[tag]
            assert stored.metrics["score"] == score and stored.n_samples == n
            assert len(stored.samples) == n
            assert {s.extra["tag"] for s in stored.samples} == {tag}
            assert set(stored.traces["outlier_channels"].column("tag").to_pylist()) == {tag}
            assert queries.unit_record(engine, key).attempts == 2
    finally:
        engine.dispose()


def test_drivers_racing_to_claim_the_same_units_claim_each_once(db_url, tmp_path, pool):
    cfg = INT8
    keys = [UnitKey("claims", "m", cid(cfg), "t", f"{i}/24") for i in range(24)]
    engine = create_store_engine(db_url)
    try:
        register_sweep(engine, "claims", "claims", {}, keys, [cfg])
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        n = 4
        futures = [pool.submit(_claimer_task, db_url, str(barrier), n, f"driver-{d}",
                               list(dict.fromkeys(keys[d::2] + keys)))  # each tries all, from elsewhere
                   for d in range(n)]
        won = [f.result(timeout=120) for f in futures]
        assert sorted(k for ks in won for k in ks) == sorted(keys)
        for key in keys:
            record = queries.unit_record(engine, key)
            assert record.attempts == 1 and record.status == "running"
            assert key in won[int(record.claimed_by.rsplit("-", 1)[1])]
    finally:
        engine.dispose()


def test_writer_killed_inside_its_transaction_leaves_no_partial_unit(db_url, tmp_path,
                                                                     make_result):
    cfg = INT8
    done_key, victim_key = (UnitKey("kill", "m", cid(cfg), "t", f"{i}/2") for i in range(2))
    engine = create_store_engine(db_url)
    blobs = BlobStore(tmp_path / "blobs")
    try:
        register_sweep(engine, "kill", "kill", {}, [done_key, victim_key], [cfg])
        write_unit_result(engine, blobs, make_result(done_key, cfg, tag="done"))
        mark_running(engine, victim_key, "victim", "cpu")
        victim = make_result(victim_key, cfg, tag="victim", n_samples=7)

        signal_path = tmp_path / "in_transaction"
        proc = mp.get_context("spawn").Process(
            target=_write_then_hang,
            args=(db_url, str(tmp_path / "blobs"), victim, str(signal_path)))
        proc.start()
        deadline = time.monotonic() + 90
        while not signal_path.exists():
            assert proc.is_alive(), f"writer exited early (exit code {proc.exitcode})"
            assert time.monotonic() < deadline, "writer never reached its transaction"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL

        # Nothing of the victim's transaction is visible; the other unit is intact.
        record = queries.unit_record(engine, victim_key)
        assert record.status == "running" and record.attempts == 1
        assert queries.load_unit_result(engine, blobs, victim_key) is None
        assert queries.trace_refs(engine, victim_key) == {}
        uid = _unit_id(engine, victim_key)
        for table in (summaries_t, results_t, samples_t, blobs_t):
            assert _count(engine, table, unit_id=uid) == 0
        assert completed_units(engine, "kill") == {done_key}
        assert queries.load_unit_result(engine, blobs, done_key).n_samples == 4
        # The blob written before the transaction is only an unreferenced file.
        orphans = queries.unreferenced_blobs(engine, blobs)
        assert len(orphans) == 1 and Path(blobs.path_of(orphans[0])).is_file()

        # A retry completes the unit and references that same content-addressed file.
        write_unit_result(engine, blobs, victim)
        assert completed_units(engine, "kill") == {done_key, victim_key}
        assert queries.trace_refs(engine, victim_key)["outlier_channels"].uri == orphans[0]
        assert queries.unreferenced_blobs(engine, blobs) == []
    finally:
        engine.dispose()
