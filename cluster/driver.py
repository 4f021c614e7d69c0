"""`run_sweep(spec)`: runs a sweep's units on long-lived Ray actors and stores the results.

Flow: `plan(spec)` -> `register_sweep` (idempotent) -> units already done in the store are
not scheduled (counted as skipped) -> per model, `resources.num_actors` actors
(`SweepWorker`, a `workers.actor.UnitWorker` wrapped in `ray.remote`) each load the model once
-> a dynamic queue: `ray.wait` on the in-flight units, and an actor that finishes one gets the
next -> `finish_sweep` with done (or failed when a unit failed).

Who writes results (`resources.write_results`):
- "driver" (default): the actor returns the `UnitResult` and the driver writes it. SQLite has a
  single writer anyway, the store only has to be reachable from the driver (a laptop's SQLite
  file, a port-forwarded PostgreSQL), and the driver sees the write fail or succeed in order
  with `claim_unit`/`mark_failed`. A unit's result is small (metrics, per-sample rows and a
  few Parquet tables), so shipping it through the object store costs little.
- "actor": each actor writes its own result (`store.write_unit_result`) and returns a brief.
  Use it with PostgreSQL and many actors: writes (and the blob uploads to s3) run in
  parallel instead of queueing in the driver. The store's URL and blob root must then be
  reachable from every node.
Either way `write_unit_result` is idempotent (one transaction replaces the unit's rows), so a
unit retried after its actor died is never stored twice.

Failures:
- system (the actor or its node died): Ray restarts the actor (`max_restarts`) and retries the
  in-flight unit on it (`max_task_retries`); when Ray gives up, the driver replaces the actor and
  the unit counts one attempt.
- application (an exception in the unit): retried until `max_attempts` attempts of this run,
  then `mark_failed(final=True)` with the error text; the sweep goes on. An error that another
  attempt would only repeat (bad data, settings that do not fit the model: a `ValueError`, e.g.
  `workers.runner.SampleError` or `streamkv.InvalidSettings`, or a missing file) fails its unit
  at once, without using up `max_attempts`.
- `MethodUnavailable` (the method cannot run here, e.g. an HF backend that is not installed):
  `mark_skipped` with the reason.
A claim (`claim_unit`: attempts + 1, this driver's id and a lease in the store) precedes every
attempt.

Claims: each run has a driver id (`<host>:<pid>:<random>`). A unit is claimed just before it is
submitted, with a conditional update that only takes pending units, running ones whose lease has
passed (their driver died) and failed / skipped ones finished before this run began (a rerun
retries them); so two drivers on one sweep split its units, each computed once. A unit held by
another live driver is skipped and counted ("N unit(s) are being run by another driver (<id>);
skipped"); one finished by another meanwhile is never reclaimed. A driver of this host whose
process is gone (killed, or stopped by a failing store) has its units taken over at once
(`driver_gone`), without waiting for its leases. While units run, the driver
renews its leases (`renew_leases`, one UPDATE at most every `HEARTBEAT_S` seconds, between the
`ray.wait` calls of the loop and of a model's loading); an attempt's end releases its lease.
Failures and releases are recorded only while this driver still holds the unit. The sweep is
marked done / failed only by the driver that finds no unit left: none pending, none running
elsewhere.

Interruption (`cluster/interrupts.py`): during `run_sweep` SIGTERM is handled like Ctrl-C
(SIGINT). The first signal stops the run; repeated ones (a second Ctrl-C, the copy forwarded
by the namespace's parent) are ignored so the cleanup finishes. The scheduling loop defers a
signal to its waits (`ray.wait`, a model's loading), so a unit is never half claimed or half
recorded. Then: the pool's actors are killed, the units claimed and not recorded go back to
pending, the sweep is marked cancelled (before Ray's shutdown, which takes seconds), Ray is
shut down, and when this call started it, every process it started (gcs, raylet, agents,
workers) is waited for and killed after `REAP_TIMEOUT_S`; `run_sweep` raises
`interrupts.SweepCancelled` (a KeyboardInterrupt) whose text is the line the CLI prints, exit
130 / 143. `ray.init` installs SIGTERM handlers of its own (one exits at once, Ray's C++ core's
prints a stack and later aborts): ours is kept during and restored after it. `stop_after` (a
test hook) stops like an interruption but leaves the sweep running.

Store errors (`StoreWrites`): every read and write of the driver goes through `StoreWrites.call`.
A transient error (`transient`: SQLAlchemy OperationalError, a DBAPIError whose connection was
invalidated, sqlite "database is locked" / "readonly" / "disk I/O error" / "disk is full", an
OSError of a full, read-only or failing disk) is tried again: `RetryPolicy`, by default 5
attempts with waits of 0.5, 1, 2, 4 s, all within 20 s of the first failure. Meanwhile the
finished result stays in the driver's memory (no spool file: a result that cannot be written
is computed again by the next run, which only runs units not `done`). When the store keeps
failing, or fails with a permanent error, `StoreWriteError` (a `store.StoreError`) names the
store (password masked) and the error; the cleanup then makes no more writes (each could wait
as long again), so units it could not put back stay `running` and run again next time. The CLI
prints that one line and exits 2.

The parts, in the order of a run: `open_sweep` (the store, the registered sweep, what is left
to do), `ActorPool` (one model's actors), `ModelScheduler` (submitting units to idle actors,
collecting the next finished attempt with `ray.wait`), `AttemptRecorder` (what one finished
attempt means: done / skipped / retry / failed, with its store writes and its line),
`release_inflight` (interruption), `summarize`. `verbose=False` (`streamkv sweep` without
--verbose) starts the actors with `progress.quiet_env()`, and Ray with its logging at ERROR and
its C++ start-up notices held back (`ray_notices_hidden`).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, OperationalError

from store import BlobStore, StoreError, create_store_engine
from store.entities import Claim, UnitKey
from store.repository import (
    DEFAULT_LEASE_S,
    claim_unit,
    completed_units,
    finish_sweep,
    live_claims,
    mark_failed,
    mark_skipped,
    register_sweep,
    renew_leases,
    sweep_progress,
    utcnow,
    write_unit_result,
)
from workers.actor import UnitWorker
from workers.units import WorkUnit

from . import interrupts
from .plan import by_model, plan
from .progress import SweepProgress, first_line, quiet_env, results_table, unit_line
from .spec import SweepSpec

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# A claim's lease runs DEFAULT_LEASE_S (120 s) from its last renewal, renewed every HEARTBEAT_S
# (one UPDATE): another driver takes a unit over only after its driver stalled for ~2 minutes.
HEARTBEAT_S = 10.0


class ClusterConnectionError(RuntimeError):
    """The Ray cluster cannot be reached; the message says what to do."""


@dataclass(frozen=True)
class SweepSummary:
    sweep_id: str
    succeeded: int  # units run and stored by this call
    failed: int  # units that failed after their attempts
    skipped: int  # units already done in the store + units that cannot run here (HF backend)
    total: int  # units of the sweep
    previously_done: int = 0  # part of `skipped`
    attempts: int = 0  # attempts started by this call
    interrupted: bool = False
    db_url: str = ""
    blob_root: str = ""
    seconds: float = 0.0
    failures: tuple[tuple[UnitKey, str], ...] = ()
    # units left to other drivers: (driver id, how many); part of `skipped`
    elsewhere: tuple[tuple[str, int], ...] = ()
    finished_elsewhere: int = 0  # units another driver finished during this run; in `skipped`
    taken_over: tuple[tuple[str, int], ...] = ()  # units claimed from stopped drivers


@dataclass(frozen=True)
class UnitEvent:
    """What a test hook (`on_unit_done`) sees after each unit attempt finishes."""

    key: UnitKey
    status: str  # done | failed | skipped | retry
    actor: Any  # the actor that ran it (already given its next unit, if any)
    actor_index: int
    finished: int  # units finished (done/failed/skipped) so far in this call


# --- the actor -------------------------------------------------------------------------------------
class SweepWorker(UnitWorker):
    """`UnitWorker` plus what the driver needs: a cheap description and actor-side writes."""

    def __init__(self, model_name: str, dtype: str = "float32", device: str | None = None,
                 store_url: str | None = None, blob_root: str | None = None):
        super().__init__(model_name, dtype, device)
        self._store_url, self._blob_root = store_url, blob_root
        self._engine = self._blobs = None

    def describe(self) -> dict[str, Any]:
        from workers.environment import device_name

        return {"worker": f"{socket.gethostname()}:{os.getpid()}",
                "device": device_name(self.loaded.model.device),
                "load_seconds": self.loaded.load_seconds}

    def run_unit(self, unit: WorkUnit):
        result = self.run(unit)
        if self._store_url is None:
            return result
        if self._engine is None:
            self._engine = create_store_engine(self._store_url)
            self._blobs = BlobStore(self._blob_root)
        write_unit_result(self._engine, self._blobs, result)
        return {"stored": True, "n_samples": result.n_samples, "metrics": dict(result.metrics)}


def _absolute_store(url: str, blobs: str) -> tuple[str, str]:
    """Relative SQLite/blob paths made absolute, so actors with another cwd find them."""
    from store.paths import absolute_store

    return absolute_store(url, blobs)


# --- Ray -------------------------------------------------------------------------------------------
def connect_ray(address: str | None = None, *, verbose: bool = True) -> bool:
    """Joins `address` ($RAY_ADDRESS, as under `ray job submit`) or starts Ray in this process
    with every listener on 127.0.0.1. Returns whether this call started/joined Ray.
    `verbose=False`: Ray's own warnings (start-up, token authentication) are not printed."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    hint = ("Start one (`ray start --head --node-ip-address 127.0.0.1`, or `ray up ray_cluster.yaml` "
            "and `ray attach`), pass its GCS address (host:6379; for the dashboard's http:// URL use "
            "`ray job submit`), or leave out --address to run on this machine.")
    if address and address.startswith(("http://", "https://")):
        raise ClusterConnectionError(f"--address {address!r} is a dashboard URL: submit with `ray job submit "
                                     f"--address {address} --working-dir . -- python -m cluster.sweep SPEC`, "
                                     "or give the GCS address host:6379. " + hint)
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise ClusterConnectionError(f"cannot reach the Ray cluster at {address!r}: {err}. " + hint) from None
    # Actors' output still reaches the driver (log_to_driver stays on) so that what they print
    # on a crash is seen; without --verbose they are started quiet instead (`quiet_env`).
    level = "WARNING" if verbose else "ERROR"
    with nullcontext() if verbose else ray_notices_hidden():
        if address:
            try:
                ray.init(address=address, logging_level=level)
            except Exception as err:  # noqa: BLE001 (ConnectionError, TimeoutError, RuntimeError, ValueError)
                raise ClusterConnectionError(f"cannot reach the Ray cluster at {address!r}: {err}\n" + hint) from None
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=level,
                     configure_logging=True)
    return True


