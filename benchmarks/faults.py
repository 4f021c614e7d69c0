"""Two drivers racing on one sweep while its actors are killed: every unit done once.

    python benchmarks/faults.py [--units 2000] [--kill-every 30] [--actors 1] [--db URL]

A trivial sweep (tiny-random-llama, one 32-token WikiText-2 window per unit, a different
shard per unit) is started twice at once, as two `python -m cluster.sweep` processes on the
same spec and store (SQLite in a temp folder unless `--db`). Every `--kill-every` seconds one
live Ray actor process (`ray::SweepWorker`, of either driver, chosen in turn) is sent SIGKILL,
as a lost node or an OOM kill would. Ray restarts the actor and the driver resubmits its unit.

At the end the store is read back and checked: every unit `done`, one stored result per
unit, a unit run more than once only where its actor was killed under it. Printed: the wall
time, the throughput (units/s), the median unit run time on the actor, the scheduling overhead per unit (the median idle time of an
actor between two of its units: what the driver, Ray and the store add), the attempts per unit
(above 1 only for a unit whose actor was killed under it) and how the units split between
the drivers. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def spec_for(n_units: int) -> dict:
    return {"name": f"race-{n_units}", "models": ["tiny-random-llama"], "points": [{"chunk_size": 16}],
            "datasets": [{"task": "wikitext2_ppl", "context_length": 32, "limit": 1}],
            "shards": n_units, "max_attempts": 3,
            "resources": {"num_actors": 1, "num_cpus_per_actor": 1}}


def start_driver(spec: Path, db: str, blobs: Path, actors: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cluster.sweep", str(spec), "--no-isolate", "--no-progress",
           "--num-actors", str(actors), "--db", db, "--blobs", str(blobs), "--max-units", str(10**6)]
    # Own session, so that a failed run still ends every process of it (killpg).
    return subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def actor_pids() -> list[int]:
    """Live Ray actor processes of our sweeps (Ray titles them `ray::SweepWorker...`)."""
    out = subprocess.run(["pgrep", "-f", "^ray::SweepWorker"], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def killer(every: float, stop: threading.Event, killed: list[tuple[float, int]], t0: float) -> None:
    turn = 0
    while not stop.wait(every):
        pids = actor_pids()
        if not pids:
            continue
        pid = pids[turn % len(pids)]
        turn += 1
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append((time.perf_counter() - t0, pid))
        except ProcessLookupError:
            pass


def read_back(db: str) -> dict:
    from sqlalchemy import text

    from store import create_store_engine

    engine = create_store_engine(db)
    try:
        with engine.connect() as conn:
            units = conn.execute(text("SELECT status, attempts, claimed_by, lease_until FROM units")).all()
            results = conn.scalar(text("SELECT COUNT(*) FROM unit_summaries"))
            runs = conn.execute(text(
                "SELECT worker, started_at, finished_at FROM unit_summaries")).all()
            sweeps = conn.execute(text("SELECT status FROM sweeps")).scalars().all()
    finally:
        engine.dispose()
    return {"units": units, "results": results, "runs": runs, "sweeps": sweeps}


def idle_gaps(runs: list[tuple[str, object, object]], restart_s: float = 5.0) -> list[float]:
    """Per actor (its `worker` name), the time from the end of one unit to the start of its next."""
    by_worker: dict[str, list[tuple[object, object]]] = {}
    for worker, start, end in runs:
        by_worker.setdefault(worker, []).append((start, end))
    gaps = []
    for spans in by_worker.values():
        spans.sort(key=lambda span: _when(span[0]))
        gaps += [g for (_, end), (start, _) in zip(spans, spans[1:]) if (g := _seconds(end, start)) < restart_s]
    return gaps


def _when(x: object) -> datetime:
    return datetime.fromisoformat(x) if isinstance(x, str) else x  # SQLite: text; PostgreSQL: datetime


def _seconds(a: object, b: object) -> float:
    return (_when(b) - _when(a)).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between actor kills (0: none)")
    parser.add_argument("--actors", type=int, default=1, help="actors per driver")
    parser.add_argument("--db", help="store URL (default: SQLite in a temp folder)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamkv-race-") as tmp_dir:
        tmp = Path(tmp_dir)
        spec = tmp / "race.yaml"
        spec.write_text(yaml.safe_dump(spec_for(args.units)))
        db = args.db or f"sqlite:///{tmp / 'race.db'}"
        t0 = time.perf_counter()
        procs = [start_driver(spec, db, tmp / "blobs", args.actors, tmp / f"driver{i}.log") for i in range(2)]
        stop, killed = threading.Event(), []
        thread = threading.Thread(target=killer, args=(args.kill_every, stop, killed, t0), daemon=True)
        if args.kill_every > 0:
            thread.start()
        try:
            codes = [p.wait(timeout=max(1.0, args.timeout - (time.perf_counter() - t0))) for p in procs]
        finally:
            stop.set()
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        wall = time.perf_counter() - t0
        logs = [(tmp / f"driver{i}.log").read_text() for i in range(2)]
        got = read_back(db)

    units, results = got["units"], got["results"]
    statuses = Counter(status for status, *_ in units)
    attempts = Counter(a for _, a, *_ in units)
    per_driver = Counter((claimed or "").rsplit(":", 1)[0] for *_, claimed, _ in units)
    # A unit is run again only when its actor died under it: at most one unit per kill.
    rerun = sum(n for a, n in attempts.items() if a > 1)
    run_s = [_seconds(a, b) for _, a, b in got["runs"]]
    median_run = statistics.median(run_s) if run_s else float("nan")
    gaps = idle_gaps(got["runs"])
    median_gap = statistics.median(gaps) if gaps else float("nan")
    starts = [a for _, a, _ in got["runs"]]
    ends = [b for *_, b in got["runs"]]
    busy = _seconds(min(starts, key=_when), max(ends, key=_when)) if starts else float("nan")
    print(f"{args.units} units, 2 drivers x {args.actors} actor(s), SIGKILL of one actor every "
          f"{args.kill_every:g} s ({len(killed)} killed)")
    print(f"driver exit codes {codes}; sweep status {got['sweeps']}")
    print(f"units by status {dict(statuses)}; stored results {results}; units run more than once {rerun} "
          f"(at most one per kill: {len(killed)})")
    print(f"attempts per unit {dict(sorted(attempts.items()))}; units per driver {dict(per_driver)}")
    print(f"wall {wall:.1f} s (incl. Ray starts and model loads): {results / wall:.2f} units/s; first unit start "
          f"to last unit end {busy:.1f} s: {results / busy:.2f} units/s")
    print(f"median unit run on its actor {1000 * median_run:.0f} ms; median scheduling overhead "
          f"{1000 * median_gap:.0f} ms/unit (an actor's idle time between two of its units: the "
          f"result stored, the next unit claimed and sent; gaps over 5 s, i.e. actor restarts, excluded)")
    ok = (codes == [0, 0] and statuses == Counter({"done": args.units}) and results == args.units
          and rerun <= len(killed) and got["sweeps"] == ["done"])
    if not ok:
        for i, log in enumerate(logs):
            print(f"--- driver {i} (last lines) ---\n" + "\n".join(log.splitlines()[-20:]))
        print("FAILED: see the checks above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
