"""The official LongBench metrics on hand-checked examples."""

from __future__ import annotations

import pytest

from workers.metrics import (
    METRICS,
    aggregate,
    classification_score,
    code_sim_levenshtein_score,
    code_sim_score,
    count_score,
    first_line,
    get_metric,
    normalize_answer,
    qa_f1_score,
    retrieval_score,
    rouge_l_score,
    score_sample,
)
from workers.tasks import LONGBENCH_TASKS, get_task


def test_every_task_metric_is_registered_and_higher_is_better() -> None:
    assert set(METRICS) == {
        "qa_f1", "rouge", "classification", "retrieval", "count", "code_sim", "code_sim_levenshtein", "choice",
        "ruler_string_match_all",
    }  # fmt: skip
    for spec in LONGBENCH_TASKS.values():
        assert get_metric(spec.metric).higher_is_better


def test_unknown_metric_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError, match="qa_f1, rouge"):
        get_metric("bleu")


def test_normalize_answer_drops_case_punctuation_articles_and_spaces() -> None:
    assert normalize_answer("  The  U.S.A. is an   ally! ") == "usa is ally"
    # Punctuation goes before articles are matched, so "the," is still an article.
    assert normalize_answer("the, cat") == "cat"
    # Articles only as whole words.
    assert normalize_answer("Theatre anthem") == "theatre anthem"


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("The Eiffel Tower!", "Eiffel tower", 1.0),
        ("Paris, France", "Paris", 2 / 3),  # precision 1/2, recall 1
        ("Paris", "Paris, France", 2 / 3),  # precision 1, recall 1/2
        ("a b a", "a b", 1.0),  # "a" is an article: both are just "b"
        ("x y y z", "y y w", 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)),  # counts with multiplicity
        ("", "Paris", 0.0),
        ("the", "a", 0.0),  # both normalize to nothing
        ("London", "Paris", 0.0),
    ],
)
def test_qa_f1(prediction: str, truth: str, expected: float) -> None:
    assert qa_f1_score(prediction, truth) == pytest.approx(expected)


def test_rouge_l() -> None:
    # The `rouge` package's F has a 1e-8 in its denominator, hence abs=1e-6.
    assert rouge_l_score("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0, abs=1e-6)
    # Case is kept ("sat" is the only common word) and lengths count distinct words (the
    # reference has 5): precision 1/3, recall 1/5, F = 1/4.
    assert rouge_l_score("The Cat sat.", "the cat sat on the mat") == pytest.approx(0.25, abs=1e-6)
    # Summary-level LCS over "."-separated sentences: their order does not matter ...
    assert rouge_l_score("a b. c d", "c d. a b") == pytest.approx(1.0, abs=1e-6)
    # ... but within one sentence it does: LCS 2 of 4.
    assert rouge_l_score("a b c d", "c d a b") == pytest.approx(0.5, abs=1e-6)
    # Every exception of the package scores 0: no sentence at all, or a recursion too deep.
    assert rouge_l_score("", "the cat") == 0.0
    assert rouge_l_score("...", "the cat") == 0.0
    assert rouge_l_score(" ".join(f"w{i}" for i in range(1100)), "w5 w6") == 0.0
    assert isinstance(rouge_l_score("", "the cat"), float)


CLASSES = ("Other", "Other location", "City", "Location")


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("Other location", "Other location", 1.0),  # "Other" is inside the truth: dropped
        ("Other location or City", "Other location", 0.5),
        ("City", "Other location", 0.0),
        ("other location", "Other location", 0.0),  # case-sensitive, as the official
        ("", "City", 0.0),
        ("Other location", "Other", 0.5),  # "Other location" is not inside "Other": kept
    ],
)
def test_classification_with_overlapping_names(prediction: str, truth: str, expected: float) -> None:
    assert classification_score(prediction, truth, CLASSES) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        # Removing "Ab" moves "Bc" under the loop's index, so "Bc" is never checked and stays.
        (("Ab", "Bc", "AbBc"), 0.5),
        # With another match between them both substrings are seen and dropped ...
        (("Ab", "AbBc", "Bc"), 1.0),
        # ... and the outcome follows the order of the matches, not the truth's position.
        (("AbBc", "Ab", "Bc"), 0.5),
        (("Ab", "Ab", "AbBc"), 0.5),  # remove() drops the first "Ab"; the second is skipped
    ],
)
def test_classification_removes_while_iterating_as_the_official_loop(classes, expected) -> None:
    assert classification_score("AbBc", "AbBc", classes) == expected


