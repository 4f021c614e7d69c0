"""Scheduling overhead and throughput of the sweep driver's dynamic queue, 1 vs 2 actors.

    python benchmarks/scheduling.py [--units 24] [--actors 1 2]

Local Ray (127.0.0.1, no dashboard), tiny-random-llama, trivial units (one 32-token WikiText
window each, a different shard per unit). Same path as `cluster.driver.run_sweep` with
driver-side writes: mark_running -> actor.run_unit.remote -> ray.wait -> write_unit_result
(SQLite in a temp dir). Actors are warmed up (model loaded, one unit run) before timing.
Per unit: overhead = driver-observed latency (submit -> result stored) - the unit's own run
time on the actor (UnitResult.started_at..finished_at). Prints medians and the throughput ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(n_actors: int, n_units: int, tmp: Path) -> dict[str, float]:
    import ray

    from cluster.driver import SweepWorker
    from cluster.plan import plan
    from cluster.spec import apply_overrides, parse_spec
    from store import (
        BlobStore,
        create_store_engine,
        mark_running,
        register_sweep,
        write_unit_result,
    )

    spec = apply_overrides(parse_spec({
        "name": f"sched-{n_actors}", "models": ["tiny-random-llama"], "presets": ["streamkv-4"],
        "datasets": [{"task": "wikitext2_ppl", "context_length": 32, "limit": 1}],
        "shards": n_units + n_actors}), db=f"sqlite:///{tmp}/sched-{n_actors}.db", blobs=str(tmp / "blobs"))
    units = plan(spec)
    engine, blobs = create_store_engine(spec.store.resolved_url), BlobStore(spec.store.resolved_blobs)
    register_sweep(engine, spec.resolved_sweep_id, spec.name, spec.to_dict(), [u.key for u in units],
                   [units[0].config.to_dict()])
    cls = ray.remote(SweepWorker).options(num_cpus=1, num_gpus=0)
    actors = [cls.remote("tiny-random-llama", "float32", "cpu") for _ in range(n_actors)]
    warm, timed = units[:n_actors], deque(units[n_actors:])
    for actor, unit in zip(actors, warm):  # load + warm-up (not timed)
        write_unit_result(engine, blobs, ray.get(actor.run_unit.remote(unit)))
    overheads, runs = [], []
    inflight: dict = {}
    idle = list(range(n_actors))
    t0 = time.perf_counter()
    while timed or inflight:
        while idle and timed:
            i, unit = idle.pop(), timed.popleft()
            mark_running(engine, unit.key, worker=f"a{i}", device="cpu")
            inflight[actors[i].run_unit.remote(unit)] = (i, time.perf_counter())
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        i, t_sub = inflight.pop(ref)
        result = ray.get(ref)
        write_unit_result(engine, blobs, result)
        latency = time.perf_counter() - t_sub
        run = (result.finished_at - result.started_at).total_seconds()
        overheads.append(latency - run)
        runs.append(run)
        idle.append(i)
    wall = time.perf_counter() - t0
    for actor in actors:
        ray.kill(actor)
    return {"units": len(runs), "wall_s": wall, "throughput": len(runs) / wall,
            "median_overhead_ms": 1000 * statistics.median(overheads),
            "median_run_ms": 1000 * statistics.median(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=24)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=max(args.actors), include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.actors:
            results[n] = r = measure(n, args.units, Path(tmp))
            print(f"{n} actor(s): {r['units']} units in {r['wall_s']:.2f}s -> {r['throughput']:.2f} units/s; "
                  f"median unit run {r['median_run_ms']:.0f} ms, median scheduling+store overhead "
                  f"{r['median_overhead_ms']:.1f} ms/unit")
    ray.shutdown()
    if 1 in results and len(results) > 1:
        for n, r in results.items():
            if n != 1:
                print(f"throughput ratio {n} vs 1 actor(s): {r['throughput'] / results[1]['throughput']:.2f}x")


if __name__ == "__main__":
    main()
