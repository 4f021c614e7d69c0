"""`check_blobs` / `repair_blobs` (the store side of `streamkv db check`) on both dialects: every
damaged or missing blob is reported with its unit, a write of the same content repairs the file,
and a repair puts the units back to pending for a rerun."""

from __future__ import annotations

from pathlib import Path

from store import completed_units, queries, register_sweep, write_unit_result
from streamkv.hashing import content_id
from store.integrity import check_blobs, repair_blobs


def _stored(engine, blobs, small_sweep, make_result, tags):
    """Results for the units of small_sweep, unit i with trace content `tags[i]`."""
    keys, cfgs = small_sweep["keys"], small_sweep["configs"]
    register_sweep(engine, "sw", "integrity", {}, keys, cfgs)
    for key, tag in zip(keys, tags):
        cfg = next(c for c in cfgs if content_id(c) == key.config_id)
        write_unit_result(engine, blobs, make_result(key, cfg, tag=tag))
    return keys, {k: queries.trace_refs(engine, k)["outlier_channels"] for k in keys}


def _truncate(blobs, ref) -> Path:
    path = Path(blobs.path_of(ref.uri))
    path.write_bytes(path.read_bytes()[: ref.bytes // 2])
    return path


def test_a_clean_store_has_no_problems(engine, blobs, small_sweep, make_result):
    _stored(engine, blobs, small_sweep, make_result, ["a", "b", "c", "d"])
    assert check_blobs(engine, blobs) == (4, [])


def test_problems_name_the_unit_the_blob_and_what_is_wrong(engine, blobs, small_sweep,
                                                           make_result):
    keys, refs = _stored(engine, blobs, small_sweep, make_result, ["a", "shared", "shared", "d"])
    _truncate(blobs, refs[keys[0]])
    Path(blobs.path_of(refs[keys[1]].uri)).unlink()  # one file, two units
    checked, problems = check_blobs(engine, blobs)
    assert checked == 4
    assert [(p.key, p.unit_status, p.kind, p.uri) for p in problems] == [
        (k, "done", "outlier_channels", refs[k].uri) for k in keys[:3]]
    assert "expected" in problems[0].problem and "bytes" in problems[0].problem
    assert problems[1].problem == problems[2].problem == "missing"


def test_a_write_of_the_same_content_repairs_the_file(engine, blobs, small_sweep, make_result):
    keys, refs = _stored(engine, blobs, small_sweep, make_result, ["a", "b", "c", "d"])
    path = _truncate(blobs, refs[keys[0]])
    assert len(check_blobs(engine, blobs)[1]) == 1
    # Another unit (here: the same one, rerun) stores the same trace content.
    cfg = next(c for c in small_sweep["configs"] if content_id(c) == keys[0].config_id)
    write_unit_result(engine, blobs, make_result(keys[0], cfg, tag="a"))
    assert path.stat().st_size == refs[keys[0]].bytes
    assert check_blobs(engine, blobs) == (4, [])
    assert queries.load_unit_result(engine, blobs, keys[0]).traces["outlier_channels"].num_rows


def test_repair_puts_the_units_back_to_pending_and_a_rerun_completes_them(
        engine, blobs, small_sweep, make_result):
    keys, refs = _stored(engine, blobs, small_sweep, make_result, ["a", "b", "c", "d"])
    bad = _truncate(blobs, refs[keys[1]])
    Path(blobs.path_of(refs[keys[2]].uri)).unlink()
    _, problems = check_blobs(engine, blobs)
    repair = repair_blobs(engine, blobs, problems)
    assert (repair.units_reset, repair.rows_deleted, repair.files_removed) == (2, 2, 1)
    assert repair.not_done == [] and repair.sweeps == ["sw"]
    assert not bad.exists()
    assert check_blobs(engine, blobs) == (2, [])  # nothing references a bad file any more
    assert completed_units(engine, "sw") == {keys[0], keys[3]}
    record = queries.unit_record(engine, keys[1])
    assert record.status == "pending" and "db check --repair" in record.error
    for key in keys[1:3]:  # the rerun
        cfg = next(c for c in small_sweep["configs"] if content_id(c) == key.config_id)
        write_unit_result(engine, blobs, make_result(key, cfg, tag="again"))
    assert check_blobs(engine, blobs) == (4, [])
    assert completed_units(engine, "sw") == set(keys)
