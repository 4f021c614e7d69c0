"""A local sweep runs in a private network namespace: Ray's listeners reach loopback only."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster import isolation

REPO = Path(__file__).resolve().parents[2]


def test_only_local_stores_are_isolated(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(isolation.MARKER, raising=False)
    assert isolation.wanted(None, "sqlite:///results/streamkv.db", "results/blobs")
    assert not isolation.wanted("10.0.0.5:6379", "sqlite:///x.db", "results/blobs")  # a cluster
    assert not isolation.wanted(None, "postgresql+psycopg://u@db/x", "results/blobs")  # a server
    assert not isolation.wanted(None, "sqlite:///x.db", "s3://bucket/blobs")  # object storage
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # under `ray job submit`
    assert not isolation.wanted(None, "sqlite:///x.db", "results/blobs")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv(isolation.MARKER, "1")  # already inside
    assert not isolation.wanted(None, "sqlite:///x.db", "results/blobs")


@pytest.mark.slow
def test_local_sweep_sees_only_loopback(tmp_path):
    if not isolation.available():
        pytest.skip("this machine does not permit `unshare -rn` (user + network namespaces)")
    cmd = [sys.executable, "-m", "cluster.sweep", str(REPO / "sweeps" / "tiny.yaml"), "--limit", "1",
           "--db", f"sqlite:///{tmp_path / 'x.db'}", "--blobs", str(tmp_path / "blobs"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "private network namespace" in proc.stdout
    assert "network interfaces in this run: lo\n" in proc.stdout
    assert "8 succeeded" in proc.stdout
