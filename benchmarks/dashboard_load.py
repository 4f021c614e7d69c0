"""Dashboard load time: first view of a sweep with 10,000 finished units and 500 trace blobs.

    python benchmarks/dashboard_load.py [--workdir DIR] [--units 10000] [--blobs 500]

Fills a fresh SQLite store: `register_sweep` for all units (one transaction), --blobs units
through `write_unit_result` (each with one outlier_channels trace blob), the rest in one bulk
transaction on the repository's tables (with `write_unit_result`'s own summary-row builder). Then times, on a cold read-only engine,
exactly what dashboard/app.py loads for its first view: list_sweeps, load_sweep_data,
load_health, plus the filter / quality-points / Pareto / ablation shaping. Target < 3 s.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import bindparam, insert, select, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import views as v
from store import (
    BlobStore,
    UnitKey,
    UnitResult,
    create_store_engine,
    readonly_engine,
    register_sweep,
    session_scope,
    write_unit_result,
)
from store import queries as q
from store.repository import _summary_row, results_t, summaries_t, units_t
from streamkv.hashing import content_id

SWEEP = "bench"
MODEL = "smollm2-135m"
TASKS = ("qa", "summary", "code", "math")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


Config = dict[str, Any]


def config(method: str, chunk_size: int | None = 512, **fields: Any) -> Config:
    """A config as workers hand it to the store: plain JSON, the common fields first."""
    return {"method": method, "chunk_size": chunk_size, "quantize_current_chunk": False,
            **fields}


def configs() -> list[Config]:
    grid = [config("streamkv", c, key_bits_normal=b, value_bits_normal=b, ema_decay=d)
            for b, d, c in itertools.product((2, 3, 4), (0.8, 0.9, 0.95, 0.99),
                                             (128, 256, 512, 1024))]
    none = config("none")
    int8 = config("int8", key_bits_normal=8, value_bits_normal=8)
    return [none, int8, *grid]  # 50 configs


def result(key: UnitKey, cfg: Config, i: int, traces: bool) -> UnitResult:
    bits = float(cfg["key_bits_normal"] if "key_bits_normal" in cfg else 16) + 0.25
    tables = {}
    if traces:
        n = 64
        tables["outlier_channels"] = pa.table({
            "sample_id": ["s0"] * n, "layer": pa.array([j % 30 for j in range(n)], pa.int32()),
            "kind": ["key", "value"] * (n // 2), "head": pa.array([j % 3 for j in range(n)], pa.int32()),
            "channel": pa.array([(j * 7 + i) % 64 for j in range(n)], pa.int32()),
            "statistic": [float(j + i) for j in range(n)], "head_median": [1.0] * n,
            "head_max": [float(n + i)] * n})
    return UnitResult(
        key=key, config=cfg, method=cfg["method"],
        metrics={"score": 0.5 + (i % 97) / 400 - (16 - bits) / 100, "perplexity": 9 + bits / 10,
                 "kl": 0.01, "top1_agreement": 0.97},
        n_samples=8, avg_key_bits=bits, avg_value_bits=bits, compression_ratio=16 / bits,
        kv_bytes=1000, fp16_kv_bytes=int(1000 * 16 / bits), environment={"seed": 0},
        traces=tables, worker="w0", device="cpu", started_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i + 20))


def fill(root: Path, n_units: int, n_blob_units: int) -> str:
    url = f"sqlite:///{root / 'bench.db'}"
    engine, blobs = create_store_engine(url), BlobStore(root / "blobs")
    cfgs = configs()
    shards = max(1, n_units // (len(cfgs) * len(TASKS)))
    keys = [(UnitKey(SWEEP, MODEL, content_id(c), t, f"{s}/{shards}"), c)
            for c in cfgs for t in TASKS for s in range(shards)][:n_units]
    register_sweep(engine, SWEEP, "dashboard load benchmark", {}, [k for k, _ in keys],
                   cfgs)
    for i, (key, cfg) in enumerate(keys[:n_blob_units]):
        write_unit_result(engine, blobs, result(key, cfg, i, traces=True))
    rest = keys[n_blob_units:]
    with session_scope(engine) as s:
        ids = {UnitKey(*r[1:]): r[0] for r in s.execute(select(
            units_t.c.unit_id, units_t.c.sweep_id, units_t.c.model_id, units_t.c.config_id,
            units_t.c.task, units_t.c.shard).where(units_t.c.sweep_id == SWEEP))}
        results = [(ids[k], result(k, c, n_blob_units + i, traces=False))
                   for i, (k, c) in enumerate(rest)]
        s.execute(insert(summaries_t), [_summary_row(uid, r) for uid, r in results])
        s.execute(insert(results_t), [{"unit_id": uid, "metric": m, "value": val}
                                      for uid, r in results for m, val in r.metrics.items()])
        s.execute(update(units_t).where(units_t.c.unit_id == bindparam("uid")).values(
            status="done", attempts=1, finished_at=bindparam("fin")),
            [{"uid": uid, "fin": r.finished_at} for uid, r in results])
    engine.dispose()
    return url


def first_view(url: str) -> dict[str, float]:
    """What app.py computes before drawing its first tab, on a cold read-only engine."""
    t = {}
    start = time.perf_counter()
    engine = readonly_engine(url)
    sweeps = q.list_sweeps(engine)
    t["list_sweeps"] = time.perf_counter() - start
    data = v.load_sweep_data(engine, str(sweeps["sweep_id"].iloc[0]))
    t["load_sweep_data"] = time.perf_counter() - sum(t.values()) - start
    v.load_health(engine, SWEEP)
    t["load_health"] = time.perf_counter() - sum(t.values()) - start
    fields = v.varying_fields(data.task_scores)
    scores = v.apply_filters(data.task_scores, {c: v.options_of(data.task_scores, c)
                                                for c in ("model_id", "task", *fields)})
    pts = v.quality_points(scores, "score", fields)
    v.pareto_front(pts, "avg_bits", "y", x_higher_better=False, y_higher_better=True)
    v.ablation_table(scores, fields[0] if fields else "method", fields)
    t["shaping"] = time.perf_counter() - sum(t.values()) - start
    t["total"] = time.perf_counter() - start
    engine.dispose()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--blobs", type=int, default=500, help="units written with a trace blob")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        url = fill(root, args.units, args.blobs)
        n_blobs = sum(1 for _ in BlobStore(root / "blobs").iter_uris())
        print(f"filled {args.units} units ({args.units * 4} metric rows), {n_blobs} trace blobs "
              f"in {time.perf_counter() - t0:.1f} s")
        t = first_view(url)
        print("first view (cold): " + ", ".join(f"{k} {val:.3f} s" for k, val in t.items()))
        print(f"RESULT dashboard first-view load: {t['total']:.3f} s (target < 3 s)")


if __name__ == "__main__":
    main()