@contextmanager
def ray_session(address: str | None, *, verbose: bool, shutdown: bool) -> Iterator[bool]:
    """`connect_ray` for the block (yields whether it started or joined Ray). At the end, with
    `shutdown`, a Ray this call started (also when a signal cut its start short) is shut down,
    and every process it started (gcs, raylet, agents, workers) is waited for, killed after
    `REAP_TIMEOUT_S`: nothing of this run's Ray outlives it."""
    import ray

    already = ray.is_initialized()
    before = set() if already else _descendant_pids()
    try:
        with _sigterm_handler_kept():
            joined = connect_ray(address, verbose=verbose)
        interrupts.rearm()
        yield joined
    finally:
        if shutdown and not already:
            with interrupts.deferred():  # a signal now must not cut the shutdown short
                processes = _descendants(exclude=before)
                ray.shutdown(wait_for_processes=True)
                reap(processes)


REAP_TIMEOUT_S = 15.0


def _descendant_pids() -> set[int]:
    return {p.pid for p in _descendants()}


def _descendants(exclude: Collection[int] = ()) -> list[Any]:
    try:
        import psutil  # shipped with Ray (ray/thirdparty_files)

        return [p for p in psutil.Process().children(recursive=True) if p.pid not in exclude]
    except Exception:  # noqa: BLE001 (no psutil, or a process gone meanwhile: nothing to reap)
        return []


