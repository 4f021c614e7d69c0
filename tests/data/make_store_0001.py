"""Makes the "database produced by the 0001 release" fixtures of tests/store/test_store_migration.py.

Provenance record: this script must be run at commit 4be70fa (the pre-redesign code, store
schema revision 0001, configs with one column per CompressionConfig field). It uses that
commit's `streamkv.config.baseline` and the real store API, so the files hold exactly what
that release wrote. Later commits only use the files it wrote; they do not run it.

    git worktree add /tmp/store-0001 4be70fa && cd /tmp/store-0001
    export PG=$(bash scripts/start_postgres.sh start 55439)
    python tests/data/make_store_0001.py --postgres-url "$PG" --out <repo>/tests/data

Writes, into --out:
  store-0001.sqlite         the SQLite store (journal_mode=DELETE, vacuumed: one file)
  store-0001.postgres.sql   `pg_dump --no-owner --no-privileges --inserts` of a PostgreSQL
                            store filled the same way (INSERTs, so psycopg can replay it)
  store-0001.expected.json  row counts per table, every config's config_json, and the
                            v_task_scores rows, as the 0001 code reads them
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from store import (  # noqa: E402
    BlobStore,
    SampleRow,
    UnitKey,
    UnitResult,
    create_store_engine,
    finish_sweep,
    mark_failed,
    mark_running,
    mark_skipped,
    register_sweep,
    write_unit_result,
)
from streamkv.config import baseline  # noqa: E402

TABLES = ("sweeps", "configs", "units", "unit_summaries", "results", "samples", "blobs")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
CONFIGS = {
    "none": baseline("none"),
    "skv4": baseline("streamkv-4"),
    "kivi2": baseline("kivi-2"),
    # Non-default float, int and NULL-able fields, so the downgrade's refill is exercised.
    "skv4_abs": baseline("streamkv-4", chunk_size=256, outlier_threshold_abs=5.5,
                         quantize_current_chunk=True),
}
# (sweep, model, config, task, shard) -> (score, n_samples) of the units that finish;
# scores are exact in binary floating point so deltas compare exactly.
DONE = {
    ("sw-a", "m1", "none", "qa", "0/2"): (0.5, 2),
    ("sw-a", "m1", "none", "qa", "1/2"): (1.0, 2),
    ("sw-a", "m1", "skv4", "qa", "0/2"): (0.25, 1),
    ("sw-a", "m1", "skv4", "qa", "1/2"): (0.5, 3),
    ("sw-a", "m1", "none", "sum", "0/2"): (0.75, 4),
    ("sw-a", "m1", "skv4", "sum", "0/2"): (0.625, 4),
    ("sw-a", "m1", "kivi2", "qa", "0/2"): (0.375, 2),
    ("sw-b", "m2", "none", "qa", "0/1"): (0.5, 8),
    ("sw-b", "m2", "skv4_abs", "qa", "0/1"): (0.4375, 8),
    ("sw-b", "m2", "skv4_abs", "sum", "0/1"): (0.125, 8),  # no baseline for sum in sw-b
}


def unit_keys() -> dict[str, list[UnitKey]]:
    a = [UnitKey("sw-a", "m1", CONFIGS[c].config_id, t, f"{i}/2")
         for c in ("none", "skv4", "kivi2") for t in ("qa", "sum") for i in range(2)]
    b = [UnitKey("sw-b", "m2", CONFIGS[c].config_id, t, "0/1")
         for c in ("none", "skv4_abs") for t in ("qa", "sum")]
    return {"sw-a": a, "sw-b": b}


def result(key: UnitKey, name: str, score: float, n: int, minute: int,
           traces: bool) -> UnitResult:
    cfg = CONFIGS[name]
    samples = [SampleRow(f"s{i:03d}", f"pred {minute} {i}", [f"a{i}"], float(i % 2), 100 + i,
                         {"minute": minute}) for i in range(2)]
    tables = {}
    if traces:
        tables["outlier_channels"] = pa.table({"layer": pa.array([0, 1], pa.int32()),
                                               "channel": pa.array([3, 7], pa.int32())})
    return UnitResult(
        key=key, config=cfg.to_dict(), method=cfg.method,
        metrics={"score": score, "perplexity": 9.5, "kl": 0.015625, "top1_agreement": 0.96875},
        n_samples=n, avg_key_bits=float(cfg.key_bits_normal) + 0.25,
        avg_value_bits=float(cfg.value_bits_normal) + 0.25, kv_bytes=1_000_000,
        fp16_kv_bytes=4_000_000, compression_ratio=4.0, outlier_ratio=0.03125,
        prefill_tokens_per_s=1234.5, decode_tokens_per_s=45.5, peak_memory_bytes=2**30,
        environment={"model_id": key.model_id, "git_commit": "4be70fa", "seed": 0},
        samples=samples, traces=tables, worker="worker-0", device="cpu",
        started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=30))


def fill(url: str, blob_root: Path) -> None:
    engine, blobs = create_store_engine(url), BlobStore(blob_root)
    try:
        keys = unit_keys()
        for sweep_id, sweep_keys in keys.items():
            names = sorted({n for (s, _, n, _, _) in DONE if s == sweep_id})
            register_sweep(engine, sweep_id, f"fixture {sweep_id}", {"tasks": ["qa", "sum"]},
                           sweep_keys, [CONFIGS[n].to_dict() for n in names], created_by="0001")
        for minute, (spec, (score, n)) in enumerate(DONE.items()):
            sweep_id, model, name, task, shard = spec
            key = UnitKey(sweep_id, model, CONFIGS[name].config_id, task, shard)
            mark_running(engine, key, "worker-0", "cpu")
            write_unit_result(engine, blobs, result(key, name, score, n, minute, minute == 0))
        a = {(k.config_id, k.task, k.shard): k for k in keys["sw-a"]}
        kivi = CONFIGS["kivi2"].config_id
        mark_running(engine, a[(kivi, "qa", "1/2")], "worker-1", "cuda:0")
        mark_failed(engine, a[(kivi, "qa", "1/2")], "RuntimeError: CUDA out of memory", final=True)
        mark_running(engine, a[(kivi, "sum", "0/2")], "worker-1", "cuda:0")
        mark_failed(engine, a[(kivi, "sum", "0/2")], "worker lost", final=False)  # pending again
        mark_running(engine, a[(kivi, "sum", "1/2")], "worker-1", "cuda:0")  # stays running
        skv4 = CONFIGS["skv4"].config_id
        mark_skipped(engine, a[(skv4, "sum", "1/2")], "model too large")
        # none/sum/1/2 stays pending, never started
        finish_sweep(engine, "sw-b")
    finally:
        engine.dispose()


def snapshot(url: str) -> dict:
    """What the 0001 code reads back: counts, config_json by id, v_task_scores rows."""
    engine = create_engine(make_url(url).set(drivername=(
        "sqlite" if url.startswith("sqlite") else "postgresql+psycopg")))
    with engine.connect() as conn:
        counts = {t: conn.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in TABLES}
        counts["v_unit_results"] = conn.scalar(text("SELECT COUNT(*) FROM v_unit_results"))
        configs = {}
        for cid, cj in conn.execute(text("SELECT config_id, config_json FROM configs")):
            configs[cid] = json.loads(cj) if isinstance(cj, str) else cj
        rows = conn.execute(text(
            "SELECT sweep_id, model_id, config_id, method, task, n_shards, n_samples, score, "
            "baseline_score, score_delta FROM v_task_scores "
            "ORDER BY sweep_id, model_id, config_id, task")).mappings().all()
        status = dict(conn.execute(text(
            "SELECT status, COUNT(*) FROM units GROUP BY status")).all())
    engine.dispose()
    return {"revision": "0001", "counts": counts, "unit_status": status,
            "configs": dict(sorted(configs.items())), "v_task_scores": [dict(r) for r in rows]}


def make_sqlite(out: Path, tmp: Path) -> dict:
    path = out / "store-0001.sqlite"
    path.unlink(missing_ok=True)
    fill(f"sqlite:///{path}", tmp / "blobs-sqlite")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    con.execute("VACUUM")
    con.close()
    return snapshot(f"sqlite:///{path}")


def pg_dump_binary() -> str:
    found = shutil.which("pg_dump") or (sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
                                        or [None])[-1]
    if found is None:
        raise SystemExit("pg_dump not found (apt-get install postgresql-client)")
    return found


def make_postgres(admin_url: str, out: Path, tmp: Path) -> dict:
    admin_u = make_url(admin_url).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_u, isolation_level="AUTOCOMMIT")
    name = "store_0001_fixture"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_u.set(database=name).render_as_string(hide_password=False)
    try:
        fill(url, tmp / "blobs-pg")
        snap = snapshot(url)
        libpq = admin_u.set(drivername="postgresql").render_as_string(hide_password=False)
        sql = subprocess.run([pg_dump_binary(), "--no-owner", "--no-privileges", "--inserts",
                              "--dbname", libpq.rsplit("/", 1)[0] + f"/{name}"],
                             check=True, capture_output=True, text=True).stdout
        (out / "store-0001.postgres.sql").write_text(sql)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return snap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--postgres-url", required=True, help="URL of a PostgreSQL server (admin)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lite = make_sqlite(args.out, Path(tmp))
        pg = make_postgres(args.postgres_url, args.out, Path(tmp))
    if lite != pg:  # one expectation for both dialects: they must have read the same
        raise SystemExit(f"SQLite and PostgreSQL read differently:\n{lite}\n{pg}")
    (args.out / "store-0001.expected.json").write_text(json.dumps(lite, indent=1) + "\n")
    print(json.dumps(lite["counts"]))


if __name__ == "__main__":
    main()
