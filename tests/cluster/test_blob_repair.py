"""A truncated blob in a real sweep's store (tiny-random-llama, local Ray): `streamkv db check`
reports it and exits 1; a sweep writing the same content repairs the file; `--repair` and a
rerun recompute the units that used it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from cluster.cli import main as cli_main
from cluster.driver import run_sweep
from cluster.spec import apply_overrides
from store import create_store_engine

pytestmark = pytest.mark.slow


def _check(store_paths, *extra: str) -> int:
    return cli_main(["db", "check", "--db", store_paths[0], "--blobs", store_paths[1], *extra])


def test_a_truncated_blob_is_reported_and_repaired(local_ray, make_tiny_spec, store_paths,
                                                   capsys):
    spec = make_tiny_spec()
    assert run_sweep(spec, progress=False).succeeded == 8
    engine = create_store_engine(store_paths[0])
    try:
        with engine.connect() as conn:
            uri, size, users = conn.execute(text(
                "SELECT uri, bytes, COUNT(*) FROM blobs GROUP BY uri, bytes "
                "ORDER BY COUNT(*) DESC, uri")).first()
    finally:
        engine.dispose()
    path = Path(store_paths[1]) / uri
    path.write_bytes(path.read_bytes()[: size // 3])
    assert _check(store_paths) == 1
    out = capsys.readouterr().out
    assert out.count(uri) == users and f"has {size // 3} bytes, expected {size}" in out

    # A new sweep that writes the same content repairs the file for every unit using it.
    again = run_sweep(apply_overrides(spec, sweep_id="tiny-again"), progress=False)
    assert again.succeeded == 8
    assert path.stat().st_size == size and _check(store_paths) == 0
    capsys.readouterr()

    # Without such a sweep: --repair, then rerunning the sweep recomputes the units.
    path.write_bytes(b"not parquet")
    assert _check(store_paths) == 1 and _check(store_paths, "--repair") == 0
    capsys.readouterr()
    assert not path.exists()
    rerun = run_sweep(spec, progress=False)
    assert rerun.previously_done + rerun.succeeded == 8 and rerun.succeeded >= 1
    assert _check(store_paths) == 0 and path.stat().st_size == size
