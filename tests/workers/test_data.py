"""Loading and validating LongBench rows, sharding, hashing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.data import (
    LongBenchSample,
    file_sha256,
    hub_data_files,
    load_longbench,
    parse_shard,
    shard,
    to_row,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "tests" / "data" / "longbench-sample"
MINIMAL = {"input": "Who?", "context": "Ann met Bob.", "answers": ["Ann"], "_id": "r1"}


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _sample(sample_id: str) -> LongBenchSample:
    return LongBenchSample("q", "c", ("a",), sample_id, 2, "t", "en", None)


# --- the real sample rows -------------------------------------------------------------------


def test_loads_the_real_sample_rows_with_their_fields() -> None:
    trec = load_longbench(SAMPLE_DIR, "trec")
    assert [s.id for s in trec] == ["bb86302b1936b14c09091143ce6e0d4d4013c4789ece0230", trec[1].id]
    first = trec[0]
    assert first.input == "Question: Where was the first golf course in the United States ?\nType:"
    assert first.answers == ("Other location",)
    assert (first.length, first.dataset, first.language) == (3806, "trec", "en")
    assert first.all_classes is not None and len(first.all_classes) == 50 and "Other location" in first.all_classes
    lcc = load_longbench(SAMPLE_DIR / "lcc.jsonl", "lcc")
    assert (lcc[0].language, lcc[0].input, lcc[0].all_classes, lcc[0].length) == ("csharp", "", None, 5243)
    assert lcc == load_longbench(SAMPLE_DIR, "lcc")


def test_every_sample_file_loads() -> None:
    for path in sorted(SAMPLE_DIR.glob("*.jsonl")):
        samples = load_longbench(path, path.stem)
        assert len(samples) == 2 and all(s.dataset == path.stem and s.answers for s in samples)


# --- validation -------------------------------------------------------------------------------


def test_optional_fields_get_defaults(tmp_path: Path) -> None:
    [sample] = load_longbench(_write_jsonl(tmp_path / "qa.jsonl", [MINIMAL]), "qa")
    assert sample == LongBenchSample("Who?", "Ann met Bob.", ("Ann",), "r1", 4, "qa", "en", None)


@pytest.mark.parametrize("field", ["input", "context", "answers", "_id"])
def test_missing_required_field_names_file_line_and_field(tmp_path: Path, field: str) -> None:
    bad = {key: value for key, value in MINIMAL.items() if key != field}
    path = _write_jsonl(tmp_path / "qa.jsonl", [MINIMAL | {"_id": "r0"}, bad])
    with pytest.raises(ValueError, match=rf"qa\.jsonl, line 2, field '{field}': missing"):
        load_longbench(path, "qa")


@pytest.mark.parametrize(
    ("field", "value"),
    [("answers", "Ann"), ("answers", []), ("answers", [1]), ("input", None), ("length", "12"), ("length", True),
     ("all_classes", "A"), ("language", 3)],
)  # fmt: skip
def test_wrong_types_name_the_field(tmp_path: Path, field: str, value: Any) -> None:
    path = _write_jsonl(tmp_path / "qa.jsonl", [MINIMAL | {field: value}])
    with pytest.raises(ValueError, match=rf"line 1, field '{field}'"):
        load_longbench(path, "qa")


def test_bad_json_names_the_line_counting_blank_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "qa.jsonl", [MINIMAL, "", '{"input": "x",'])
    with pytest.raises(ValueError, match=r"qa\.jsonl, line 3: invalid JSON"):
        load_longbench(path, "qa")
    path = _write_jsonl(tmp_path / "qa.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        load_longbench(path, "qa")


def test_validation_happens_before_anything_is_returned(tmp_path: Path) -> None:
    rows = [MINIMAL | {"_id": f"r{i}"} for i in range(50)] + [{"input": "x"}]
    with pytest.raises(ValueError, match="line 51"):
        load_longbench(_write_jsonl(tmp_path / "qa.jsonl", rows), "qa")


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"line 2, field '_id': duplicate 'r1', first at .*line 1"):
        load_longbench(_write_jsonl(tmp_path / "qa.jsonl", [MINIMAL, MINIMAL]), "qa")


def test_pretemplated_kvpress_rows_are_refused(tmp_path: Path) -> None:
    row = {"context": "Read...", "question": "Q", "answer_prefix": "Answer:", "answers": ["a"], "_id": "r1"}
    with pytest.raises(ValueError, match="pre-templated kvpress"):
        load_longbench(_write_jsonl(tmp_path / "qa.jsonl", [row]), "qa")


# --- parquet and sources --------------------------------------------------------------------


def test_parquet_gives_the_same_samples_as_jsonl(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (SAMPLE_DIR / "trec.jsonl").read_text(encoding="utf-8").splitlines()]
    folder = tmp_path / "lb"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "trec.parquet")
    assert load_longbench(folder, "trec") == load_longbench(SAMPLE_DIR, "trec")


def test_parquet_rows_are_validated_too(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in MINIMAL.items() if k != "context"}]), path)
    with pytest.raises(ValueError, match=r"qa\.parquet, row 1, field 'context': missing"):
        load_longbench(path, "qa")


def test_folder_must_hold_exactly_one_file_for_the_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="found neither"):
        load_longbench(tmp_path, "qa")
    _write_jsonl(tmp_path / "qa.jsonl", [MINIMAL])
    pq.write_table(pa.Table.from_pylist([MINIMAL]), tmp_path / "qa.parquet")
    with pytest.raises(ValueError, match="found both"):
        load_longbench(tmp_path, "qa")
    (tmp_path / "qa.csv").write_text("x")
    with pytest.raises(ValueError, match=r"\.jsonl or \.parquet"):
        load_longbench(tmp_path / "qa.csv", "qa")


@pytest.mark.parametrize(
    "source", ["THUDM/LongBench", "hf://datasets/THUDM/LongBench", "hf://datasets/thudm/longbench/"]
)
def test_the_script_based_hub_dataset_is_refused_with_alternatives(source: str) -> None:
    with pytest.raises(ValueError, match=r"loading script.*data\.zip.*hf://datasets/<owner>/<name>"):
        load_longbench(source, "trec")


def test_a_missing_local_path_never_falls_back_to_the_hub() -> None:
    hint = "no local file or folder 'someone/LongBench'; .*hf://datasets/someone/LongBench"
    with pytest.raises(ValueError, match=hint):
        load_longbench("someone/LongBench", "trec")
    with pytest.raises(ValueError, match="no local file or folder"):
        load_longbench(REPO / "no-such-folder", "trec")


def test_hub_source_reads_the_task_parquet_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[Any, ...]] = []

    def fake_load_dataset(builder: str, data_files: str, split: str) -> list[dict[str, Any]]:
        calls.append((builder, data_files, split))
        return [MINIMAL]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert hub_data_files("Xnhyacinth/LongBench", "trec") == "hf://datasets/Xnhyacinth/LongBench/trec/test-*.parquet"
    [sample] = load_longbench("hf://datasets/Xnhyacinth/LongBench", "trec")
    assert calls == [("parquet", "hf://datasets/Xnhyacinth/LongBench/trec/test-*.parquet", "train")]
    assert sample.id == "r1" and sample.dataset == "trec"
    with pytest.raises(ValueError, match="hub source must be"):
        load_longbench("hf://datasets/just-a-name", "trec")


def test_to_row_is_the_inverse_of_loading(tmp_path: Path) -> None:
    samples = load_longbench(SAMPLE_DIR, "trec")
    path = _write_jsonl(tmp_path / "trec.jsonl", [to_row(s) for s in samples])
    assert load_longbench(path, "trec") == samples
    fields = ["input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"]
    assert list(to_row(samples[0])) == fields


# --- sharding ---------------------------------------------------------------------------------


def test_shard_assignment_is_pinned() -> None:
    # SHA-256 order of the ids is d f c b e h a g; dealt round-robin into 3 shards.
    samples = [_sample(c) for c in "abcdefgh"]
    assert [[s.id for s in shard(samples, i, 3)] for i in range(3)] == [["a", "b", "d"], ["e", "f", "g"], ["c", "h"]]
    assert shard(samples, 0, 1) == samples


@given(st.sets(st.text(min_size=1, max_size=8), max_size=40), st.integers(1, 8), st.randoms(use_true_random=False))
def test_shards_partition_the_samples(ids: set[str], count: int, rng: random.Random) -> None:
    samples = [_sample(i) for i in sorted(ids)]
    shards = [shard(samples, index, count) for index in range(count)]
    seen = [s.id for part in shards for s in part]
    assert sorted(seen) == sorted(ids)  # disjoint and covering
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    shuffled = samples[:]
    rng.shuffle(shuffled)
    for index, part in enumerate(shards):
        assert {s.id for s in shard(shuffled, index, count)} == {s.id for s in part}
        # Each shard keeps the input order.
        assert part == [s for s in samples if s in part]


@pytest.mark.parametrize(("index", "count"), [(-1, 4), (4, 4), (0, 0)])
def test_shard_rejects_bad_indices(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        shard([_sample("a")], index, count)


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    assert parse_shard("0/1") == (0, 1)
    for bad in ["4/4", "5/4", "0/0", "-1/4", "a/b", "1", "1/2/3", ""]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


# --- hashing ----------------------------------------------------------------------------------


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "abc.txt"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    # The value stated in data/wikitext-2-raw/README.md; the file is larger than one read block.
    wikitext = REPO / "data" / "wikitext-2-raw" / "wiki.test.raw"
    assert file_sha256(wikitext) == "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"
