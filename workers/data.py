"""LongBench-format rows: loading with validation, writing, sharding, file hashes.

A LongBench v1 row is a JSON object with `input`, `context`, `answers`, `length`,
`dataset`, `language`, `all_classes` and `_id`. Every row is validated before anything is
returned, so a bad file fails at load time with its path, line and field, not halfway
through a GPU run. Extra fields (such as the sample files' `source_index`) are ignored.

LongBench-E rows (`<task>_e`) have the v1 fields; their `length` is required, since it picks
the length bucket. LongBench v2 rows (task `longbench_v2`) have `_id`, `question`,
`choice_A`..`choice_D`, `answer` (A-D), `context`, `difficulty` (easy/hard) and `length`
(short/medium/long), plus `domain` and `sub_domain`; `filter_v2` selects by difficulty and
length. A v2 sample keeps the question as `input`, the answer letter as its one answer and
the four choices in `choices`; its `length` is a word count of question and context, the
category is in `length_class`.

Sources, in `load_longbench(source, task)`:
- a `.jsonl` or `.parquet` file;
- a folder holding `<task>.jsonl` or `<task>.parquet` (the layout of LongBench's data.zip);
- `hf://datasets/<owner>/<name>`: a hub repository of parquet files laid out as
  `push_to_hub(config_name=<task>)` writes them, `<task>/test-*.parquet`; for
  `longbench_v2`, a repository laid out as THUDM/LongBench-v2, one `data.json` array. The hub
  is used only when asked for this way, never as a fallback for a missing local path.
- for `longbench_v2` also a `.json` file holding one array of rows (the official `data.json`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamkv.hashing import file_sha256  # noqa: F401  (re-exported: callers hash data files here)

HUB_PREFIX = "hf://datasets/"
_SCRIPT_ONLY_REPO = "thudm/longbench"
_HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
V2_TASK = "longbench_v2"
V2Difficulty = Literal["easy", "hard"]
V2Length = Literal["short", "medium", "long"]
V2_DIFFICULTIES: tuple[V2Difficulty, ...] = ("easy", "hard")
V2_LENGTHS: tuple[V2Length, ...] = ("short", "medium", "long")
V2_CHOICE_FIELDS = ("choice_A", "choice_B", "choice_C", "choice_D")
V2_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class LongBenchSample:
    """One validated row. `id` holds the row's `_id`."""

    input: str
    context: str
    answers: tuple[str, ...]
    id: str
    length: int
    dataset: str
    language: str
    all_classes: tuple[str, ...] | None
    # LongBench v2 only: the four options (A-D), "easy"/"hard", "short"/"medium"/"long".
    choices: tuple[str, ...] | None = None
    difficulty: str | None = None
    length_class: str | None = None


def to_row(sample: LongBenchSample) -> dict[str, Any]:
    """The LongBench JSON object of a sample, in the official field order (v1 or v2)."""
    if sample.choices is not None:
        return {
            "_id": sample.id, "difficulty": sample.difficulty, "length": sample.length_class,
            "question": sample.input, **dict(zip(V2_CHOICE_FIELDS, sample.choices)),
            "answer": sample.answers[0], "context": sample.context,
        }  # fmt: skip
    return {
        "input": sample.input,
        "context": sample.context,
        "answers": list(sample.answers),
        "length": sample.length,
        "dataset": sample.dataset,
        "language": sample.language,
        "all_classes": None if sample.all_classes is None else list(sample.all_classes),
        "_id": sample.id,
    }