def test_classification_needs_classes() -> None:
    with pytest.raises(ValueError, match="all_classes"):
        classification_score("City", "City", None)


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Paragraph 15", 1.0),
        ("15", 1.0),
        ("Paragraph 15 or Paragraph 3", 0.5),
        ("Paragraph 150", 0.0),
        ("I do not know", 0.0),  # no numbers at all
        ("", 0.0),
    ],
)
def test_retrieval(prediction: str, expected: float) -> None:
    assert retrieval_score(prediction, "Paragraph 15") == pytest.approx(expected)


def test_retrieval_rejects_a_truth_without_paragraph_id() -> None:
    with pytest.raises(ValueError, match="Paragraph"):
        retrieval_score("1", "15")


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("12", 1.0),
        ("There are 12 unique paragraphs out of 20", 0.5),
        ("12, 12 and 3", 2 / 3),
        ("twelve", 0.0),  # no numbers
        ("012", 0.0),  # compared as text, as the official
    ],
)
def test_count(prediction: str, expected: float) -> None:
    assert count_score(prediction, "12") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("```java\n// set x\nint x = 1;\n```", "int x = 1;", 1.0),  # fences and comments skipped
        ("x = a  # note\ny = 2", "y = 2", 1.0),  # "#" anywhere in a line skips it
        ("\n\nabcd", "abce", 0.75),  # leading newlines dropped; Indel 2 over 8 chars
        ("abc", "abd", 0.67),  # 66.67 rounded to a whole percent
        ("# only a comment", "abc", 0.0),  # no code line: empty string compared
        ("", "", 1.0),
    ],
)
def test_code_sim(prediction: str, truth: str, expected: float) -> None:
    assert code_sim_score(prediction, truth) == pytest.approx(expected)
    assert code_sim_levenshtein_score(prediction, truth) == pytest.approx(expected)


def test_code_sim_variants_differ_where_difflib_takes_the_longest_block_first() -> None:
    # difflib matches the block "aa" (abaa[2:4] = aaa[0:2]) and finds nothing on either side
    # of it: 2 matched of 7 characters, 2*2/7 -> 57. The Indel ratio uses the full LCS "aaa":
    # 2*3/7 -> 86.
    assert code_sim_score("abaa", "aaa") == 0.57
    assert code_sim_levenshtein_score("abaa", "aaa") == 0.86
    # fuzzywuzzy's rules in both: equal strings 100, then an empty one 0.
    for score in (code_sim_score, code_sim_levenshtein_score):
        assert score("", "") == 1.0 and score("x", "") == 0.0 and score("# c", "x") == 0.0


def test_first_line() -> None:
    assert first_line("\n\nOther location\nQuestion: x") == "Other location"
    assert first_line("") == ""


def test_score_sample_applies_first_line_rule_for_few_shot_tasks() -> None:
    trec = get_task("trec")
    classes = ("Other location", "City")
    # The second line names a class too; only the first counts.
    assert score_sample(trec, "\nOther location\nType: City", ["Other location"], classes) == 1.0
    # triviaqa: the continuation on the next line would halve precision otherwise.
    assert score_sample(get_task("triviaqa"), "Paris\nQuestion: Paris again", ["Paris"]) == 1.0
    # hotpotqa keeps all lines.
    assert score_sample(get_task("hotpotqa"), "Paris\nfoo", ["Paris"]) == pytest.approx(2 / 3)


def test_score_sample_takes_the_best_answer() -> None:
    narrativeqa = get_task("narrativeqa")
    assert score_sample(narrativeqa, "in London", ["Paris", "London"]) == pytest.approx(2 / 3)
    assert score_sample(narrativeqa, "in London", ["Paris"]) == 0.0
    assert score_sample(narrativeqa, "", ["Paris", "London"]) == 0.0
    assert score_sample(narrativeqa, "Paris", []) == 0.0
    assert score_sample(get_task("passage_retrieval_en"), "Paragraph 2", ["Paragraph 2"]) == 1.0
    assert score_sample(get_task("lcc"), "foo()\n", ["foo()"]) == 1.0


def test_aggregate_is_mean_times_100() -> None:
    assert aggregate([1.0, 0.0, 0.5]) == pytest.approx(50.0)
    assert aggregate([2 / 3]) == pytest.approx(66.6666667)
    with pytest.raises(ValueError):
        aggregate([])
