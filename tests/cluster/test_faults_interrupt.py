"""Faults a local sweep meets, on `python -m cluster.sweep` as a user runs it (tiny model, a
local Ray, a subprocess): Ctrl-C and SIGTERM mid-sweep, SIGKILL of the process outside the
network namespace, a store that stops taking writes mid-run. Each asserts the exit status, the
one line printed, the store afterwards and that no process of the run's Ray is left; two of
them rerun the same command, which completes exactly what is missing.

Ray's processes are found two ways: the descendants of the started process, recorded while a
unit runs, and every process whose command line names the run's own Ray temp folder
($RAY_TMPDIR, a fresh short folder per test: Ray's socket paths must stay under 108 bytes)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cluster import isolation
from cluster.progress import QUIET_ENV

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow

UNITS = 8  # sweeps/tiny.yaml: 2 configs x 2 tasks x 2 shards
START_TIMEOUT_S = 300  # Ray's start and the first unit, on 2 busy cores
STOP_TIMEOUT_S = 120  # a signal to a clean exit: the store's updates and Ray's shutdown
NAMESPACES = isolation.available()


class SweepRun:
    """One `python -m cluster.sweep sweeps/tiny.yaml` on a store in `folder`, one actor (the
    units run one after the other: time to catch one running), output read by threads so the
    pipes never fill (pipes, not files: the store-failure test limits the driver's file sizes)."""

    def __init__(self, folder: Path, ray_tmp: str, *flags: str):
        self.db = folder / "sweep.db"
        env = {k: v for k, v in os.environ.items()
               if k not in (*QUIET_ENV, "RAY_ADDRESS", "STREAMKV_DB", "STREAMKV_BLOBS", isolation.MARKER,
                            isolation.PARENT)}
        env["RAY_TMPDIR"] = ray_tmp
        self.cmd = [sys.executable, "-m", "cluster.sweep", "sweeps/tiny.yaml", "--num-actors", "1",
                    "--db", f"sqlite:///{self.db}", "--blobs", str(folder / "blobs"), *flags]
        self.proc = subprocess.Popen(self.cmd, cwd=Path(__file__).resolve().parents[2], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.output = {"out": [], "err": []}
        self._readers = [threading.Thread(target=lambda s=stream, k=key: self.output[k].append(s.read()),
                                          daemon=True)
                         for key, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self._readers:
            reader.start()

    def query(self, sql: str, *params) -> list[tuple] | None:
        """Rows of `sql` on the run's store; None while it is not there yet."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None

    def statuses(self) -> dict[str, int]:
        return dict(self.query("SELECT status, count(*) FROM units GROUP BY status") or [])

    def wait_until(self, condition, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the sweep ended (rc {self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f}s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def wait_for_running_after_done(self) -> None:
        """Until a unit is stored and the next one runs (the moment to interrupt)."""
        def both() -> bool:
            counts = self.statuses()
            return counts.get("done", 0) >= 1 and counts.get("running", 0) >= 1

        self.wait_until(both, "unit running after one was stored")

    def processes(self) -> list:
        """The started process's descendants now (Ray's processes among them)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def driver(self):
        """The process running the sweep: the started one, or its child in the namespace
        (`unshare` and `sh` exec into the driver: one process)."""
        for proc in psutil.Process(self.proc.pid).children():
            if "cluster.sweep" in " ".join(proc.cmdline()):
                return proc
        return psutil.Process(self.proc.pid)

    def finish(self, timeout: float = STOP_TIMEOUT_S) -> int:
        rc = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return rc

    def text(self) -> str:
        return "".join(self.output["out"]) + "".join(self.output["err"])

    def stop(self) -> None:
        """Teardown after a failed assertion: the run and all it started, by pid."""
        procs = [psutil.Process(self.proc.pid)] + self.processes() if self.proc.poll() is None else []
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture
def sweep_folder(tmp_path, helpers):
    ray_tmp = tempfile.mkdtemp(prefix="skv-", dir="/tmp")
    runs: list[SweepRun] = []

    def start(*flags: str) -> SweepRun:
        runs.append(SweepRun(tmp_path, ray_tmp, *flags))
        return runs[-1]

    start.ray_tmp = ray_tmp
    yield start
    for run in runs:
        run.stop()
    helpers.stop_processes(lambda cmdline: ray_tmp in cmdline)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_processes(ray_tmp: str) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if ray_tmp in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def assert_ray_gone(before: list, ray_tmp: str) -> None:
    """Every process recorded before the signal has exited, and nothing names the run's Ray
    folder (the exit waited for Ray's shutdown: a short wait here is for the kernel only)."""
    _, alive = psutil.wait_procs(before, timeout=5)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert ray_processes(ray_tmp) == []


def assert_cancelled(run: SweepRun) -> dict[str, int]:
    assert run.query("SELECT status FROM sweeps") == [("cancelled",)]
    statuses = run.statuses()
    assert "running" not in statuses and statuses.get("done", 0) >= 1
    assert sum(statuses.values()) == UNITS
    return statuses


def interrupt_line(signame: str, released: int) -> str:
    return (f"streamkv sweep: interrupted ({signame}): {released} unit(s) back to pending; "
            "the sweep is cancelled; run the same command to resume")


def attempts(run: SweepRun) -> dict[tuple, tuple[str, int]]:
    return {(t, s, c): (st, a) for t, s, c, st, a in
            run.query("SELECT task, shard, config_id, status, attempts FROM units")}


def test_ctrl_c_cancels_and_the_rerun_runs_only_the_missing_units(sweep_folder):
    run = sweep_folder()
    run.wait_for_running_after_done()
    before = run.processes()
    assert ray_processes(sweep_folder.ray_tmp)  # the check below can see the run's Ray
    run.proc.send_signal(signal.SIGINT)  # to the process started (in the namespace: its parent)
    assert run.finish() == 130, run.text()[-3000:]
    assert "Traceback" not in run.text()
    assert_ray_gone(before, sweep_folder.ray_tmp)
    statuses = assert_cancelled(run)
    pending_before = sum(1 for st, a in attempts(run).values() if st == "pending" and a > 0)
    assert pending_before == 1  # one actor: the unit in flight, back to pending
    assert run.text().count(interrupt_line("SIGINT", pending_before)) == 1, run.text()[-3000:]

    first = attempts(run)
    rerun = sweep_folder()
    assert rerun.finish(START_TIMEOUT_S + 300) == 0, rerun.text()[-3000:]
    done_before = statuses["done"]
    assert f"{UNITS - done_before} succeeded, 0 failed, {done_before} skipped ({done_before} already done)" \
        in rerun.text()
    after = attempts(rerun)
    assert {s for s, _ in after.values()} == {"done"}
    for key, (status, tries) in first.items():  # done ones untouched, each other one ran once more
        assert after[key][1] == (tries if status == "done" else tries + 1), (key, first[key], after[key])
    assert rerun.query("SELECT count(DISTINCT unit_id) FROM unit_summaries") == [(UNITS,)]
    assert rerun.query("SELECT status FROM sweeps") == [("done",)]


def test_sigterm_without_the_namespace_cancels_the_same_way(sweep_folder):
    run = sweep_folder("--no-isolate")
    run.wait_for_running_after_done()
    before = run.processes()
    assert any("raylet" in p.name() for p in before)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.text()[-3000:]
    text = run.text()
    assert "Traceback" not in text and "SIGTERM received" not in text  # nor Ray's C++ stack dump
    assert text.count(interrupt_line("SIGTERM", 1)) == 1, text[-3000:]
    assert_ray_gone(before, sweep_folder.ray_tmp)
    assert_cancelled(run)


@pytest.mark.skipif(not NAMESPACES, reason="no user + network namespaces here (unshare -rn)")
def test_sigkill_of_the_outer_process_ends_the_driver_in_the_namespace(sweep_folder):
    run = sweep_folder()
    run.wait_for_running_after_done()
    driver = run.driver()
    assert driver.pid != run.proc.pid  # the sweep runs in the namespace's process
    before = run.processes()
    run.proc.kill()  # no chance to forward anything: the parent-death signal must do it
    assert run.proc.wait(10) == -signal.SIGKILL
    _, alive = psutil.wait_procs([driver], timeout=STOP_TIMEOUT_S)
    assert not alive, "the driver in the namespace outlived the process that started it"
    for reader in run._readers:  # the driver wrote to the same pipes; it is gone, so they close
        reader.join(30)
    assert run.text().count(interrupt_line("SIGTERM", 1)) == 1, run.text()[-3000:]
    assert "Traceback" not in run.text()
    assert_ray_gone(before, sweep_folder.ray_tmp)
    assert_cancelled(run)


def test_a_store_that_stops_taking_writes_exits_2_and_the_rerun_loses_nothing(sweep_folder):
    """The failure is real, not injected: once a unit is stored, the driver's file size limit
    (RLIMIT_FSIZE, set from here with prlimit; it binds root too, unlike file modes) drops to
    1 byte, so its next write to the SQLite file, its WAL or a blob fails (EFBIG: SQLite's
    "disk I/O error", OSError for a blob), as on a full or failing disk. The rerun is a new
    process: the store is writable again."""
    run = sweep_folder()
    run.wait_until(lambda: run.statuses().get("done", 0) >= 1, "unit stored")
    driver = run.driver()
    driver.rlimit(psutil.RLIMIT_FSIZE, (1, 1))
    before = run.processes()
    assert run.finish(STOP_TIMEOUT_S) == 2, run.text()[-3000:]
    text = run.text()
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("streamkv sweep: cannot write to the results store")]
    assert len(lines) == 1, text[-3000:]
    assert f"sqlite:///{run.db}" in lines[0] and "rerun the same command" in lines[0]
    assert "attempt(s)" in lines[0]  # retried before giving up
    assert_ray_gone(before, sweep_folder.ray_tmp)
    stored = run.statuses().get("done", 0)
    assert 1 <= stored < UNITS

    rerun = sweep_folder()
    assert rerun.finish(START_TIMEOUT_S + 300) == 0, rerun.text()[-3000:]
    assert f"{UNITS - stored} succeeded, 0 failed, {stored} skipped ({stored} already done)" in rerun.text()
    assert rerun.statuses() == {"done": UNITS}
    assert rerun.query("SELECT count(*), count(DISTINCT unit_id) FROM unit_summaries") == [(UNITS, UNITS)]
    assert rerun.query("SELECT status FROM sweeps") == [("done",)]