def _field_error(where: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{where}, field {field!r}: {problem}")


def _required_str(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row:
        raise _field_error(where, field, "missing")
    if not isinstance(row[field], str):
        raise _field_error(where, field, f"expected a string, got {type(row[field]).__name__}")
    try:  # JSON can carry lone surrogates (\ud800), which no tokenizer, hash or database takes
        row[field].encode("utf-8")
    except UnicodeEncodeError as err:
        raise _field_error(where, field, f"not valid Unicode text ({err.reason} at position {err.start})") from None
    return row[field]


def _str_list(value: Any, field: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _field_error(where, field, "expected a list of strings")
    return tuple(value)


def _check_not_pretemplated(row: dict[str, Any], where: str) -> None:
    # kvpress-style copies (e.g. Xnhyacinth/LongBench) rename `input` to `question` and bake
    # the prompt into `context`; applying the official templates again would double them.
    if "input" not in row and "question" in row and "answer_prefix" in row:
        raise _field_error(
            where,
            "input",
            "missing; this row has 'question' and 'answer_prefix' instead, the pre-templated kvpress format, "
            "not raw LongBench. Use a raw copy (LongBench's data.zip <task>.jsonl files or a raw parquet export)",
        )


def _one_of(row: dict[str, Any], field: str, allowed: Sequence[str], where: str) -> str:
    value = _required_str(row, field, where)
    if value not in allowed:
        raise _field_error(where, field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def validate_v2_row(row: Any, where: str) -> LongBenchSample:
    """A LongBench v2 sample from one decoded row, or ValueError naming `where` and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _required_str(row, "question", where)
    context = _required_str(row, "context", where)
    choices = tuple(_required_str(row, field, where) for field in V2_CHOICE_FIELDS)
    answer = _one_of(row, "answer", V2_LETTERS, where)
    difficulty = _one_of(row, "difficulty", V2_DIFFICULTIES, where)
    length_class = _one_of(row, "length", V2_LENGTHS, where)
    for field in ("domain", "sub_domain"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise _field_error(where, field, f"expected a string, got {type(row[field]).__name__}")
    words = len(question.split()) + len(context.split())
    # "und" (undetermined): v2 rows name no language, and some are Chinese.
    return LongBenchSample(
        question, context, (answer,), _required_str(row, "_id", where), words, V2_TASK, "und", None,
        choices=choices, difficulty=difficulty, length_class=length_class,
    )  # fmt: skip


def validate_row(row: Any, task: str, where: str) -> LongBenchSample:
    """A sample from one decoded row, or ValueError naming `where` (file and line) and the field."""
    if task == V2_TASK:
        return validate_v2_row(row, where)
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    _check_not_pretemplated(row, where)
    input_text = _required_str(row, "input", where)
    context = _required_str(row, "context", where)
    sample_id = _required_str(row, "_id", where)
    if "answers" not in row:
        raise _field_error(where, "answers", "missing")
    answers = _str_list(row["answers"], "answers", where)
    if not answers:
        raise _field_error(where, "answers", "empty; a row needs at least one reference answer")
    # LongBench's `length` is a word count; when absent, count whitespace-separated words.
    length = row.get("length")
    if length is None and task.endswith("_e"):
        raise _field_error(where, "length", "missing; LongBench-E rows need it to pick their length bucket")
    if length is None:
        length = len(input_text.split()) + len(context.split())
    elif isinstance(length, bool) or not isinstance(length, int):
        raise _field_error(where, "length", f"expected an integer, got {type(length).__name__}")
    dataset = row.get("dataset") or task
    language = row.get("language") or "en"
    for field, value in (("dataset", dataset), ("language", language)):
        if not isinstance(value, str):
            raise _field_error(where, field, f"expected a string, got {type(value).__name__}")
    all_classes = row.get("all_classes")
    if all_classes is not None:
        all_classes = _str_list(all_classes, "all_classes", where)
    return LongBenchSample(input_text, context, answers, sample_id, length, dataset, language, all_classes)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, decoded object) per non-blank line; ValueError with the line on bad JSON."""
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None


def _json_array_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, item) per element of a file holding one JSON array (LongBench v2's data.json)."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON array of rows, got {type(items).__name__}")
    for item_number, item in enumerate(items, start=1):
        yield f"{path}, item {item_number}", item


def _hub_json_rows(data_files: str) -> Iterator[tuple[str, Any]]:
    """(where, row dict) per row of a hub JSON file, read through `datasets`, numbered from 1."""
    from datasets import load_dataset  # imported here, as in _parquet_rows

    dataset = load_dataset("json", data_files=data_files, split="train")
    for row_number, row in enumerate(dataset, start=1):
        yield f"{data_files}, row {row_number}", row


def _parquet_rows(data_files: str) -> Iterator[tuple[str, Any]]:
    """(where, row dict) per parquet row, read through `datasets`; rows are numbered from 1."""
    # Imported here: `datasets` takes seconds to import and only parquet sources need it.
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=data_files, split="train")
    for row_number, row in enumerate(dataset, start=1):
        yield f"{data_files}, row {row_number}", row


def _validated(rows: Iterator[tuple[str, Any]], task: str) -> list[LongBenchSample]:
    samples: list[LongBenchSample] = []
    first_seen: dict[str, str] = {}
    for where, row in rows:
        sample = validate_row(row, task, where)
        # Results are keyed by id, so a repeated id would silently overwrite a result.
        if sample.id in first_seen:
            raise _field_error(where, "_id", f"duplicate {sample.id!r}, first at {first_seen[sample.id]}")
        first_seen[sample.id] = where
        samples.append(sample)
    return samples


def _suffixes(task: str) -> tuple[str, ...]:
    return (".jsonl", ".parquet", ".json") if task == V2_TASK else (".jsonl", ".parquet")


def _local_file(path: Path, task: str) -> Path:
    suffixes = _suffixes(task)
    if path.is_file():
        if path.suffix not in suffixes:
            raise ValueError(f"{path}: expected a {' or '.join(suffixes)} file for task {task!r}")
        return path
    candidates = [path / f"{task}{suffix}" for suffix in suffixes]
    present = [candidate for candidate in candidates if candidate.is_file()]
    if len(present) != 1:
        found = "neither" if not present else "both" if len(present) == 2 else ", ".join(c.name for c in present)
        names = ", ".join(candidate.name for candidate in candidates)
        raise ValueError(f"folder {path} must hold exactly one of {names}; found {found}")
    return present[0]


def _refuse_script_repo(repo_id: str) -> None:
    if repo_id.lower() == _SCRIPT_ONLY_REPO:
        raise ValueError(
            "THUDM/LongBench is published with a loading script, which datasets >= 4 refuses to run. "
            "Use a local copy instead (unzip the repository's data.zip and pass the folder holding <task>.jsonl), "
            f"or a parquet mirror in raw LongBench format as {HUB_PREFIX}<owner>/<name> "
            "(Xnhyacinth/LongBench is pre-templated for kvpress, not raw; see validate_row)"
        )


def hub_data_files(repo_id: str, task: str) -> str:
    """The `hf://` path of one task's files in a hub repository (see the module docstring)."""
    _refuse_script_repo(repo_id)
    if not _HUB_REPO_ID.match(repo_id):
        raise ValueError(f"hub source must be {HUB_PREFIX}<owner>/<name>, got {HUB_PREFIX}{repo_id}")
    if task == V2_TASK:
        return f"{HUB_PREFIX}{repo_id}/data.json"
    return f"{HUB_PREFIX}{repo_id}/{task}/test-*.parquet"


def load_longbench(source: str | Path, task: str) -> list[LongBenchSample]:
    """All rows of `task` from `source` (see the module docstring), validated, in file order."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        data_files = hub_data_files(text[len(HUB_PREFIX) :].strip("/"), task)
        rows = _hub_json_rows(data_files) if task == V2_TASK else _parquet_rows(data_files)
        return _validated(rows, task)
    path = Path(source)
    if not path.exists():
        if not _HUB_REPO_ID.match(text):
            raise ValueError(f"no local file or folder {text!r}")
        _refuse_script_repo(text)
        raise ValueError(f"no local file or folder {text!r}; for a hub parquet repository write {HUB_PREFIX}{text}")
    file = _local_file(path, task)
    readers = {".jsonl": _jsonl_rows, ".json": _json_array_rows}
    rows = readers[file.suffix](file) if file.suffix in readers else _parquet_rows(str(file))
    return _validated(rows, task)


def filter_v2(
    samples: Sequence[LongBenchSample], difficulty: str | None = None, length: str | None = None
) -> list[LongBenchSample]:
    """The LongBench v2 samples of one difficulty and/or length class (None keeps all)."""
    if difficulty is not None and difficulty not in V2_DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(V2_DIFFICULTIES)}, got {difficulty!r}")
    if length is not None and length not in V2_LENGTHS:
        raise ValueError(f"length must be one of {', '.join(V2_LENGTHS)}, got {length!r}")
    if any(sample.difficulty is None for sample in samples):
        raise ValueError("filter_v2 takes LongBench v2 samples (task longbench_v2) only")
    return [
        sample
        for sample in samples
        if difficulty in (None, sample.difficulty) and length in (None, sample.length_class)
    ]


def _id_key(sample_id: str) -> str:
    # hashlib, not hash(): str hashes are salted per process, and shards must agree across workers.
    return hashlib.sha256(sample_id.encode("utf-8")).hexdigest()


def shard(samples: Sequence[LongBenchSample], index: int, count: int) -> list[LongBenchSample]:
    """Shard `index` of `count`: samples sorted by the SHA-256 of their id, dealt round-robin.

    Shards are disjoint, cover every sample, differ in size by at most one, and do not
    depend on the order of `samples` (for distinct ids). Each shard keeps the input order.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    order = sorted(range(len(samples)), key=lambda i: (_id_key(samples[i].id), samples[i].id, i))
    chosen = set(order[index::count])
    return [sample for position, sample in enumerate(samples) if position in chosen]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; ValueError otherwise."""
    match = _SHARD.match(text)
    if match is None:
        raise ValueError(f"shard must look like 'index/count' (e.g. '0/4'), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"shard {text!r}: need count >= 1 and 0 <= index < count")
    return index, count


