"""Run a sweep spec's units in this one process, without Ray, into the same store.

    python benchmarks/sweep_inprocess.py sweeps/ruler-cpu.yaml --db sqlite:////tmp/ruler.db \
        --blobs /tmp/ruler-blobs [--threads 2]

For a machine where Ray's actors cannot be kept alive (a shared host whose other jobs end
them): the units, keys and sweep id are those of `streamkv sweep` (same `plan`, same
`register_sweep`), each unit's result is written with `write_unit_result` as the driver
writes it, units already done are skipped, so `streamkv sweep` can resume the same sweep.
A unit that raises is marked failed with its error text and the run goes on.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster.plan import plan  # noqa: E402
from cluster.spec import apply_overrides, load_spec  # noqa: E402
from store import BlobStore, create_store_engine  # noqa: E402
from store.repository import (  # noqa: E402
    completed_units,
    finish_sweep,
    mark_failed,
    mark_running,
    register_sweep,
    write_unit_result,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--db", default=None)
    ap.add_argument("--blobs", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    import torch

    from streamkv.loading import load_model
    from workers.runner import run_unit

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = apply_overrides(load_spec(args.spec), db=args.db, blobs=args.blobs)
    units = plan(spec)
    sweep_id = spec.resolved_sweep_id
    engine = create_store_engine(spec.store.resolved_url)
    blobs = BlobStore(spec.store.resolved_blobs)
    configs = list({u.key.config_id: u.config.to_dict() for u in units}.values())
    register_sweep(engine, sweep_id, spec.name, spec.to_dict(), [u.key for u in units], configs,
                   created_by=f"sweep_inprocess@{socket.gethostname()}")
    done = set(completed_units(engine, sweep_id))
    loaded: dict[str, object] = {}
    failed = 0
    for number, unit in enumerate(units, start=1):
        if unit.key in done:
            continue
        if unit.model not in loaded:
            loaded.clear()
            loaded[unit.model] = load_model(unit.model, dtype=getattr(torch, spec.dtype), device="cpu")
        mark_running(engine, unit.key, f"inprocess:{socket.gethostname()}", "cpu")
        start = time.perf_counter()
        try:
            result = run_unit(loaded[unit.model], unit)
        except Exception:  # noqa: BLE001 (recorded, and the next unit runs)
            failed += 1
            mark_failed(engine, unit.key, traceback.format_exc(), final=True)
            print(f"[{number}/{len(units)}] FAILED {unit.key.task} [{unit.method}]", flush=True)
            continue
        write_unit_result(engine, blobs, result)
        print(f"[{number}/{len(units)}] {unit.key.task} [{unit.config.name} {unit.key.config_id}] "
              f"score={result.metrics.get('score')} in {time.perf_counter() - start:.0f}s", flush=True)
    finish_sweep(engine, sweep_id, "failed" if failed else "done")
    print(f"sweep {sweep_id}: {len(units)} units, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
