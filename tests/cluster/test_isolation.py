"""A local sweep runs in a private network namespace: Ray's listeners reach loopback only."""

from cluster import isolation


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


# The local run in a namespace (only `lo` in it, the sweep completes there) is checked by the
# end-to-end run of tests/cluster/test_sweep_output.py.
