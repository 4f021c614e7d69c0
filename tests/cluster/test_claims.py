"""Claims with real drivers (tiny-random-llama, local Ray): two `python -m cluster.sweep`
drivers on one store compute each unit once (SQLite and PostgreSQL), a driver renews its
leases while it waits on Ray, and which drivers of this host count as stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from cluster.driver import ModelScheduler, StoreWrites, Tally, driver_gone, new_driver_id
from cluster.progress import SweepProgress
from store import BlobStore, UnitKey, claim_unit, create_store_engine, queries, register_sweep
from tests.store.conftest import INT8, cid, db_url, pg_admin  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]


def _start_driver(spec: Path, db: str, blobs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cluster.sweep", str(spec), "--no-isolate", "--no-progress",
           "--num-actors", "1", "--db", db, "--blobs", str(blobs)]
    # Own session: a test that fails still ends the driver and its Ray processes (killpg).
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.mark.slow
def test_two_drivers_on_one_sweep_compute_each_unit_once(db_url, tmp_path):  # noqa: F811
    data = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text())
    data["shards"] = 4  # 16 units: enough work for both drivers to overlap
    spec = tmp_path / "race.yaml"
    spec.write_text(yaml.safe_dump(data))
    procs = [_start_driver(spec, db_url, tmp_path / "blobs") for _ in range(2)]
    try:
        outs = [p.communicate(timeout=540)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], outs
    engine = create_store_engine(db_url)
    try:
        with engine.connect() as conn:
            units = conn.execute(text("SELECT status, attempts, claimed_by FROM units")).all()
            n_results = conn.scalar(text("SELECT COUNT(*) FROM unit_summaries"))
            sweep_status = conn.execute(text("SELECT status FROM sweeps")).scalars().all()
    finally:
        engine.dispose()
    assert len(units) == 16 and n_results == 16
    assert {(status, attempts) for status, attempts, _ in units} == {("done", 1)}
    assert len({driver for *_, driver in units}) == 2, outs  # both drivers ran units
    assert sweep_status == ["done"]
    assert any("by another driver" in out for out in outs), outs


class _Unit:
    def __init__(self, key: UnitKey):
        self.key = key


@pytest.mark.slow
def test_leases_are_renewed_while_the_driver_waits(local_ray, tmp_path):
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    key = UnitKey("lease", "m", cid(INT8), "t", "0/1")
    engine = create_store_engine(url)

    @local_ray.remote(num_cpus=0, num_gpus=0)
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "ok"

    try:
        register_sweep(engine, "lease", "lease", {}, [key], [INT8])
        store = StoreWrites(engine, BlobStore(tmp_path / "blobs"), url=url, blob_root="")
        scheduler = ModelScheduler(pool=[], units=[], store=store, tally=Tally(),
                                   bar=SweepProgress(1, enabled=False), driver="D")
        scheduler.lease_s, scheduler.heartbeat_s = 1.0, 0.2
        assert claim_unit(engine, key, "D", worker="w", device="cpu", lease_s=1.0).claimed
        first = queries.unit_record(engine, key).lease_until
        ref = slow.remote(2.5)  # a unit running longer than its lease
        scheduler.inflight[ref] = (_Unit(key), 0, time.perf_counter())
        scheduler.tries[key] = 1
        assert scheduler.collect().status == "done"
        assert claim_unit(engine, key, "E", worker="w", device="cpu").holder == "D"  # still D's
        renewed = queries.unit_record(engine, key).lease_until
        assert (renewed - first).total_seconds() > 1.5
        assert scheduler._wait_for(slow.remote(2.0)) == "ok"  # an actor loading its model
        assert (queries.unit_record(engine, key).lease_until - renewed).total_seconds() > 1.0
    finally:
        engine.dispose()


def test_a_driver_of_this_host_counts_as_stopped_only_when_its_process_is_gone():
    me = new_driver_id()
    host, pid, _ = me.rsplit(":", 2)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    assert driver_gone(f"{host}:{exited.stdout.strip()}:00000000", me)
    assert driver_gone(f"{host}:{pid}:00000000", me)  # an earlier run of this process
    assert not driver_gone(me, me)
    assert not driver_gone(f"{host}:{os.getppid()}:00000000", me)  # alive
    assert not driver_gone(f"other-{host}:{exited.stdout.strip()}:00000000", me)  # its lease tells
    assert not driver_gone("no id of ours", me)
