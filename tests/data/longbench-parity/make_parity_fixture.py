"""Writes cases.json: predictions on the LongBench sample rows, scored by the official code.

Not part of the test suite and not imported by it: it runs the *official* scorer, which is
not in this repository, so it needs a scratch copy of it. See README.md in this folder for
the exact commands. Usage:

    python make_parity_fixture.py --official DIR --deps difflib=DEPS1 --deps levenshtein=DEPS2

DIR holds THUDM/LongBench's `LongBench/metrics.py` and `LongBench/eval.py`, and the
repository root's `pred.py` and `result.py` saved as `pred_v2.py` and `result_v2.py`. Each
DEPS is a `pip install --target` folder with rouge, fuzzywuzzy and jieba (DEPS2 also with
python-Levenshtein). Every variant is scored in its own process, because fuzzywuzzy picks
its matcher once, at import.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE_DIR = HERE.parent / "longbench-sample"
FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum", "lsht")  # eval.py's list


# --- predictions ---------------------------------------------------------------------------------
def _words(text: str, start: int, count: int) -> str:
    return " ".join(text.split()[start : start + count])


def _generic(row: dict) -> dict[str, str]:
    """Predictions every task gets: built from the row's own answer and context."""
    answer, context = row["answers"][0], row["context"]
    words = answer.split()
    return {
        "exact": answer,
        "partial": " ".join(words[: max(1, len(words) // 2)]),
        "wrong": _words(context, len(context.split()) // 2, 12),
        "empty": "",
        "multiline": "\n\n" + answer + "\nQuestion: what comes next?\nAnswer: something else",
        "extra_punct": f'"{answer.upper()}" !!! ...',
        "prefixed": "The answer is: " + answer + ".",
    }


def _rouge_extra(row: dict) -> dict[str, str]:
    answer, context = row["answers"][0], row["context"]
    sentences = [part for part in answer.split(".") if part.strip()]
    return {
        "lowercase_no_punct": "".join(ch for ch in answer.lower() if ch.isalnum() or ch.isspace()),
        "sentences_reversed": ". ".join(reversed(sentences)) + ".",
        "only_dots": "...",
        # One sentence of 1,100 words: the official `rouge` recursion goes past 1,000 frames.
        "long_no_period": _words(context.replace(".", " "), 0, 1100),
        "context_start": _words(context, 0, 200),
    }


def _code_extra(row: dict) -> dict[str, str]:
    answer, context = row["answers"][0], row["context"]
    lines = [line for line in context.split("\n") if line.strip() and "#" not in line and "//" not in line]
    stripped = answer.strip()
    return {
        "comment_lines_first": "# the next line\n// in another style\n" + answer + "\nmore()",
        "fenced": "```\n" + answer + "\n```",
        "trailing_comment": answer + "  // done\n" + answer[::-1],
        "one_char_changed": answer[:-2] + "X" + answer[-1:],
        "truncated": answer[: len(answer) // 2],
        "stripped": stripped,
        "context_line": lines[len(lines) // 2],
        "last_context_line": lines[-1],
        "context_line_long": " ".join(lines[-8:]),  # over 200 chars: difflib's autojunk applies
        "doubled": answer + answer,
    }


def _qa_extra(row: dict) -> dict[str, str]:
    answer = row["answers"][-1]
    return {"last_answer": "the " + answer, "articles_only": "a an the"}


def _retrieval_extra(row: dict) -> dict[str, str]:
    number = row["answers"][0].split()[-1]
    return {
        "number_only": number,
        "two_paragraphs": f"Paragraph {number} or Paragraph 3",
        "longer_number": f"Paragraph {number}0",
        "no_number": "I cannot tell.",
    }


def _trec_extra(row: dict) -> dict[str, str]:
    return {
        "two_labels": row["answers"][0] + " or Color or Individual",
        "lowercase": row["answers"][0].lower(),
        "label_then_next_question": row["answers"][0] + "\nQuestion: Who is it ?\nType: Individual",
    }


EXTRA = {
    "rouge": _rouge_extra,
    "code_sim": _code_extra,
    "qa_f1": _qa_extra,
    "retrieval": _retrieval_extra,
    "classification": _trec_extra,
}
TASK_KIND = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1", "musique": "qa_f1", "triviaqa": "qa_f1", "gov_report": "rouge", "qmsum": "rouge",
    "multi_news": "rouge", "samsum": "rouge", "trec": "classification", "passage_retrieval_en": "retrieval",
    "lcc": "code_sim", "repobench-p": "code_sim",
}  # fmt: skip


def _real_cases() -> list[dict]:
    cases = []
    for task, kind in TASK_KIND.items():
        for line in (SAMPLE_DIR / f"{task}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            predictions = _generic(row) | EXTRA[kind](row)
            for label, prediction in predictions.items():
                cases.append({
                    "id": f"{task}/{row['_id']}/{label}", "task": task, "sample_id": row["_id"], "synthetic": False,
                    "prediction": prediction, "answers": row["answers"], "all_classes": row["all_classes"],
                    "length": row["length"],
                })  # fmt: skip
    return cases


def _synthetic_case(task: str, label: str, prediction: str, answers: list[str], classes=None, length=0) -> dict:
    return {
        "id": f"{task}/synthetic/{label}", "task": task, "sample_id": f"synthetic-{label}", "synthetic": True,
        "prediction": prediction, "answers": answers, "all_classes": classes, "length": length,
    }  # fmt: skip


def _synthetic_cases() -> list[dict]:
    """Hand-made rows for what the sample rows lack: passage_count, substring labels, lengths."""
    # Labels that are substrings of others, in several orders: the official loop's skipping
    # depends on where each substring sits among the matches.
    classes_a = ["Other", "location", "Other location", "City"]
    classes_b = ["Other location", "Other", "City", "location"]
    classes_c = ["Other", "City", "location", "Other location"]
    classes_d = ["Other", "Other", "Other location", "City"]  # a repeated label
    trec = [
        ("substr_a_exact", "Other location", ["Other location"], classes_a),
        ("substr_a_with_city", "Other location, City", ["Other location"], classes_a),
        ("substr_b_exact", "Other location", ["Other location"], classes_b),
        ("substr_c_with_city", "Other location City", ["Other location"], classes_c),
        ("substr_c_truth_short", "Other location", ["Other"], classes_c),
        ("substr_d_repeated", "Other location", ["Other location"], classes_d),
        ("substr_a_no_match", "Mountain", ["City"], classes_a),
    ]
    cases = [_synthetic_case("trec", label, p, a, c) for label, p, a, c in trec]
    count = [
        ("exact", "12", ["12"]), ("sentence", "There are 12 unique paragraphs out of 20.", ["12"]),
        ("repeated", "12, 12 and 3", ["12"]), ("words", "twelve", ["12"]), ("leading_zero", "012", ["12"]),
        ("empty", "", ["7"]), ("multiline", "7\n7\n8", ["7"]),
    ]  # fmt: skip
    cases += [_synthetic_case("passage_count", label, p, a) for label, p, a in count]
    # LongBench-E buckets at their edges (eval.py: < 4000, < 8000, else).
    for label, length, prediction in (
        ("len_0", 0, "Paris"), ("len_3999", 3999, "Paris France"), ("len_4000", 4000, "London"),
        ("len_7999", 7999, "Paris"), ("len_8000", 8000, "the Paris"), ("len_20000", 20000, ""),
    ):  # fmt: skip
        cases.append(_synthetic_case("hotpotqa", label, prediction, ["Paris"], length=length))
    return cases


V2_RESPONSES = [
    ("plain", "The correct answer is (B)"),
    ("bold", "**The correct answer is (C)**"),
    ("no_parens", "The correct answer is D."),
    ("lowercase", "the correct answer is (A)"),
    ("two_answers", "The correct answer is (A). On reflection, The correct answer is (B)"),
    ("letter_only", "B"),
    ("out_of_range", "The correct answer is (E)"),
    ("spaced", "  The correct answer is (A)  \n"),
    ("empty", ""),
]


def _v2_cases() -> list[dict]:
    """Clearly synthetic LongBench v2 rows: an answer and a response for extract_answer."""
    answers = "BCDAABAAA"
    difficulty = ["easy", "hard", "hard", "easy", "hard", "easy", "hard", "hard", "easy"]
    length = ["short", "medium", "long", "short", "short", "medium", "long", "long", "medium"]
    return [
        {"id": f"longbench_v2/synthetic/{label}", "response": response, "answer": answers[i],
         "difficulty": difficulty[i], "length": length[i]}
        for i, (label, response) in enumerate(V2_RESPONSES)
    ]  # fmt: skip


# --- scoring with the official code (run in a child process per variant) -----------------------------
def _official_extract_answer(pred_py: Path):
    """pred.py's extract_answer, taken out of the file: the rest of pred.py needs openai."""
    tree = ast.parse(pred_py.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "extract_answer")
    namespace: dict = {}
    module = ast.fix_missing_locations(ast.Module([ast.Import([ast.alias("re")]), node], []))
    exec(compile(module, str(pred_py), "exec"), namespace)
    return namespace["extract_answer"]


def _official_v2_table(result_py: Path, rows: list[dict]) -> str:
    """result.py's table line for `rows`, run as the official script in a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "results").mkdir()
        with open(Path(scratch, "results", "fixture.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        subprocess.run([sys.executable, str(result_py)], cwd=scratch, check=True)
        return Path(scratch, "result.txt").read_text(encoding="utf-8")


def score_with_official(official: Path, cases: list[dict], v2_cases: list[dict]) -> dict:
    sys.path.insert(0, str(official))
    import eval as official_eval  # noqa: PLC0415  (the official eval.py; imports metrics.py)
    import fuzzywuzzy.fuzz  # noqa: PLC0415

    sample_scores = {}
    for case in cases:
        # eval.py's `scorer` loop for one prediction, unrounded.
        prediction = case["prediction"]
        if case["task"] in FIRST_LINE_TASKS:
            prediction = prediction.lstrip("\n").split("\n")[0]
        metric = official_eval.dataset2metric[case["task"]]
        score = 0.0
        for truth in case["answers"]:
            score = max(score, metric(prediction, truth, all_classes=case["all_classes"]))
        sample_scores[case["id"]] = score
    groups = {}
    for case in cases:  # one "file" per task and label set, as eval.py reads all_classes per file
        key = f"{case['task']}|{json.dumps(case['all_classes'])}"
        groups.setdefault(key, []).append(case)
    group_scores = {}
    for key, members in groups.items():
        args = ([m["prediction"] for m in members], [m["answers"] for m in members])
        task, classes = members[0]["task"], members[-1]["all_classes"]
        entry = {"task_score": official_eval.scorer(task, *args, classes)}
        buckets = official_eval.scorer_e(task, *args, [m["length"] for m in members], classes)
        entry["e_buckets"] = {name: (None if value != value else value) for name, value in buckets.items()}
        group_scores[key] = {"case_ids": [m["id"] for m in members], **entry}
    extract = _official_extract_answer(official / "pred_v2.py")
    v2_rows = []
    for case in v2_cases:
        pred = extract(case["response"].strip())  # pred.py strips the output first
        v2_rows.append({"_id": case["id"], "difficulty": case["difficulty"], "length": case["length"],
                        "pred": pred, "answer": case["answer"], "judge": pred == case["answer"]})
    return {
        "matcher": f"{fuzzywuzzy.fuzz.SequenceMatcher.__module__}.{fuzzywuzzy.fuzz.SequenceMatcher.__name__}",
        "samples": sample_scores,
        "groups": group_scores,
        "v2": {"rows": v2_rows, "result_txt": _official_v2_table(official / "result_v2.py", v2_rows)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--deps", action="append", default=[], help="variant=pip-target-folder")
    parser.add_argument("--score-variant", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    cases, v2_cases = _real_cases() + _synthetic_cases(), _v2_cases()
    if args.score_variant:
        json.dump(score_with_official(args.official.resolve(), cases, v2_cases), sys.stdout)
        return
    results = {}
    for spec in args.deps:
        variant, deps = spec.split("=", 1)
        env = dict(os.environ, PYTHONPATH=str(Path(deps).resolve()))
        child = [sys.executable, __file__, "--official", str(args.official), "--score-variant", variant]
        results[variant] = json.loads(subprocess.run(child, env=env, check=True, capture_output=True).stdout)
    out = {
        "source": "THUDM/LongBench 2e00731f8d0bff23dc4325161044d0ed8af94c1e: LongBench/metrics.py, "
        "LongBench/eval.py (scorer, scorer_e), pred.py (extract_answer), result.py",
        "matchers": {variant: result["matcher"] for variant, result in results.items()},
        "cases": [
            case | {"expected": {variant: result["samples"][case["id"]] for variant, result in results.items()}}
            for case in cases
        ],
        "groups": [
            {"task": key.split("|", 1)[0], "case_ids": group["case_ids"],
             "task_score": {variant: result["groups"][key]["task_score"] for variant, result in results.items()},
             "e_buckets": {variant: result["groups"][key]["e_buckets"] for variant, result in results.items()}}
            for key, group in next(iter(results.values()))["groups"].items()
        ],  # fmt: skip
        "v2_cases": [
            case | {"expected_pred": row["pred"], "expected_judge": row["judge"]}
            for case, row in zip(v2_cases, next(iter(results.values()))["v2"]["rows"])
        ],
        "v2_result_txt": next(iter(results.values()))["v2"]["result_txt"],
    }
    (HERE / "cases.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
