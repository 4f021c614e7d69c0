"""`streamkv db query` output caps, `streamkv db check` (report, exit status, --repair), and a
sweep refusing a blob root outside the working directory: in-process, no Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.cli import main
from store import BlobStore, UnitKey, create_store_engine, queries, register_sweep, write_unit_result
from tests.store.conftest import INT8, build_result, cid


@pytest.fixture
def store(tmp_path):
    """A SQLite store with 3 stored units (distinct trace blobs) of sweep "sw"."""
    url, root = f"sqlite:///{tmp_path / 'store.db'}", str(tmp_path / "blobs")
    keys = [UnitKey("sw", "m", cid(INT8), "t", f"{i}/3") for i in range(3)]
    engine, blobs = create_store_engine(url), BlobStore(root)
    try:
        register_sweep(engine, "sw", "cli", {}, keys, [INT8])
        for i, key in enumerate(keys):
            write_unit_result(engine, blobs, build_result(key, INT8, tag=str(i)))
        refs = {k: queries.trace_refs(engine, k)["outlier_channels"] for k in keys}
    finally:
        engine.dispose()
    return {"url": url, "root": root, "keys": keys, "refs": refs}


def _count_line(out: str) -> int:
    return int(re.search(r"^\((\d+) rows?;", out, flags=re.M).group(1))


def test_query_output_is_capped_in_rows_and_bytes(store, capsys):
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    assert main(["db", "query", many, "--db", store["url"], "--max-rows", "25"]) == 0
    out, err = capsys.readouterr()
    assert _count_line(out) == 25 and "output cut: more than 25 rows" in err
    assert main(["db", "query", "SELECT randomblob(20000000) AS b", "--db", store["url"],
                 "--max-bytes", "5000"]) == 0
    out, err = capsys.readouterr()
    table = out[:out.rindex("\n(")]
    assert len(table.encode()) <= 5000 and "output cut" in err
    assert main(["db", "query", "SELECT 1 AS one", "--db", store["url"]]) == 0
    out, err = capsys.readouterr()
    assert _count_line(out) == 1 and err == ""


def test_query_default_caps_bound_a_huge_result(store, capsys):
    assert main(["db", "query", "SELECT randomblob(100000000) AS b, 'x' AS c", "--db",
                 store["url"]]) == 0
    out, err = capsys.readouterr()
    assert 9_000_000 < len(out.encode()) <= 10_000_000 + 200 and "output cut" in err


def test_query_caps_must_be_positive(store, capsys):
    with pytest.raises(SystemExit) as info:
        main(["db", "query", "SELECT 1", "--db", store["url"], "--max-rows", "0"])
    assert info.value.code == 2


def test_db_check_reports_a_damaged_blob_and_repair_makes_the_rerun_recompute(store, capsys):
    args = ["db", "check", "--db", store["url"], "--blobs", store["root"]]
    assert main(args) == 0
    assert "checked 3 blob reference(s)" in capsys.readouterr().out
    key, ref = store["keys"][1], store["refs"][store["keys"][1]]
    path = Path(store["root"]) / ref.uri
    path.write_bytes(path.read_bytes()[:100])
    assert main(args) == 1
    out, err = capsys.readouterr()
    problem = next(line for line in out.splitlines() if line.startswith("unit "))
    for part in (key.sweep_id, key.config_id, key.shard, "(done)", "outlier_channels", ref.uri,
                 "has 100 bytes"):
        assert part in problem
    assert "1 problem(s) in 1 unit(s)" in out and "--repair" in err

    assert main([*args, "--repair"]) == 0
    assert "1 unit(s) back to pending; rerun sweep(s) sw" in capsys.readouterr().out
    assert not path.exists()
    engine = create_store_engine(store["url"])
    try:
        assert queries.unit_record(engine, key).status == "pending"
        write_unit_result(engine, BlobStore(store["root"]), build_result(key, INT8, tag="1"))
    finally:
        engine.dispose()
    assert main(args) == 0 and path.stat().st_size == ref.bytes


def test_db_check_of_a_missing_blob_root_is_an_error(store, tmp_path, capsys):
    assert main(["db", "check", "--db", store["url"], "--blobs", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_a_sweep_refuses_a_relative_blob_root_outside_the_working_directory(tmp_path,
                                                                            monkeypatch, capsys):
    from cluster.sweep import main as sweep_main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = Path(__file__).resolve().parents[2] / "sweeps" / "tiny.yaml"
    code = sweep_main([str(spec), "--no-isolate", "--verbose", "--no-progress",
                       "--db", f"sqlite:///{work / 'never.db'}", "--blobs", "../outside"])
    err = capsys.readouterr().err
    assert code == 2 and "outside the working directory" in err and str(tmp_path / "outside") in err
    assert not (work / "never.db").exists() and not (tmp_path / "outside").exists()
