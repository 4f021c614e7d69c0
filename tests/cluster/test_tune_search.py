"""`streamkv tune` end to end on the tiny random model: the driver is killed mid-search, the
same command resumes and completes, the store holds each trial's units once, a trial whose
settings the method refuses errors without stopping the search, a start point is tried as
given, and the chosen config is
checked on held-apart shards and printed as a YAML block. Slow (a local Ray, twice)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "tiny-tune",
    "model": "tiny-random-llama",
    "base": {"preset": "streamkv-3", "chunk_size": 64},
    "space": {
        # 16-bit keys exceed the 8 sink/outlier bits: the method refuses those trials
        "key_bits_normal": {"choice": [3, 16]},
        "ema_decay": {"uniform": [0.5, 0.99]},
        "layer_value_bits": {"per_layer": [2, 4, 8], "groups": 2},
    },
    "data": {"task": "wikitext2_ppl", "context_length": 128, "shards": 5, "limit": 1,
             "search_shards": [0, 1, 2], "holdout_shards": [3, 4]},
    "objective": "kl",
    "constraint": {"max_avg_bits": 7.0},  # tiny heads: scales cost ~2 bits at 128 tokens
    # a start point is tried as given (no uniform sample lands on exactly 0.777)
    "search": {"num_samples": 6, "seed": 1, "asha": None,
               "start": [{"key_bits_normal": 3, "ema_decay": 0.777, "layer_value_bits": [8, 2]}]},
    "resources": {"num_actors": 2, "num_cpus_per_actor": 0.5},
}


def units(db: Path):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT config_id, shard, status FROM units").fetchall()


def command(spec: Path, tmp: Path) -> list[str]:
    return [sys.executable, "-m", "cluster.tune", str(spec), "--db", f"sqlite:///{tmp / 's.db'}",
            "--blobs", str(tmp / "blobs"), "--storage", str(tmp / "tune")]


@pytest.mark.slow
def test_killed_search_resumes_and_stores_each_trial_once(tmp_path):
    spec = tmp_path / "tiny_tune.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command(spec, tmp_path), cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if (tmp_path / "s.db").exists() and sum(s == "done" for *_, s in units(tmp_path / "s.db")) >= 3:
            break
        time.sleep(2)
    assert first.poll() is None, "the first run ended before it could be interrupted"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, by their group
    first.wait()
    before = {(c, s) for c, s, status in units(tmp_path / "s.db") if status == "done"}

    second = subprocess.run(command(spec, tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900, start_new_session=True)
    out = second.stdout
    assert second.returncode == 0, out + second.stderr
    assert "resuming" in out
    rows = units(tmp_path / "s.db")
    keys = [(c, s) for c, s, _ in rows]
    assert len(keys) == len(set(keys))  # each unit once
    assert before <= {(c, s) for c, s, status in rows if status == "done"}  # nothing done was lost
    from store.searches import trials

    from store import readonly_engine
    from store.queries import result_frame

    engine = readonly_engine(f"sqlite:///{tmp_path / 's.db'}", pooled=False)
    found = trials(result_frame(engine, None).to_dict("records"), (0, 1, 2), (3, 4), 5)
    engine.dispose()
    chosen = [t for t in found if t.holdout is not None and t.method != "none"]
    assert len(chosen) == 1 and chosen[0].complete
    assert any(t.method == "none" and t.holdout is not None for t in found)  # the baseline, held apart
    block = out.split("points:\n", 1)[1]
    point = yaml.safe_load("points:\n" + block)["points"][0]
    from streamkv.methods import method_from_dict

    assert method_from_dict(point).config_id == chosen[0].config_id
    assert chosen[0].config["key_bits_normal"] == 3  # 16-bit trials were refused, never stored
    assert all(t.config.get("key_bits_normal") != 16 for t in found)
    started = [t for t in found if t.config.get("ema_decay") == 0.777]
    assert len(started) == 1 and started[0].config["layer_value_bits"] == [8, 2] and started[0].complete


@pytest.mark.slow
def test_a_multi_objective_search_over_per_head_bits_prints_its_pareto_front(tmp_path):
    spec = tmp_path / "tiny_pareto.yaml"
    spec.write_text(yaml.safe_dump({
        **SPEC, "name": "tiny-pareto", "multi_objective": True,
        # bits per KV head (the tiny model has 2), one layer group
        "space": {"key_bits_normal": {"choice": [2, 4]}, "head_value_bits": {"per_head": [2, 8], "groups": 1}},
        "data": {**SPEC["data"], "search_shards": [0, 1], "holdout_shards": [3]},
        "search": {"num_samples": 4, "seed": 0, "asha": {"grace_period": 1, "reduction_factor": 2}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(command(spec, tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900, start_new_session=True)
    assert run.returncode == 0, run.stdout + run.stderr
    front_text = run.stdout.split("Pareto front (kl vs measured bits, complete trials, ", 1)[1]
    n_front = int(front_text.split(")", 1)[0])
    from store import readonly_engine
    from store.queries import result_frame
    from store.searches import trials

    engine = readonly_engine(f"sqlite:///{tmp_path / 's.db'}", pooled=False)
    found = [t for t in trials(result_frame(engine, None).to_dict("records"), (0, 1), (3,), 5)
             if t.method != "none" and t.complete]
    engine.dispose()
    from cluster.tune import pareto_trials

    front = pareto_trials(found, "kl")
    assert n_front == len(front) >= 1
    for t in front:  # printed, and no complete trial beats it in both KL and measured bits
        assert t.config_id in front_text
        assert not any(o.search.kl < t.search.kl and o.search.avg_bits < t.search.avg_bits for o in found)
    assert "chosen " in run.stdout  # within the budget, best KL: what `points:` prints
    for t in found:  # each trial stored its per-head allocation: one row per layer, one entry per head
        rows = t.config["head_value_bits"]
        assert len(rows) == 2 and all(len(r) == 2 and r == rows[0] for r in rows)
