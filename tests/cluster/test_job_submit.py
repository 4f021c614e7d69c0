"""A real `ray job submit` of sweeps/tiny.yaml against a head node started by the test."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_tiny_sweep(tmp_path, helpers):
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    # A short private temp dir (Ray's socket paths must stay under 107 bytes): it marks every
    # process of this head, so the test stops exactly those and no other Ray on the machine.
    temp_dir = Path("/tmp") / f"skv-ray-{uuid.uuid4().hex[:8]}"
    gcs_port, dash_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # Ray 2.60 head: token auth on by default
    # As in an activated environment: the job's `python` is this interpreter (the project's venv).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("RAY_ADDRESS", None)
    db = tmp_path / "job.db"
    start = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port), "--num-cpus", "2",
             "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", str(temp_dir)]
    try:
        started = subprocess.run(check=False, args=start, capture_output=True, text=True, timeout=180, env=env)
        if started.returncode != 0:
            print(started.stdout, started.stderr)
            pytest.skip(f"`ray start` failed in this environment (rc {started.returncode}); see the log above")
        submit = [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dash_port}",
                  "--working-dir", str(REPO),
                  "--runtime-env-json", '{"excludes": [".venv", "results", ".git", "*.db"]}', "--",
                  "python", "-m", "cluster.sweep", "sweeps/tiny.yaml", "--db", f"sqlite:///{db}",
                  "--blobs", str(tmp_path / "blobs"), "--no-progress"]
        job = subprocess.run(check=False, args=submit, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log
        assert "8 succeeded, 0 failed" in log, log
        assert "streamkv dashboard --db" in log
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM unit_summaries").fetchone() == (8,)
            assert conn.execute("SELECT DISTINCT status FROM units").fetchall() == [("done",)]
    finally:
        marker = str(temp_dir)
        helpers.stop_processes(lambda cmd: marker in cmd or f":{gcs_port}" in cmd)
        shutil.rmtree(temp_dir, ignore_errors=True)
