"""Cluster tests: one local Ray per test module (2 CPUs, 2 fake GPUs), tiny-random-llama specs
writing to a per-test SQLite file, a helper that stops a Ray head by its processes' ids, and
one that reads the rows of a printed results table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "sweeps" / "tiny.yaml"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # Fake GPUs: actors ask for num_gpus=1 and run on the CPU (no CUDA here).
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def store_paths(tmp_path):
    return f"sqlite:///{tmp_path / 'streamkv.db'}", str(tmp_path / "blobs")


def tiny_spec(store_paths, **changes):
    """sweeps/tiny.yaml (2 configs x 2 tasks x 2 shards = 8 units) pointed at a temp store."""
    import yaml

    from cluster.spec import apply_overrides, parse_spec

    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    spec = parse_spec(data, source="tiny", base_dir=REPO)
    return apply_overrides(spec, db=store_paths[0], blobs=store_paths[1])


def db_rows(url: str, sql: str, *params):
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def stop_processes(predicate) -> None:
    """Terminates (then kills) the processes whose command line matches, and their children,
    by pid: never by name, so other Ray clusters on this machine are left alone."""
    import psutil

    procs = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if predicate(" ".join(proc.info["cmdline"] or [])):
                procs.add(proc)
                procs.update(proc.children(recursive=True))
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the results table in `text` (`cluster.progress.results_table`): label -> cells.
    The table starts after its "-----" rule and ends at its legend."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip() or line.startswith("task cells"):
            break
        if line.startswith("  "):  # a wrapped label's continuation
            continue
        label = line[:line.index("  ")]
        rows[label] = line[len(label):].split()
    return rows


@pytest.fixture
def make_tiny_spec(store_paths):
    return lambda **changes: tiny_spec(store_paths, **changes)


@pytest.fixture(scope="session")
def helpers():
    import types

    return types.SimpleNamespace(REPO=REPO, TINY=TINY, tiny_spec=tiny_spec, db_rows=db_rows,
                                 stop_processes=stop_processes, table_rows=table_rows)
