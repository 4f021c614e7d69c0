"""The LongBench v1 metrics, ported from the official `metrics.py` and `eval.py`.

Every metric maps (prediction, one ground truth, all_classes) to a score in [0, 1];
`score_sample` takes the best over the ground truths and `aggregate` reports the mean x 100,
as LongBench's tables do. Where this port departs from the official code it says so below.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from workers.tasks import TaskSpec

# (prediction, ground_truth, all_classes) -> score in [0, 1]
ScoreFn = Callable[[str, str, Sequence[str] | None], float]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")
_PARAGRAPH_ID = re.compile(r"Paragraph (\d+)")
# Built once: the scorer holds only its configuration and tokenizer, never per-call state.
_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"])


@dataclass(frozen=True)
class Metric:
    name: str
    score: ScoreFn
    higher_is_better: bool


def normalize_answer(text: str) -> str:
    """Official normalization: lowercase, drop punctuation, then articles, then extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    num_same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """Token-level F1 between the normalized prediction and ground truth."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def rouge_l_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """ROUGE-L F-measure from Google's `rouge_score` package.

    The official harness uses the `rouge` package (pltrdy) on the raw strings: it splits on
    "." into sentences, computes summary-level (union) LCS over whitespace tokens and keeps
    case and punctuation. `rouge_score`'s "rougeL" lowercases, keeps only [a-z0-9] runs as
    tokens and computes one sentence-level LCS. Scores therefore differ a little from the
    published ones; they are consistent between runs of this project, which is what a
    comparison of cache methods needs. Both give 0 for an empty prediction.
    """
    return float(_ROUGE_L.score(ground_truth, prediction)["rougeL"].fmeasure)


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """1 / (number of matched class names) when the ground truth is among them, else 0.

    A class matches when its name is a substring of the prediction. Matches that are proper
    substrings of the ground truth are dropped, so "Other" does not dilute "Other location".
    The official loop removes from the list it iterates over, which skips the element after
    each removal; this version drops all of them (the same result unless two such matches
    are adjacent in `all_classes`). The official difflib fallback is unreachable there
    (`em_match_list != 0` is always true), so no matches scores 0 here as it does there.
    """
    if not all_classes:
        raise ValueError("classification needs all_classes (the allowed labels)")
    matches = [name for name in all_classes if name in prediction]
    matches = [name for name in matches if not (name in ground_truth and name != ground_truth)]
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fraction_equal(prediction: str, target: str) -> float:
    """Of all the numbers in the prediction, the fraction equal (as text) to `target`."""
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    return sum(number == target for number in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """passage_retrieval_en: numbers in the prediction equal to the paragraph id of the ground truth."""
    found = _PARAGRAPH_ID.findall(ground_truth)
    if not found:
        raise ValueError(f"retrieval ground truth {ground_truth!r} has no 'Paragraph <n>'")
    return _fraction_equal(prediction, found[0])


def count_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """passage_count: numbers in the prediction equal to the ground-truth count."""
    return _fraction_equal(prediction, str(ground_truth))


def code_sim_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """Fuzzy ratio / 100 between the ground truth and the first line of code in the prediction.

    As in the official code, that line is the first one (after leading newlines) that contains
    none of "`", "#" or "//" anywhere, so markdown fences and comments are skipped; if there
    is none, the empty string is compared. `rapidfuzz.fuzz.ratio` equals fuzzywuzzy's ratio
    with python-Levenshtein; it is rounded to an integer percent as fuzzywuzzy does.
    """
    code_line = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            code_line = line
            break
    return round(fuzz.ratio(code_line, ground_truth)) / 100


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("qa_f1", qa_f1_score, higher_is_better=True),
        Metric("rouge", rouge_l_score, higher_is_better=True),
        Metric("classification", classification_score, higher_is_better=True),
        Metric("retrieval", retrieval_score, higher_is_better=True),
        Metric("count", count_score, higher_is_better=True),
        Metric("code_sim", code_sim_score, higher_is_better=True),
    )
}


def get_metric(name: str) -> Metric:
    """The registered metric called `name`; ValueError naming the allowed names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}") from None


def first_line(prediction: str) -> str:
    """eval.py's rule for the few-shot tasks: the first line after leading newlines."""
    return prediction.lstrip("\n").split("\n")[0]


def score_sample(
    task: TaskSpec, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """Score in [0, 1] of one prediction: the best of the task's metric over all answers.

    No answers scores 0, as in the official loop.
    """
    metric = get_metric(task.metric)
    if task.first_line_only:
        prediction = first_line(prediction)
    return max((metric.score(prediction, answer, all_classes) for answer in answers), default=0.0)


def aggregate(scores: Sequence[float]) -> float:
    """Mean x 100, unrounded (LongBench rounds to 2 decimals for display only)."""
    if not scores:
        raise ValueError("cannot aggregate an empty list of scores")
    return 100.0 * sum(scores) / len(scores)


# --- RULER (NVIDIA/RULER, scripts/eval/synthetic/constants.py and evaluate.py) -------------------
_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def ruler_postprocess(prediction: str) -> str:
    """evaluate.py's postprocess_pred: strip, control characters to newlines, strip again."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def ruler_string_match_all(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """RULER's string_match_all for one sample: the fraction of the references (the lines of
    `ground_truth`, see workers.ruler) found, case-insensitively, inside the prediction.

    RULER averages these x 100 over samples and rounds to 2 decimals; `aggregate` gives the
    same mean unrounded. An empty reference list cannot be scored, so it raises.
    """
    references = [line for line in ground_truth.split("\n") if line]
    if not references:
        raise ValueError("ruler_string_match_all needs at least one reference (one per line)")
    found = ruler_postprocess(prediction).lower()
    return sum(reference.lower() in found for reference in references) / len(references)


METRICS["ruler_string_match_all"] = Metric("ruler_string_match_all", ruler_string_match_all, higher_is_better=True)
