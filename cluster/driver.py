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
  with `mark_running`/`mark_failed`. A unit's result is small (metrics, per-sample rows and a
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
- application (an exception in the unit, e.g. a bad data file): retried until `max_attempts`
  attempts of this run, then `mark_failed(final=True)` with the error text; the sweep goes on.
- `HFBaselineUnavailable` (the backend is not installed): `mark_skipped` with the reason.
`mark_running` (attempts + 1 in the store) precedes every attempt.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store import BlobStore, create_store_engine
from store.entities import UnitKey
from store.repository import (
    completed_units,
    finish_sweep,
    mark_failed,
    mark_running,
    mark_skipped,
    register_sweep,
    write_unit_result,
)
from workers.actor import UnitWorker
from workers.units import WorkUnit

from .plan import by_model, plan
from .progress import SweepProgress
from .spec import SweepSpec


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
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        if rel and rel != ":memory:":
            url = "sqlite:///" + str(Path(rel).resolve())
    if "://" not in blobs:
        blobs = str(Path(blobs).resolve())
    return url, blobs


# --- Ray -------------------------------------------------------------------------------------------
def connect_ray(address: str | None = None) -> bool:
    """Joins `address` ($RAY_ADDRESS, as under `ray job submit`) or starts Ray in this process
    with every listener on 127.0.0.1. Returns whether this call started/joined Ray."""
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
    if address:
        try:
            ray.init(address=address, logging_level="WARNING")
        except Exception as err:  # noqa: BLE001 (ConnectionError, TimeoutError, RuntimeError, ValueError)
            raise ClusterConnectionError(f"cannot reach the Ray cluster at {address!r}: {err}\n" + hint) from None
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
                 configure_logging=True)
    return True


