"""Our LongBench scoring against values produced by the official scorer (see the fixture's README)."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from workers.metrics import (
    bucket_scores,
    choice_score,
    extract_choice,
    official_task_score,
    score_sample,
    v2_split_accuracy,
)
from workers.tasks import LONGBENCH_TASK_NAMES, TaskSpec, get_task, with_code_sim

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "longbench-parity"
CASES = json.loads((FIXTURE / "cases.json").read_text(encoding="utf-8"))
OFFICIAL = json.loads((FIXTURE / "official_prompts.json").read_text(encoding="utf-8"))
VARIANTS = ("difflib", "levenshtein")
BY_ID = {case["id"]: case for case in CASES["cases"]}


def _spec(task: str, variant: str) -> TaskSpec:
    spec = get_task(task)
    return with_code_sim(spec, variant) if spec.metric == "code_sim" else spec


@functools.cache
def _our_scores(variant: str) -> dict[str, float]:
    # Scored once per variant and shared by the tests below: ROUGE on the real gov_report rows
    # takes seconds. Only the code tasks differ between variants.
    if variant != "difflib":
        scores = dict(_our_scores("difflib"))
        code = [case for case in CASES["cases"] if get_task(case["task"]).metric == "code_sim"]
    else:
        scores, code = {}, CASES["cases"]
    for case in code:
        spec = _spec(case["task"], variant)
        scores[case["id"]] = score_sample(spec, case["prediction"], case["answers"], case["all_classes"])
    return scores


def _our_score(case: dict, variant: str) -> float:
    return _our_scores(variant)[case["id"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_sample_score_matches_the_official_scorer(variant: str) -> None:
    ours = _our_scores(variant)
    disagreements = [
        (case["id"], ours[case["id"]], case["expected"][variant])
        for case in CASES["cases"]
        if abs(ours[case["id"]] - case["expected"][variant]) > 1e-6
    ]
    assert disagreements == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_task_scores_match_eval_py(variant: str) -> None:
    for group in CASES["groups"]:
        scores = [_our_score(BY_ID[case_id], variant) for case_id in group["case_ids"]]
        assert official_task_score(scores) == group["task_score"][variant], group["task"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_length_buckets_match_eval_py_e(variant: str) -> None:
    for group in CASES["groups"]:
        cases = [BY_ID[case_id] for case_id in group["case_ids"]]
        ours = bucket_scores((case["length"], _our_score(case, variant)) for case in cases)
        expected = {bucket: value for bucket, value in group["e_buckets"][variant].items() if value is not None}
        assert {bucket: round(value, 2) for bucket, value in ours.items()} == expected, group["task"]


def test_the_fixture_holds_what_the_issue_lists() -> None:
    # A fixture that lost its hard cases would pass trivially; these are the ones that broke before.
    labels = Counter(case["id"].rsplit("/", 1)[1] for case in CASES["cases"])
    for label in ("exact", "partial", "wrong", "empty", "multiline", "extra_punct", "comment_lines_first"):
        assert labels[label] >= 2, label
    assert sum(label.startswith("substr_") for label in labels) >= 5
    assert {case["task"] for case in CASES["cases"]} == set(LONGBENCH_TASK_NAMES)
    assert CASES["matchers"] == {
        "difflib": "difflib.SequenceMatcher",
        "levenshtein": "fuzzywuzzy.StringMatcher.StringMatcher",
    }
    code = [case for case in CASES["cases"] if case["task"] in ("lcc", "repobench-p")]
    differing = [case for case in code if case["expected"]["difflib"] != case["expected"]["levenshtein"]]
    assert 0 < len(differing) < len(code)


def test_trec_skips_the_match_after_each_removed_one() -> None:
    # classes_a: the matches are [Other, location, Other location]; removing "Other" shifts
    # "location" under the loop's index, so it stays and the truth scores 1/2, not 1.
    case = BY_ID["trec/synthetic/substr_a_exact"]
    assert case["expected"]["difflib"] == 0.5
    assert _our_score(case, "difflib") == 0.5


def test_templates_and_budgets_are_byte_identical_to_the_official_config() -> None:
    assert OFFICIAL["source"].endswith("2e00731f8d0bff23dc4325161044d0ed8af94c1e")
    assert set(OFFICIAL["prompts"]) == set(LONGBENCH_TASK_NAMES)
    for name in LONGBENCH_TASK_NAMES:
        assert get_task(name).prompt_template == OFFICIAL["prompts"][name], name
        assert get_task(name).max_new_tokens == OFFICIAL["max_new_tokens"][name], name
    assert get_task("longbench_v2").prompt_template == OFFICIAL["v2_0shot"]


def test_longbench_e_tasks_reuse_the_v1_definitions() -> None:
    for name in ("qasper", "hotpotqa", "gov_report", "trec", "lcc", "repobench-p", "passage_count"):
        v1, e = get_task(name), get_task(f"{name}_e")
        assert (e.prompt_template, e.max_new_tokens, e.metric, e.first_line_only, e.use_chat_template) == (
            v1.prompt_template, v1.max_new_tokens, v1.metric, v1.first_line_only, v1.use_chat_template,
        )  # fmt: skip
        assert e.version != v1.version


def test_v2_answer_extraction_matches_pred_py() -> None:
    for case in CASES["v2_cases"]:
        assert extract_choice(case["response"].strip()) == case["expected_pred"], case["id"]
        assert choice_score(case["response"], case["answer"]) == float(case["expected_judge"]), case["id"]


def test_v2_splits_match_result_py() -> None:
    header, line = CASES["v2_result_txt"].splitlines()
    expected = dict(zip(header.lower().split("\t")[1:], map(float, line.split("\t")[1:])))
    rows = [
        (case["difficulty"], case["length"], choice_score(case["response"], case["answer"]))
        for case in CASES["v2_cases"]
    ]
    ours = v2_split_accuracy(rows)
    assert {split: round(value, 1) for split, value in ours.items()} == expected


def test_code_sim_variant_switch_is_versioned_and_reversible() -> None:
    lcc = get_task("lcc")
    lev = with_code_sim(lcc, "levenshtein")
    assert (lev.metric, lev.version) == ("code_sim_levenshtein", lcc.version + "+levenshtein")
    assert with_code_sim(lev, "difflib") == lcc
    with pytest.raises(ValueError, match="difflib, levenshtein"):
        with_code_sim(lcc, "jaro")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only code_sim tasks"):
        with_code_sim(get_task("trec"), "levenshtein")


def test_narrativeqa_keeps_the_official_typo() -> None:
    assert len(re.findall("asconcisely", get_task("narrativeqa").prompt_template)) == 2


def test_the_levenshtein_variant_is_a_task_reading_the_same_rows() -> None:
    from streamkv import preset
    from workers.units import WorkUnit, longbench_samples, task_kind

    variant = get_task("lcc_levenshtein")
    assert (variant.metric, variant.rows_of) == ("code_sim_levenshtein", "lcc")
    assert variant.version.endswith("+levenshtein") and variant.prompt_template == get_task("lcc").prompt_template
    assert get_task("repobench-p_e_levenshtein").rows_of == "repobench-p_e"
    source = str(Path(__file__).resolve().parents[1] / "data" / "longbench-sample")
    base = WorkUnit(model="tiny-llama", config=preset("none"), task="lcc", source=source, shard="0/1")
    lev = base.replace(task="lcc_levenshtein")
    assert task_kind("lcc_levenshtein") == "longbench" and lev.key.task != base.key.task
    assert [s.id for s in longbench_samples(lev)] == [s.id for s in longbench_samples(base)]
    # The two variants score a pair the difflib and Levenshtein ratios disagree on differently.
    assert score_sample(get_task("lcc"), "abaa", ["aaa"]) != score_sample(variant, "abaa", ["aaa"])
