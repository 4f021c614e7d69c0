"""run_sweep on a local Ray (2 CPUs, 2 fake GPUs) with tiny-random-llama: completion, a killed
actor, an interrupted and resumed driver, a deterministic failure, an invalid spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.driver import run_sweep

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _statuses(helpers, url, sweep_id):
    return dict(helpers.db_rows(url, "SELECT status, count(*) FROM units WHERE sweep_id = ? GROUP BY status",
                                sweep_id))


def _summaries(helpers, url, sweep_id):
    return helpers.db_rows(url, "SELECT u.task, u.shard, u.config_id FROM unit_summaries s "
                                "JOIN units u ON u.unit_id = s.unit_id WHERE u.sweep_id = ?", sweep_id)


def test_sweep_completes_with_one_result_per_unit(local_ray, make_tiny_spec, store_paths, helpers):
    spec = make_tiny_spec()
    summary = run_sweep(spec, progress=False)
    assert (summary.succeeded, summary.failed, summary.skipped, summary.total) == (8, 0, 0, 8)
    url = store_paths[0]
    rows = _summaries(helpers, url, spec.resolved_sweep_id)
    assert len(rows) == 8 and len(set(rows)) == 8
    assert _statuses(helpers, url, spec.resolved_sweep_id) == {"done": 8}
    assert helpers.db_rows(url, "SELECT DISTINCT attempts FROM units") == [(1,)]
    assert helpers.db_rows(url, "SELECT status FROM sweeps") == [("done",)]
    # Actors asked for the fake GPUs but ran on the CPU.
    assert {d for (d,) in helpers.db_rows(url, "SELECT DISTINCT device FROM unit_summaries")} <= {"cpu"}
    # Run again: everything is already done, nothing is scheduled.
    again = run_sweep(spec, progress=False)
    assert (again.succeeded, again.skipped, again.attempts) == (0, 8, 0)


def test_killed_actor_loses_and_duplicates_nothing(local_ray, make_tiny_spec, store_paths, helpers):
    # Actor-side writes here, so both write paths are covered.
    spec = make_tiny_spec(resources={"num_actors": 2, "num_cpus_per_actor": 1, "write_results": "actor"})
    killed = []

    def kill_once(event):
        if not killed and event.finished >= 1:
            killed.append(event.actor_index)
            local_ray.kill(event.actor, no_restart=False)  # Ray restarts it and retries its unit

    summary = run_sweep(spec, progress=False, on_unit_done=kill_once)
    assert killed
    assert (summary.succeeded, summary.failed, summary.total) == (8, 0, 8)
    rows = _summaries(helpers, store_paths[0], spec.resolved_sweep_id)
    assert len(rows) == 8 and len(set(rows)) == 8
    assert _statuses(helpers, store_paths[0], spec.resolved_sweep_id) == {"done": 8}


def test_interrupted_driver_resumes_only_missing_units(local_ray, make_tiny_spec, store_paths, helpers):
    spec = make_tiny_spec()
    first = run_sweep(spec, progress=False, stop_after=3)
    assert first.interrupted and first.succeeded == 3
    url, sid = store_paths[0], spec.resolved_sweep_id
    done_before = {r for r in helpers.db_rows(url, "SELECT task, shard, config_id FROM units "
                                                   "WHERE sweep_id = ? AND status = 'done'", sid)}
    assert len(done_before) == 3
    assert helpers.db_rows(url, "SELECT status FROM sweeps") == [("running",)]
    attempts_before = {(t, s, c): a for t, s, c, a in helpers.db_rows(
        url, "SELECT task, shard, config_id, attempts FROM units WHERE sweep_id = ?", sid)}

    second = run_sweep(spec, progress=False)
    assert (second.succeeded, second.skipped, second.previously_done, second.total) == (5, 3, 3, 8)
    assert second.attempts == 5  # only the missing units ran
    after = {(t, s, c): a for t, s, c, a in helpers.db_rows(
        url, "SELECT task, shard, config_id, attempts FROM units WHERE sweep_id = ?", sid)}
    ran = {k for k in after if after[k] != attempts_before[k]}
    assert ran == set(after) - done_before
    assert all(after[k] == attempts_before[k] + 1 for k in ran)
    assert len(_summaries(helpers, url, sid)) == 8
    assert helpers.db_rows(url, "SELECT status FROM sweeps") == [("done",)]


def test_bad_source_fails_at_once_others_succeed(local_ray, tmp_path, store_paths, helpers):
    from cluster.spec import apply_overrides, parse_spec

    bad = tmp_path / "narrativeqa.jsonl"
    bad.write_text('{"this is": "not a LongBench row"}\nnot even json\n')
    spec = apply_overrides(parse_spec({
        "name": "bad-source", "models": ["tiny-random-llama"], "presets": ["streamkv-4"],
        "datasets": [{"task": "narrativeqa", "source": str(bad)},
                     {"task": "wikitext2_ppl", "context_length": 640, "limit": 1}],
        "shards": 1, "max_attempts": 2, "generation": {"max_length": 256},
        "resources": {"num_actors": 2},
    }, base_dir=REPO), db=store_paths[0], blobs=store_paths[1])
    summary = run_sweep(spec, progress=False)
    assert (summary.succeeded, summary.failed, summary.total) == (1, 1, 2)
    assert summary.attempts == 2  # bad data fails its unit once: another attempt would repeat it
    rows = helpers.db_rows(store_paths[0], "SELECT task, status, attempts, error FROM units ORDER BY task")
    (task, status, attempts, error), ok = rows[0], rows[1]
    assert (task, status, attempts) == ("narrativeqa", "failed", 1)
    assert "narrativeqa.jsonl" in error or "LongBench" in error or "json" in error.lower()
    assert ok[:3] == ("wikitext2_ppl", "done", 1)
    assert helpers.db_rows(store_paths[0], "SELECT status FROM sweeps") == [("failed",)]


def test_invalid_spec_fails_before_anything_runs(tmp_path):
    spec = tmp_path / "bad.yaml"
    db = tmp_path / "never.db"
    spec.write_text(json.dumps({
        "models": ["tiny-random-llama"],
        "grid": {"key_bits_normal": [4, 5], "chunk_size": [0]},
        "datasets": [{"task": "foo"}, {"task": "wikitext2_ppl", "shards": "two"}],
        "store": {"url": f"sqlite:///{db}"},
    }))
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "cluster.sweep", str(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    for path in ("grid.key_bits_normal[1]: 5 is out of range", "grid.chunk_size[0]: 0 is out of range",
                 "datasets[0].task: unknown task 'foo'", "datasets[1].shards: 'two' is out of range"):
        assert path in proc.stderr
    assert "nothing was run" in proc.stderr
    assert not db.exists()


def test_unreachable_cluster_and_database_say_what_to_do(tmp_path):
    base = [sys.executable, "-m", "cluster.sweep", "sweeps/tiny.yaml", "--no-progress"]
    proc = subprocess.run(check=False, args=base + ["--db", f"sqlite:///{tmp_path / 'a.db'}", "--address", "127.0.0.1:1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot reach the Ray cluster" in proc.stderr
    assert "ray start --head" in proc.stderr
    (tmp_path / "a-file").write_text("")  # a file where the database's folder should be
    proc = subprocess.run(check=False, args=base + ["--db", f"sqlite:///{tmp_path}/a-file/x.db", "--blobs", str(tmp_path / "b")],
                          cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "results store is not usable" in proc.stderr, proc.stderr