# --- the driver ------------------------------------------------------------------------------------
def run_sweep(spec: SweepSpec, address: str | None = None, *, stop_after: int | None = None,
              on_unit_done: Callable[[UnitEvent], None] | None = None, progress: bool = True,
              shutdown: bool = True) -> SweepSummary:
    """Runs `spec` to completion (see the module docstring).

    `stop_after=k` (test hook) stops once k units finished in this call, as an interrupted
    driver would: in-flight units go back to pending and the sweep stays running.
    `on_unit_done` (test hook) is called after each finished attempt.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from workers.hf_baselines import HFBaselineUnavailable

    t0 = time.perf_counter()
    units = plan(spec)
    sweep_id = spec.resolved_sweep_id
    url, blob_root = spec.store.resolved_url, spec.store.resolved_blobs
    try:
        engine = create_store_engine(url)  # StoreConnectionError says what to do
    except OSError as err:  # e.g. the SQLite file's folder cannot be created
        from store.db import StoreConnectionError

        raise StoreConnectionError(f"cannot open the results database {_safe(url)}: {err}") from None
    blobs = BlobStore(blob_root)
    configs = list({u.key.config_id: u.config.to_dict() for u in units}.values())
    register_sweep(engine, sweep_id, spec.name, spec.to_dict(), [u.key for u in units], configs,
                   created_by=f"{os.environ.get('USER', '?')}@{socket.gethostname()}")
    done_keys = completed_units(engine, sweep_id)
    todo = [u for u in units if u.key not in done_keys]
    labels = {c.config_id: c.label for c in spec.configs}
    bar = SweepProgress(len(units), len(units) - len(todo), desc=sweep_id, enabled=progress)
    bar.note(f"sweep {sweep_id}: {len(units)} units, {len(units) - len(todo)} already done, "
             f"{len(todo)} to run; store {_safe(url)}, blobs {blob_root}")

    counts = {"done": 0, "failed": 0, "skipped": 0}
    failures: list[tuple[UnitKey, str]] = []
    attempts_total = 0
    interrupted = False
    started_ray = False
    if todo:
        started_ray = connect_ray(address)
    actor_url, actor_blobs = _absolute_store(url, blob_root)
    write_here = spec.resources.write_results == "driver"
    try:
        for model, model_units in by_model(todo):
            if interrupted:
                break
            gpus = spec.resources.num_gpus_per_actor
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            n_actors = max(1, min(spec.resources.num_actors, len(model_units)))
            remote_cls = ray.remote(SweepWorker).options(
                num_gpus=gpus, num_cpus=spec.resources.num_cpus_per_actor,
                max_restarts=spec.resources.max_restarts, max_task_retries=spec.resources.max_task_retries)
            device = None if spec.device == "auto" else spec.device
            store_args = (None, None) if write_here else (actor_url, actor_blobs)

            def new_actor():
                return remote_cls.remote(model, spec.dtype, device, *store_args)  # noqa: B023 (called within this iteration only)

            actors = [new_actor() for _ in range(n_actors)]
            names: dict[int, dict[str, Any]] = {}
            queue: deque[WorkUnit] = deque(model_units)
            tries: dict[UnitKey, int] = {}
            inflight: dict[Any, tuple[WorkUnit, int, float]] = {}
            idle = list(range(n_actors))[::-1]

            def submit(idx: int) -> None:
                nonlocal attempts_total
                unit = queue.popleft()  # noqa: B023 (called within this iteration only)
                if idx not in names:  # noqa: B023 (called within this iteration only)
                    try:
                        names[idx] = ray.get(actors[idx].describe.remote())  # noqa: B023 (called within this iteration only)
                    except RayActorError as err:
                        raise RuntimeError(f"the worker actor for model {model!r} could not start: {err}") from err  # noqa: B023 (called within this iteration only)
                info = names[idx]  # noqa: B023 (called within this iteration only)
                tries[unit.key] = tries.get(unit.key, 0) + 1  # noqa: B023 (called within this iteration only)
                attempts_total += 1
                mark_running(engine, unit.key, worker=info["worker"], device=info["device"])
                inflight[actors[idx].run_unit.remote(unit)] = (unit, idx, time.perf_counter())  # noqa: B023 (called within this iteration only)
                bar.started()

            try:
                while queue or inflight:
                    while idle and queue:
                        submit(idle.pop())
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    ref = ready[0]
                    unit, idx, t_start = inflight.pop(ref)
                    key, label = unit.key, labels.get(unit.key.config_id, unit.method)
                    what = f"{key.task} {key.shard} [{label}]"
                    status, error = "done", ""
                    try:
                        result = ray.get(ref)
                        if write_here:
                            write_unit_result(engine, blobs, result)
                    except RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, HFBaselineUnavailable):
                            status, error = "skipped", str(cause)
                        else:
                            status, error = "error", _error_text(err)
                    except RayActorError as err:  # Ray gave up on the actor: replace it
                        status, error = "error", f"worker actor died: {err}"
                        ray.kill(actors[idx], no_restart=True)
                        actors[idx] = new_actor()
                        names.pop(idx, None)
                    seconds = time.perf_counter() - t_start
                    if status == "done":
                        counts["done"] += 1
                        bar.finished("done", f"done    {what} {seconds:.1f}s")
                    elif status == "skipped":
                        mark_skipped(engine, key, error)
                        counts["skipped"] += 1
                        bar.finished("skipped", f"skipped {what}: {error}")
                    else:
                        final = tries[key] >= spec.max_attempts
                        mark_failed(engine, key, error, final=final)
                        if final:
                            status = "failed"
                            counts["failed"] += 1
                            failures.append((key, error))
                            bar.finished("failed", f"FAILED  {what} after {tries[key]} attempt(s): "
                                                   f"{_last_line(error)}")
                        else:
                            status = "retry"
                            queue.append(unit)
                            bar.finished("retry", f"retry   {what} (attempt {tries[key]} failed: "
                                                  f"{_last_line(error)})")
                    idle.append(idx)
                    finished = counts["done"] + counts["failed"] + counts["skipped"]
                    if stop_after is not None and finished >= stop_after:
                        interrupted = True
                        break
                    while idle and queue:
                        submit(idle.pop())
                    if on_unit_done is not None:
                        on_unit_done(UnitEvent(key, status, actors[idx], idx, finished))
            except KeyboardInterrupt:
                interrupted = True
                raise
            finally:
                for unit, _, _ in inflight.values():
                    mark_failed(engine, unit.key, "interrupted: the driver stopped before this unit finished",
                                final=False)
                for actor in actors:
                    ray.kill(actor, no_restart=True)
        if interrupted:
            bar.note(f"stopped after {sum(counts.values())} unit(s); run the same spec again to resume")
        else:
            finish_sweep(engine, sweep_id, "failed" if counts["failed"] else "done")
    except KeyboardInterrupt:
        finish_sweep(engine, sweep_id, "cancelled")
        raise
    finally:
        bar.close()
        if started_ray and shutdown:
            ray.shutdown()
    return SweepSummary(
        sweep_id=sweep_id, succeeded=counts["done"], failed=counts["failed"],
        skipped=counts["skipped"] + len(units) - len(todo), total=len(units),
        previously_done=len(units) - len(todo), attempts=attempts_total, interrupted=interrupted,
        db_url=_safe(url), blob_root=blob_root, seconds=time.perf_counter() - t0,
        failures=tuple(failures))


def _safe(url: str) -> str:
    from store.db import safe_url

    return safe_url(url)


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    head = f"{type(cause).__name__}: {cause}" if cause is not None else ""
    return (head + "\n\n" + str(err)).strip()


def _last_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:300]


def report(summary: SweepSummary, file=sys.stdout) -> None:
    """The closing lines: counts, where the results are, how to look at them."""
    state = "INTERRUPTED" if summary.interrupted else ("FAILED UNITS" if summary.failed else "done")
    print(f"\nsweep {summary.sweep_id}: {state} - {summary.succeeded} succeeded, {summary.failed} failed, "
          f"{summary.skipped} skipped ({summary.previously_done} already done) of {summary.total} "
          f"in {summary.seconds:.0f}s", file=file)
    for key, error in summary.failures[:20]:
        print(f"  failed {key.model_id} {key.config_id} {key.task} {key.shard}: {_last_line(error)}", file=file)
    print(f"results: database {summary.db_url}\n         blobs    {summary.blob_root}", file=file)
    print(f"open the dashboard: streamkv dashboard --db '{summary.db_url}' --blobs '{summary.blob_root}'",
          file=file)
    print(f"query: streamkv db query \"SELECT status, count(*) FROM units WHERE sweep_id = "
          f"'{summary.sweep_id}' GROUP BY status\" --db '{summary.db_url}'", file=file)


__all__ = ["ClusterConnectionError", "SweepSummary", "SweepWorker", "UnitEvent", "connect_ray",
           "report", "run_sweep"]
