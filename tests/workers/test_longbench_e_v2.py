"""LongBench-E and LongBench v2: loading, validation, prompts, buckets and splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.data import filter_v2, hub_data_files, load_longbench, to_row
from workers.metrics import bucket_scores, length_bucket, score_sample, v2_split_accuracy
from workers.prompts import build_prompt
from workers.tasks import get_task

DATA = Path(__file__).resolve().parents[1] / "data"
V2_FILE = DATA / "longbench-v2-synthetic" / "longbench_v2.jsonl"
V2_ROWS = [json.loads(line) for line in V2_FILE.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- LongBench-E --------------------------------------------------------------------------------
def test_e_rows_load_from_a_task_e_file(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "longbench-sample" / "trec.jsonl").read_text().splitlines()]
    _write_jsonl(tmp_path / "trec_e.jsonl", rows)
    samples = load_longbench(tmp_path, "trec_e")
    assert [sample.length for sample in samples] == [row["length"] for row in rows]
    assert [length_bucket(sample.length) for sample in samples] == ["0-4k", "4-8k"]


def test_e_rows_need_their_length(tmp_path: Path) -> None:
    row = json.loads((DATA / "longbench-sample" / "hotpotqa.jsonl").read_text().splitlines()[0])
    del row["length"]
    path = _write_jsonl(tmp_path / "hotpotqa_e.jsonl", [row])
    with pytest.raises(ValueError, match=r"hotpotqa_e.jsonl, line 1, field 'length': missing; LongBench-E"):
        load_longbench(path, "hotpotqa_e")
    assert load_longbench(path, "hotpotqa")[0].length > 0  # v1 counts words instead


def test_length_buckets_at_their_edges() -> None:
    edges = {0: "0-4k", 3999: "0-4k", 4000: "4-8k", 7999: "4-8k", 8000: "8k+", 10**6: "8k+"}
    assert {length: length_bucket(length) for length in edges} == edges
    assert bucket_scores([(100, 1.0), (200, 0.0), (9000, 0.5)]) == {"0-4k": 50.0, "8k+": 50.0}


# --- LongBench v2 -------------------------------------------------------------------------------
def test_v2_rows_load_with_their_choices_and_splits() -> None:
    samples = load_longbench(V2_FILE, "longbench_v2")
    assert [sample.id for sample in samples] == [row["_id"] for row in V2_ROWS]
    first = samples[0]
    assert first.choices == ("Red", "Blue ", "Green", "Yellow") and first.answers == ("B",)
    assert (first.difficulty, first.length_class) == ("easy", "short")
    assert [to_row(sample)["answer"] for sample in samples] == [row["answer"] for row in V2_ROWS]


def test_v2_loads_the_official_json_array_layout(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(V2_ROWS), encoding="utf-8")
    assert [sample.id for sample in load_longbench(path, "longbench_v2")] == [row["_id"] for row in V2_ROWS]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([V2_ROWS[0], dict(V2_ROWS[1], difficulty="medium")]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.json, item 2, field 'difficulty': 'medium' is not one of easy, hard"):
        load_longbench(bad, "longbench_v2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "E"}, r"line 2, field 'answer': 'E' is not one of A, B, C, D"),
        ({"length": 12000}, r"line 2, field 'length': expected a string, got int"),
        ({"length": "tiny"}, r"line 2, field 'length': 'tiny' is not one of short, medium, long"),
        ({"choice_C": None}, r"line 2, field 'choice_C': expected a string"),
        ({"domain": 3}, r"line 2, field 'domain': expected a string, got int"),
    ],
)
def test_v2_validation_names_file_line_and_field(tmp_path: Path, change: dict, message: str) -> None:
    _write_jsonl(tmp_path / "longbench_v2.jsonl", [V2_ROWS[0], dict(V2_ROWS[1], **change)])
    with pytest.raises(ValueError, match=message):
        load_longbench(tmp_path, "longbench_v2")


def test_v2_missing_field_is_named(tmp_path: Path) -> None:
    row = dict(V2_ROWS[0])
    del row["choice_D"]
    path = _write_jsonl(tmp_path / "v2.jsonl", [row])
    with pytest.raises(ValueError, match=r"v2.jsonl, line 1, field 'choice_D': missing"):
        load_longbench(path, "longbench_v2")


def test_filter_v2_by_difficulty_and_length() -> None:
    samples = load_longbench(V2_FILE, "longbench_v2")
    assert [s.id for s in filter_v2(samples, difficulty="hard")] == ["synthetic-v2-02", "synthetic-v2-03"]
    assert [s.id for s in filter_v2(samples, length="long")] == ["synthetic-v2-03", "synthetic-v2-04"]
    assert [s.id for s in filter_v2(samples, "easy", "long")] == ["synthetic-v2-04"]
    assert filter_v2(samples) == samples
    with pytest.raises(ValueError, match="difficulty must be one of easy, hard"):
        filter_v2(samples, difficulty="medium")
    with pytest.raises(ValueError, match="length must be one of short, medium, long"):
        filter_v2(samples, length="8k+")
    with pytest.raises(ValueError, match="LongBench v2 samples"):
        filter_v2(load_longbench(DATA / "longbench-sample", "trec"))


def test_v2_prompt_is_the_official_replace_chain() -> None:
    samples = {s.id: s for s in load_longbench(V2_FILE, "longbench_v2")}
    prompt = build_prompt(get_task("longbench_v2"), samples["synthetic-v2-01"])
    assert prompt == (
        "Please read the following text and answer the question below.\n\n<text>\n"
        "SYNTHETIC TEST TEXT. The lighthouse keeper lived in a small house by the cliff. Its door was painted "
        "blue every spring.\n</text>\n\n"
        "What is the correct answer to this question: Which colour is the door of the lighthouse keeper's house?\n"
        "Choices:\n(A) Red\n(B) Blue\n(C) Green\n(D) Yellow\n\n"
        'Format your response as follows: "The correct answer is (insert answer here)".'
    )
    # The $Q$ inside the document is replaced too, as pred.py's chain does.
    code_prompt = build_prompt(get_task("longbench_v2"), samples["synthetic-v2-03"])
    assert "# What does the function return for an empty list? appears here" in code_prompt
    assert "$" not in code_prompt


def test_v2_prompt_needs_choices() -> None:
    trec = load_longbench(DATA / "longbench-sample", "trec")[0]
    with pytest.raises(ValueError, match="four choices"):
        build_prompt(get_task("longbench_v2"), trec)


def test_v2_scores_and_splits() -> None:
    spec = get_task("longbench_v2")
    samples = load_longbench(V2_FILE, "longbench_v2")
    responses = ["The correct answer is (B)", "**The correct answer is (C)**", "The correct answer is B", ""]
    scores = [score_sample(spec, text, s.answers) for text, s in zip(responses, samples)]
    assert scores == [1.0, 1.0, 0.0, 0.0]
    splits = v2_split_accuracy((s.difficulty, s.length_class, score) for s, score in zip(samples, scores))
    assert splits == {"overall": 50.0, "easy": 50.0, "hard": 50.0, "short": 100.0, "medium": 100.0, "long": 0.0}
    with pytest.raises(ValueError, match="unknown LongBench v2 split values"):
        v2_split_accuracy([("easy", "8k+", 1.0)])


def test_v2_hub_path_is_the_official_data_json() -> None:
    assert hub_data_files("THUDM/LongBench-v2", "longbench_v2") == "hf://datasets/THUDM/LongBench-v2/data.json"
    e_files = hub_data_files("someone/LongBench", "hotpotqa_e")
    assert e_files == "hf://datasets/someone/LongBench/hotpotqa_e/test-*.parquet"


# --- through a work unit, on a tiny random Llama -------------------------------------------------
def test_a_v2_unit_runs_end_to_end() -> None:
    import torch

    from streamkv import CompressedLlamaForCausalLM, preset
    from streamkv.loading import LoadedModel
    from tests.conftest import tiny_llama_config
    from tests.workers.test_runner import smollm2_tokenizer, unit
    from workers.runner import run_unit

    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    model = CompressedLlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)), preset("none")).eval()
    loaded = LoadedModel(model, tokenizer, "tiny-llama-test", "0" * 64, 0.0)
    # One v2 sample: 128 new tokens on two shared CPU cores is the slow part of this test.
    v2 = run_unit(loaded, unit(preset("none"), "longbench_v2", source=str(V2_FILE), max_length=256, limit=1))
    assert v2.n_samples == 1 and v2.samples[0].answers[0] in "ABCD" and v2.samples[0].score in (0.0, 1.0)
    # The splits are computable from the store, and the row says which template/metric made it.
    extra = v2.samples[0].extra
    assert extra["difficulty"] in ("easy", "hard") and extra["length_class"] in ("short", "medium", "long")
    assert v2.environment["task_version"] == get_task("longbench_v2").version
    assert v2.environment["versions"]["rouge"] == "1.0.1"


def test_e_units_take_their_rows_with_the_length_the_buckets_need(tmp_path: Path) -> None:
    from streamkv import preset
    from workers.units import WorkUnit, longbench_samples, task_kind

    (tmp_path / "trec_e.jsonl").write_text((DATA / "longbench-sample" / "trec.jsonl").read_text(), encoding="utf-8")
    e_unit = WorkUnit(model="tiny-llama", config=preset("none"), task="trec_e", source=str(tmp_path), shard="0/1")
    assert task_kind("trec_e") == task_kind("longbench_v2") == "longbench"
    # The runner stores each sample's `length` as `length_words`, so buckets need no other data.
    assert sorted(length_bucket(sample.length) for sample in longbench_samples(e_unit)) == ["0-4k", "4-8k"]


def test_a_v2_unit_of_one_split_takes_only_its_samples_and_is_stored_under_its_name() -> None:
    from streamkv import preset
    from workers.units import WorkUnit, dataset_sha256, longbench_samples

    def v2(**kw) -> WorkUnit:
        return WorkUnit(model="tiny-llama", config=preset("none"), task="longbench_v2", source=str(V2_FILE), **kw)

    hard = v2(difficulty="hard")
    assert [s.id for s in longbench_samples(hard)] == ["synthetic-v2-02", "synthetic-v2-03"]
    assert hard.key.task == "longbench_v2@hard"
    both = v2(difficulty="easy", length_class="long")
    assert [s.id for s in longbench_samples(both)] == ["synthetic-v2-04"] and both.key.task == "longbench_v2@easy@long"
    # the split comes before sharding: the shards of a split hold its samples only, each once
    shards = [longbench_samples(v2(length_class="long", shard=f"{i}/2")) for i in range(2)]
    assert sorted(s.id for part in shards for s in part) == ["synthetic-v2-03", "synthetic-v2-04"]
    sha, what = dataset_sha256(hard)
    assert sha == dataset_sha256(v2())[0] and what == "file longbench_v2.jsonl (longbench_v2@hard rows)"
    assert v2().key.task == "longbench_v2"
    with pytest.raises(ValueError, match="difficulty='medium' is out of range .allowed: easy | hard"):
        v2(difficulty="medium")
    with pytest.raises(ValueError, match="length_class='short' is only for task longbench_v2, not 'trec'"):
        WorkUnit(model="m", config=preset("none"), task="trec", source=str(V2_FILE), length_class="short")


def test_v2_split_names_round_trip() -> None:
    from store.cells import parse_cell, parse_v2_split, v2_split_name

    for difficulty in (None, "easy", "hard"):
        for length in (None, "short", "medium", "long"):
            name = v2_split_name("longbench_v2", difficulty, length)
            assert parse_v2_split(name) == ("longbench_v2", difficulty, length) and parse_cell(name) is None
    assert parse_v2_split("longbench_v2@long@hard") is None and parse_v2_split("trec@hard") is None