def reap(processes: list[Any], timeout: float = REAP_TIMEOUT_S) -> list[int]:
    """Waits for `processes` (psutil) to exit, kills those left after `timeout`; returns their
    pids. Taken before `ray.shutdown`: Ray's workers and agents, children of the raylet, are
    orphaned once it is gone and no longer found among this process's children."""
    if not processes:
        return []
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


@contextmanager
def _sigterm_handler_kept() -> Iterator[None]:
    """While `ray.init` runs, its `set_sigterm_handler` calls (a handler that exits at once, one
    that kills Ray's processes and exits) are ignored when `interrupts` handles SIGTERM: ours
    does the same cleanup as for Ctrl-C (`ray_session` shuts Ray down). Only a private Ray
    helper is patched, for this while; without it `interrupts.rearm` after the start still
    restores ours."""
    try:
        from ray._private import utils as ray_utils
    except ImportError:
        yield
        return
    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None or not interrupts.active():
        yield
        return
    ray_utils.set_sigterm_handler = lambda _handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


# An info (I) or warning (W) line of Ray's C++ core: "[2026-01-02 10:00:00,123 W 411 411] file.cc:330: ..."
_RAY_NOTICE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:.,]+ [IW] \d+ \d+\] ")


def drop_ray_notices(text: str) -> str:
    """`text` without the lines of Ray's C++ info and warning notices (errors stay)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _RAY_NOTICE.match(line))


@contextmanager
def ray_notices_hidden() -> Iterator[None]:
    """While `ray.init` starts Ray's core in this process, its C++ code writes notices straight to
    file descriptor 2 before any log level applies (e.g. `network_util.cc: Failed to determine
    local IP via external connectivity`, every time in the private network namespace). So fd 2
    goes to a file for that while, and what was written comes out after: without those notices
    when the block succeeded, all of it when it raised (the notices may say why, e.g. a wrong
    auth token)."""
    # Ray's processes write to their own log files, not to an inherited fd 2, unless
    # RAY_LOG_TO_STDERR=1 asks for the opposite: then nothing is held back.
    if os.environ.get("RAY_LOG_TO_STDERR") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    succeeded = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            succeeded = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            kept = drop_ray_notices(text) if succeeded else text
            if kept:
                os.write(2, kept.encode())


# --- the store -------------------------------------------------------------------------------------
class StoreWriteError(StoreError):
    """The store kept refusing a write (or refused it for good); the message names it (password
    masked) and says what was lost: nothing the rerun does not compute again."""

    def __init__(self, where: str, error: BaseException, attempts: int, seconds: float):
        super().__init__(where)
        self.where, self.error, self.attempts, self.seconds = where, error, attempts, seconds
        self.unstored: int | None = None  # finished or running units not stored (set by run_sweep)

    def __str__(self) -> str:
        text = (f"cannot write to the results store {self.where}: {_error_line(self.error)} "
                f"(after {self.attempts} attempt(s) in {self.seconds:.0f}s)")
        if self.unstored is not None:
            text += (f"; the sweep stopped, {self.unstored} unit(s) in flight were not stored: "
                     "rerun the same command once the store is writable (stored units are kept)")
        return text


@dataclass(frozen=True)
class RetryPolicy:
    """How often a store write is tried on a transient error: up to `attempts` times, waiting
    `first_wait_s`, then twice as long each time, as long as the waits end within `budget_s`
    of the first failure (SQLite's own busy timeout, 30 s, comes on top of one attempt)."""

    attempts: int = 5
    first_wait_s: float = 0.5
    budget_s: float = 20.0


# errno values of a full, failing or read-only disk: worth another try once it recovers.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EFBIG, errno.EDQUOT, errno.EAGAIN,
                     errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}
# OperationalErrors that a retry cannot fix (a schema problem, a bug).
_PERMANENT = re.compile(r"no such (table|column)|syntax error", re.IGNORECASE)


def transient(err: BaseException) -> bool:
    """Whether another try may succeed: a lost connection, a locked, read-only, full or failing
    database (sqlite "database is locked" / "readonly" / "disk I/O error"), a full disk."""
    if isinstance(err, DBAPIError):
        if err.connection_invalidated:
            return True
        if isinstance(err, OperationalError):
            return not _PERMANENT.search(str(err.orig))
        return False  # IntegrityError, ProgrammingError, ...: a bug, not the disk or the network
    if isinstance(err, OSError):
        return err.errno in _TRANSIENT_ERRNOS
    # sqlite3's or psycopg's own OperationalError (not wrapped when raised in an engine event)
    return type(err).__name__ == "OperationalError" and not _PERMANENT.search(str(err))


def _error_line(err: BaseException) -> str:
    inner = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    return f"{type(inner).__name__}: {first_line(str(inner))}"


class StoreWrites:
    """The driver's reads and writes of the store, each tried again on transient errors
    (`RetryPolicy`); `StoreWriteError` when it keeps failing. `best_effort` is for cleanup:
    one try, no exception, and none at all once the store failed (each could wait long)."""

    def __init__(self, engine: Engine, blobs: BlobStore, *, url: str, blob_root: str,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.engine, self.blobs, self.url, self.blob_root = engine, blobs, url, blob_root
        self.retry, self.sleep, self.clock = retry or RetryPolicy(), sleep, clock
        self.failed: StoreWriteError | None = None

    def call(self, fn: Callable[..., Any], *args: Any, blobs: bool = False, **kwargs: Any) -> Any:
        """`fn(engine, *args)` (`fn(engine, blobs, *args)` with `blobs`), retried."""
        lead = (self.engine, self.blobs) if blobs else (self.engine,)
        first_failure: float | None = None
        for attempt in itertools.count(1):
            try:
                return fn(*lead, *args, **kwargs)
            except (DBAPIError, OSError, sqlite3.Error) as err:
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                wait = self.retry.first_wait_s * 2 ** (attempt - 1)
                if (not transient(err) or attempt >= self.retry.attempts
                        or now + wait - first_failure > self.retry.budget_s):
                    where = _safe(self.url) + (f" (blobs {self.blob_root})" if blobs else "")
                    self.failed = StoreWriteError(where, err, attempt, now - first_failure)
                    raise self.failed from err
                with interrupts.interruptible():  # a Ctrl-C need not wait out the backoff
                    self.sleep(wait)
        raise AssertionError("unreachable")

    def best_effort(self, fn: Callable[..., Any], *args: Any) -> bool:
        if self.failed is not None:
            return False
        try:
            fn(self.engine, *args)
            return True
        except (DBAPIError, OSError, sqlite3.Error) as err:
            self.failed = StoreWriteError(_safe(self.url), err, 1, 0.0)
            return False


@dataclass(frozen=True)
class OpenSweep:
    """A sweep registered in the store: its units, and those not done yet (`todo`)."""

    sweep_id: str
    engine: Engine
    blobs: BlobStore
    url: str
    blob_root: str
    units: list[WorkUnit]
    todo: list[WorkUnit]
    store: StoreWrites
    driver_id: str = ""
    started_at: datetime | None = None  # failed / skipped units finished before are retried
    held: dict[UnitKey, str] = field(default_factory=dict)  # run by other drivers at the start
    gone: frozenset[str] = frozenset()  # drivers whose units are taken over (`driver_gone`)

    @property
    def previously_done(self) -> int:
        return len(self.units) - len(self.todo) - len(self.held)


def new_driver_id() -> str:
    """This run's id in the store's claims: readable (host, pid) and unique (random)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def driver_gone(driver: str, me: str) -> bool:
    """Whether `driver` (a `new_driver_id`) is a stopped run of this host: its process no longer
    exists, or it is an earlier run of this process (`run_sweep` has returned). A driver of
    another host is never judged here: its lease tells."""
    parts = driver.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname()[:100] or not parts[1].isdigit():
        return False
    if driver == me:
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def open_store(url: str) -> Engine:
    try:
        return create_store_engine(url)  # StoreConnectionError says what to do
    except OSError as err:  # e.g. the SQLite file's folder cannot be created
        from store.db import StoreConnectionError

        raise StoreConnectionError(f"cannot open the results database {_safe(url)}: {err}") from None


def open_sweep(spec: SweepSpec, *, retry: RetryPolicy | None = None) -> OpenSweep:
    """Registers the sweep and its units (idempotent) and reads which are done already."""
    units = plan(spec)
    sweep_id = spec.resolved_sweep_id
    url, blob_root = spec.store.resolved_url, spec.store.resolved_blobs
    blobs = BlobStore(blob_root)  # first: a refused blob root leaves no database behind
    started_at = utcnow()
    engine = open_store(url)
    store = StoreWrites(engine, blobs, url=url, blob_root=str(blob_root), retry=retry)
    configs = list({u.key.config_id: u.config.to_dict() for u in units}.values())
    store.call(register_sweep, sweep_id, spec.name, spec.to_dict(), [u.key for u in units], configs,
               created_by=f"{os.environ.get('USER', '?')}@{socket.gethostname()}")
    done_keys = store.call(completed_units, sweep_id)
    me, held = new_driver_id(), store.call(live_claims, sweep_id)
    gone = frozenset(d for d in set(held.values()) if driver_gone(d, me))
    held = {k: d for k, d in held.items() if d not in gone}  # not even an actor is started for those
    return OpenSweep(sweep_id=sweep_id, engine=engine, blobs=blobs, url=url, blob_root=blob_root,
                     units=units, todo=[u for u in units if u.key not in done_keys and u.key not in held],
                     store=store, driver_id=me, started_at=started_at, held=held, gone=gone)


def release_inflight(store: StoreWrites, units: list[WorkUnit], driver: str | None = None) -> int:
    """Units whose attempt was still running when the driver stopped: back to pending (best
    effort: a unit left `running` runs again on the next run anyway; with `driver`, only those
    it still holds). Returns how many."""
    reason = "interrupted: the driver stopped before this unit finished"
    release = partial(mark_failed, driver=driver)
    return sum(store.best_effort(release, unit.key, reason, False) for unit in units)


# --- one model's actors ----------------------------------------------------------------------------
class ActorPool:
    """The `SweepWorker` actors of one model. An actor Ray gave up on is replaced in place, so
    an index names the same slot for the whole run."""

    LOAD_REPLACEMENTS = 2  # fresh actors tried after one died loading its model

    def __init__(self, model: str, remote_cls: Any, args: tuple[Any, ...], size: int):
        self.model, self._remote_cls, self._args = model, remote_cls, args
        self.actors = [self._new() for _ in range(size)]
        self._described: dict[int, dict[str, Any]] = {}

    def _new(self) -> Any:
        return self._remote_cls.remote(*self._args)

    def __len__(self) -> int:
        return len(self.actors)

    def describe(self, idx: int, wait: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """worker and device of actor `idx` (cached); the first call waits for its model
        (with `wait(ref)`, default `ray.get`)."""
        import ray
        from ray.exceptions import RayActorError

        # The model itself was checked before the run (cluster/checks.py), so an actor that dies
        # while loading it most likely lost its process (OOM kill, a node going away) after
        # Ray's own restarts: start a fresh one, as for a unit, a bounded number of times.
        for replaced in range(self.LOAD_REPLACEMENTS + 1):
            if idx in self._described:
                break
            try:
                self._described[idx] = (wait or ray.get)(self.actors[idx].describe.remote())
            except RayActorError as err:
                if replaced == self.LOAD_REPLACEMENTS:
                    raise RuntimeError(f"the worker actor for model {self.model!r} could not start "
                                       f"({replaced + 1} actors tried): {err}") from err
                self.replace(idx)
        return self._described[idx]

    def replace(self, idx: int) -> None:
        import ray

        ray.kill(self.actors[idx], no_restart=True)
        self.actors[idx] = self._new()
        self._described.pop(idx, None)

    def kill_all(self) -> None:
        """Cleanup: never raises (Ray may be going down already, e.g. after a signal)."""
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S112 (the actor or Ray is gone: nothing to kill)
                continue


def start_pool(spec: SweepSpec, model: str, n_units: int, store_args: tuple[str | None, str | None],
               *, verbose: bool) -> ActorPool:
    """`resources.num_actors` actors (at most one per unit) holding `model`."""
    import ray

    gpus = spec.resources.num_gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    options: dict[str, Any] = dict(
        num_gpus=gpus, num_cpus=spec.resources.num_cpus_per_actor,
        max_restarts=spec.resources.max_restarts, max_task_retries=spec.resources.max_task_retries)
    if not verbose:  # merged with the job's runtime_env (working_dir, ...) by Ray
        options["runtime_env"] = {"env_vars": quiet_env()}
    remote_cls = ray.remote(SweepWorker).options(**options)
    device = None if spec.device == "auto" else spec.device
    size = max(1, min(spec.resources.num_actors, n_units))
    return ActorPool(model, remote_cls, (model, spec.dtype, device, *store_args), size)


# --- scheduling ------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What this call did, over all models."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    attempts: int = 0  # attempts started
    failures: list[tuple[UnitKey, str]] = field(default_factory=list)
    elsewhere: Counter[str] = field(default_factory=Counter)  # driver -> units it runs instead
    finished_elsewhere: int = 0  # units another driver finished after this run began
    taken_over: Counter[str] = field(default_factory=Counter)  # driver -> units claimed from it
    stopped_inflight: int = 0  # units claimed but not recorded when the run stopped
    released: int = 0  # of those, put back to pending
    final_status: str = ""  # the sweep's status as this call stored it

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped


@dataclass(frozen=True)
class Attempt:
    """One finished attempt, as `ModelScheduler.collect` got it back from Ray."""

    unit: WorkUnit
    actor_index: int
    number: int  # 1 for the unit's first attempt in this call
    started: float  # time.perf_counter() at submission
    status: str  # done | skipped | error
    result: Any = None  # the UnitResult (driver writes) or the actor's brief (actor writes)
    error: str = ""
    deterministic: bool = False  # an error another attempt would only repeat (see the docstring)


class ModelScheduler:
    """A dynamic queue over one model's pool: an idle actor gets the next unit it can claim,
    `collect` waits (`ray.wait`) for whichever attempt finishes first, renewing the leases of
    the units in flight every `heartbeat_s` seconds meanwhile. The driver's loop runs
    `interrupts.deferred()`: a signal only cuts the waits short, so `claimed` (claimed in the
    store, not recorded yet) is always what an interruption has to put back."""

    lease_s = DEFAULT_LEASE_S
    heartbeat_s = HEARTBEAT_S

    def __init__(self, pool: ActorPool, units: list[WorkUnit], store: StoreWrites, tally: Tally,
                 bar: SweepProgress, *, driver: str | None = None, since: datetime | None = None,
                 gone: frozenset[str] = frozenset()):
        self.pool, self.store, self.tally, self.bar = pool, store, tally, bar
        self.driver = driver or new_driver_id()
        self.since = since  # failed / skipped units finished before this are retried
        self.gone = set(gone)  # drivers whose units are taken over (`driver_gone`)
        self.queue: deque[WorkUnit] = deque(units)
        self.idle = list(range(len(pool)))[::-1]
        self.inflight: dict[Any, tuple[WorkUnit, int, float]] = {}  # ref -> unit, actor, start
        self.claimed: dict[UnitKey, WorkUnit] = {}
        self.tries: dict[UnitKey, int] = {}
        self._renewed = time.monotonic()

    def busy(self) -> bool:
        return bool(self.queue or self.inflight)

    def fill(self) -> None:
        """Gives every idle actor a unit while there are units."""
        while self.idle and self.queue:
            self._submit(self.idle.pop())

    def _submit(self, idx: int) -> None:
        """Actor `idx` gets the next unit this driver can claim (it stays idle if none)."""
        info = self.pool.describe(idx, wait=self._wait_for)  # the first waits for the model
        while self.queue:
            unit = self.queue.popleft()
            claim = self._claim(unit.key, info)
            if claim.claimed:
                break
            self._not_claimed(claim)
        else:
            self.idle.append(idx)
            return
        self.claimed[unit.key] = unit
        if claim.took_over_from:
            self.tally.taken_over[claim.took_over_from] += 1
        self.tries[unit.key] = self.tries.get(unit.key, 0) + 1
        self.tally.attempts += 1
        ref = self.pool.actors[idx].run_unit.remote(unit)
        self.inflight[ref] = (unit, idx, time.perf_counter())
        self.bar.started()

    def _claim(self, key: UnitKey, info: dict[str, Any]) -> Claim:
        """`claim_unit`; once more when the holder turns out to be a stopped driver of this host."""
        def claim() -> Claim:
            return self.store.call(claim_unit, key, self.driver, worker=info["worker"],
                                   device=info["device"], lease_s=self.lease_s,
                                   retry_finished_before=self.since, gone=self.gone)

        result = claim()
        holder = result.holder
        if (result.status == "running" and holder and holder not in self.gone
                and driver_gone(holder, self.driver)):
            self.gone.add(holder)
            result = claim()
        return result

    def _not_claimed(self, claim: Claim) -> None:
        """A unit another driver runs, or finished since this run began: counted as skipped."""
        if claim.status == "running":
            self.tally.elsewhere[claim.holder or "?"] += 1
        else:
            self.tally.finished_elsewhere += 1
        self.bar.skipped()

    def heartbeat(self) -> None:
        """Renews this driver's leases if `heartbeat_s` passed since the last renewal."""
        if time.monotonic() - self._renewed >= self.heartbeat_s:
            self.store.call(renew_leases, self.driver, self.lease_s)
            self._renewed = time.monotonic()

    def _wait_for(self, ref: Any) -> Any:
        """ray.get(ref), renewing the leases while it waits (an actor loading its model); a
        signal cuts only the wait short, never a renewal."""
        import ray

        while True:
            with interrupts.interruptible():
                ready, _ = ray.wait([ref], timeout=self.heartbeat_s)
            if ready:
                return ray.get(ref)
            self.heartbeat()

    def collect(self) -> Attempt:
        """The next finished attempt; an actor Ray gave up on is replaced first."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from streamkv.methods import MethodUnavailable

        ready: list[Any] = []
        while not ready:
            self.heartbeat()
            with interrupts.interruptible():
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self.heartbeat_s)
        unit, idx, started = self.inflight.pop(ready[0])
        done = dict(unit=unit, actor_index=idx, number=self.tries[unit.key], started=started)
        try:
            return Attempt(**done, status="done", result=ray.get(ready[0]))
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, MethodUnavailable):
                return Attempt(**done, status="skipped", error=str(cause))
            return Attempt(**done, status="error", error=_error_text(err),
                           deterministic=isinstance(cause, (ValueError, FileNotFoundError)))
        except RayActorError as err:  # Ray gave up on the actor (restarts and retries spent)
            self.pool.replace(idx)
            return Attempt(**done, status="error", error=f"worker actor died: {err}")

    def finish(self, attempt: Attempt, status: str) -> None:
        """The attempt is recorded and its actor free again; a unit to retry goes to the back
        of the queue."""
        self.claimed.pop(attempt.unit.key, None)
        if status == "retry":
            self.queue.append(attempt.unit)
        self.idle.append(attempt.actor_index)

    def inflight_units(self) -> list[WorkUnit]:
        """Units marked running and not recorded: in flight, or finished but not yet stored."""
        return list(self.claimed.values())


# --- one finished attempt --------------------------------------------------------------------------
class AttemptRecorder:
    """What a finished attempt means (done / skipped / retry / failed), written to the store
    (`store`, made from `engine` and `blobs` when not given) and to the tally, with its line
    above the progress bar. A result is held here while its write is retried."""

    def __init__(self, engine: Engine, blobs: BlobStore, *, write_here: bool, max_attempts: int,
                 labels: dict[str, str], tally: Tally, bar: SweepProgress, store: StoreWrites | None = None,
                 driver: str | None = None):
        self.store = store or StoreWrites(engine, blobs, url=engine.url.render_as_string(hide_password=False),
                                          blob_root=blobs.root_uri)
        self.write_here = write_here
        self.max_attempts, self.labels, self.tally, self.bar = max_attempts, labels, tally, bar
        self.driver = driver  # a failure is recorded only while this driver holds the unit

    def record(self, attempt: Attempt) -> str:
        """Returns the status: done | skipped | retry | failed."""
        key = attempt.unit.key
        what = f"{key.task} {key.shard} [{self.labels.get(key.config_id, attempt.unit.method)}]"
        if attempt.status == "done":
            if self.write_here:
                self.store.call(write_unit_result, attempt.result, blobs=True)
            self.tally.done += 1
            seconds = time.perf_counter() - attempt.started
            return self._report("done", unit_line("done", what, seconds=seconds))
        if attempt.status == "skipped":
            self.store.call(mark_skipped, key, attempt.error, driver=self.driver)
            self.tally.skipped += 1
            return self._report("skipped", unit_line("skipped", what, error=attempt.error))
        final = attempt.deterministic or attempt.number >= self.max_attempts
        self.store.call(mark_failed, key, attempt.error, final=final, driver=self.driver)
        if not final:
            return self._report("retry", unit_line("retry", what, attempt=attempt.number, error=attempt.error))
        self.tally.failed += 1
        self.tally.failures.append((key, attempt.error))
        return self._report("failed", unit_line("failed", what, attempt=attempt.number, error=attempt.error))

    def _report(self, status: str, line: str) -> str:
        self.bar.finished(status, line)
        return status


# --- the driver ------------------------------------------------------------------------------------
def run_model_units(scheduler: ModelScheduler, recorder: AttemptRecorder, *, stop_after: int | None,
                    on_unit_done: Callable[[UnitEvent], None] | None) -> bool:
    """Runs one model's units to the end; returns True when `stop_after` stopped it. A signal
    cuts only the waits short (`interrupts.deferred`): a unit is claimed and recorded whole."""
    with interrupts.deferred():
        while scheduler.busy():
            scheduler.fill()
            if not scheduler.inflight:  # every unit left was claimed by other drivers
                break
            attempt = scheduler.collect()
            status = recorder.record(attempt)
            scheduler.finish(attempt, status)
            finished = recorder.tally.finished
            if stop_after is not None and finished >= stop_after:
                return True
            scheduler.fill()  # before the hook: it sees the actor already given its next unit
            if on_unit_done is not None:
                idx = attempt.actor_index
                on_unit_done(UnitEvent(attempt.unit.key, status, scheduler.pool.actors[idx], idx, finished))
    return False


def run_models(spec: SweepSpec, sweep: OpenSweep, recorder: AttemptRecorder, bar: SweepProgress, *,
               stop_after: int | None, on_unit_done: Callable[[UnitEvent], None] | None,
               verbose: bool) -> bool:
    """Each model's units on its own pool, one model after the other; True when stopped."""
    if recorder.write_here:
        store_args: tuple[str | None, str | None] = (None, None)
    else:
        store_args = _absolute_store(sweep.url, sweep.blob_root)
    for model, units in by_model(sweep.todo):
        pool = start_pool(spec, model, len(units), store_args, verbose=verbose)
        scheduler = ModelScheduler(pool, units, sweep.store, recorder.tally, bar,
                                   driver=sweep.driver_id, since=sweep.started_at, gone=sweep.gone)
        try:
            if run_model_units(scheduler, recorder, stop_after=stop_after, on_unit_done=on_unit_done):
                return True
        finally:
            with interrupts.deferred():
                # Actors first: one writing its own result must not store it after the release.
                pool.kill_all()
                left = scheduler.inflight_units()
                recorder.tally.stopped_inflight += len(left)
                recorder.tally.released += release_inflight(sweep.store, left, driver=sweep.driver_id)
    return False


def run_sweep(spec: SweepSpec, address: str | None = None, *, stop_after: int | None = None,
              on_unit_done: Callable[[UnitEvent], None] | None = None, progress: bool = True,
              shutdown: bool = True, verbose: bool = True, retry: RetryPolicy | None = None) -> SweepSummary:
    """Runs `spec` to completion (see the module docstring).

    `stop_after=k` (test hook) stops once k units finished in this call, as an interrupted
    driver would: in-flight units go back to pending and the sweep stays running.
    `on_unit_done` (test hook) is called after each finished attempt.
    `verbose=False` hides third-party output in the actors and Ray's warnings (the CLI's default).
    `retry`: how store writes are retried (`RetryPolicy`).
    Raises `interrupts.SweepCancelled` (a KeyboardInterrupt) after SIGINT or SIGTERM, and
    `StoreWriteError` when the store keeps refusing writes, each after the cleanup.
    """
    t0 = time.perf_counter()
    with interrupts.handling():
        sweep = open_sweep(spec, retry=retry)
        bar = SweepProgress(len(sweep.units), sweep.previously_done, desc=sweep.sweep_id, enabled=progress)
        bar.note(f"sweep {sweep.sweep_id}: {len(sweep.units)} units, {sweep.previously_done} already done, "
                 f"{len(sweep.todo)} to run; store {_safe(sweep.url)}, blobs {sweep.blob_root}")
        tally = Tally(elsewhere=Counter(sweep.held.values()))
        bar.skipped(len(sweep.held))
        recorder = AttemptRecorder(sweep.engine, sweep.blobs, write_here=spec.resources.write_results == "driver",
                                   max_attempts=spec.max_attempts, labels={c.config_id: c.label for c in spec.configs},
                                   tally=tally, bar=bar, store=sweep.store, driver=sweep.driver_id)
        try:
            with ray_session(address, verbose=verbose, shutdown=shutdown) if sweep.todo else nullcontext():
                interrupted = run_and_finish(spec, sweep, recorder, bar, stop_after=stop_after,
                                             on_unit_done=on_unit_done, verbose=verbose)
        except KeyboardInterrupt:
            raise cancelled(sweep, tally) from None
        except StoreWriteError as err:
            err.unstored = tally.stopped_inflight
            raise
        finally:
            bar.close()
    return summarize(sweep, tally, interrupted=interrupted, seconds=time.perf_counter() - t0)


def run_and_finish(spec: SweepSpec, sweep: OpenSweep, recorder: AttemptRecorder, bar: SweepProgress, *,
                   stop_after: int | None, on_unit_done: Callable[[UnitEvent], None] | None,
                   verbose: bool) -> bool:
    """`run_models`, then the sweep's status: done / failed, or cancelled by a signal (marked
    before Ray shuts down: that takes seconds, and a SIGKILL may come meanwhile)."""
    tally = recorder.tally
    try:
        interrupted = run_models(spec, sweep, recorder, bar, stop_after=stop_after,
                                 on_unit_done=on_unit_done, verbose=verbose)
    except KeyboardInterrupt:
        with interrupts.deferred():
            if sweep.store.best_effort(finish_sweep, sweep.sweep_id, "cancelled"):
                tally.final_status = "cancelled"
        raise
    if interrupted:
        bar.note(f"stopped after {tally.finished} unit(s); run the same spec again to resume")
    else:
        with interrupts.deferred():
            tally.final_status = close_sweep(sweep, tally) or ""
    return interrupted


def close_sweep(sweep: OpenSweep, tally: Tally) -> str | None:
    """Marks the sweep done (failed: some unit failed, here or elsewhere) when no unit is left:
    none pending and none running under another driver, which will close it when it ends.
    Returns the status set, None when the sweep stays running."""
    counts = sweep.store.call(sweep_progress, sweep.sweep_id)
    if counts["pending"] or counts["running"]:
        return None
    status = "failed" if tally.failed or counts["failed"] else "done"
    sweep.store.call(finish_sweep, sweep.sweep_id, status)
    return status


def cancelled(sweep: OpenSweep, tally: Tally) -> interrupts.SweepCancelled:
    """The exception (and its line) of a run stopped by a signal, after the cleanup."""
    signum = interrupts.received() or signal.SIGINT
    head = f"interrupted ({interrupts.signal_name(signum)})"
    if tally.final_status in ("done", "failed"):
        return interrupts.SweepCancelled(signum, f"{head} after the sweep ended ({tally.final_status})")
    parts = [f"{head}: {tally.released} unit(s) back to pending"]
    if tally.stopped_inflight > tally.released or tally.final_status != "cancelled":
        why = _error_line(sweep.store.failed.error) if sweep.store.failed else "?"
        parts.append(f"the store could not be updated ({why}); units left running run again on the next run")
    if tally.final_status == "cancelled":
        parts.append("the sweep is cancelled")
    parts.append("run the same command to resume")
    return interrupts.SweepCancelled(signum, "; ".join(parts))


def summarize(sweep: OpenSweep, tally: Tally, *, interrupted: bool, seconds: float) -> SweepSummary:
    elsewhere = sum(tally.elsewhere.values()) + tally.finished_elsewhere
    return SweepSummary(
        sweep_id=sweep.sweep_id, succeeded=tally.done, failed=tally.failed,
        skipped=tally.skipped + sweep.previously_done + elsewhere, total=len(sweep.units),
        previously_done=sweep.previously_done, attempts=tally.attempts, interrupted=interrupted,
        db_url=_safe(sweep.url), blob_root=sweep.blob_root, seconds=seconds,
        failures=tuple(tally.failures), elsewhere=tuple(sorted(tally.elsewhere.items())),
        finished_elsewhere=tally.finished_elsewhere,
        taken_over=tuple(sorted(tally.taken_over.items())))


def _drivers(counts: tuple[tuple[str, int], ...]) -> tuple[int, str]:
    return sum(n for _, n in counts), ", ".join(d for d, _ in counts)


# --- after the run ---------------------------------------------------------------------------------
def sweep_results(spec: SweepSpec, sweep_id: str | None = None) -> str:
    """The results table of the sweep (`progress.results_table`), read from its store."""
    from store.queries import result_frame

    engine = open_store(spec.store.resolved_url)
    try:
        units = result_frame(engine, sweep_id=sweep_id or spec.resolved_sweep_id)
    finally:
        engine.dispose()
    labels = {c.config_id: c.label for c in spec.configs}
    return results_table(units, labels, tasks=[d.stored_task for d in spec.datasets])


def _safe(url: str) -> str:
    from store.db import safe_url

    return safe_url(url)


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    head = f"{type(cause).__name__}: {cause}" if cause is not None else ""
    return (head + "\n\n" + str(err)).strip()


def report(summary: SweepSummary, file=sys.stdout) -> None:
    """The closing lines: counts, where the results are, how to look at them."""
    state = "INTERRUPTED" if summary.interrupted else ("FAILED UNITS" if summary.failed else "done")
    print(f"\nsweep {summary.sweep_id}: {state} - {summary.succeeded} succeeded, {summary.failed} failed, "
          f"{summary.skipped} skipped ({summary.previously_done} already done) of {summary.total} "
          f"in {summary.seconds:.0f}s", file=file)
    for key, error in summary.failures[:20]:
        print(f"  failed {key.model_id} {key.config_id} {key.task} {key.shard}: {first_line(error)}", file=file)
    if summary.elsewhere:
        n, who = _drivers(summary.elsewhere)
        print(f"{n} unit(s) are being run by another driver ({who}); skipped", file=file)
    if summary.finished_elsewhere:
        print(f"{summary.finished_elsewhere} unit(s) were finished by another driver during this run; "
              "skipped", file=file)
    if summary.taken_over:
        n, who = _drivers(summary.taken_over)
        print(f"{n} unit(s) taken over from a driver that had stopped (its process gone or its "
              f"lease passed: {who})", file=file)
    print(f"results: database {summary.db_url}\n         blobs    {summary.blob_root}", file=file)
    print(f"open the dashboard: streamkv dashboard --db '{summary.db_url}' --blobs '{summary.blob_root}'",
          file=file)
    print(f"query: streamkv db query \"SELECT status, count(*) FROM units WHERE sweep_id = "
          f"'{summary.sweep_id}' GROUP BY status\" --db '{summary.db_url}'", file=file)


__all__ = ["ClusterConnectionError", "SweepSummary", "SweepWorker", "UnitEvent", "connect_ray",
           "open_sweep", "report", "run_sweep", "sweep_results"]
