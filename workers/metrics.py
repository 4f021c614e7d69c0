"""The LongBench metrics, ported from the official `metrics.py` and `eval.py` (v1 and -E) and
LongBench v2's `pred.py` and `result.py`.

Every metric maps (prediction, one ground truth, all_classes) to a score in [0, 1];
`score_sample` takes the best over the ground truths and `aggregate` reports the mean x 100,
as LongBench's tables do. The scores equal the official scorer's (THUDM/LongBench commit
2e00731, `LongBench/metrics.py` with `rouge==1.0.1` and `fuzzywuzzy==0.18.0`) on every case of
tests/data/longbench-parity, to 1e-6; that fixture says how its expected values were made.
`bucket_scores` gives LongBench-E's per-length-bucket scores and `v2_split_accuracy` LongBench
v2's easy/hard and short/medium/long accuracies.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fuzzywuzzy import utils as fuzz_utils
from rapidfuzz.distance import Indel
from rouge import Rouge

from workers.tasks import TaskSpec

# (prediction, ground_truth, all_classes) -> score in [0, 1]
ScoreFn = Callable[[str, str, Sequence[str] | None], float]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")
_PARAGRAPH_ID = re.compile(r"Paragraph (\d+)")
# LongBench v2's pred.py: first the parenthesised form, then the bare letter.
_CHOICE_PATTERNS = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))
# Built once: a Rouge holds only its metric and stat names, never per-call state. All three
# metrics stay on, as in the official `Rouge()`, because any of them may raise and a raise
# scores 0 there.
_ROUGE = Rouge()


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
    """ROUGE-L F of the `rouge` package (pltrdy, 1.0.1), as the official scorer calls it.

    That package splits each text on "." into sentences, keeps case and punctuation, splits
    on whitespace and computes summary-level (union) LCS. Any exception scores 0, as the
    official bare `except:` does: an empty prediction or one of only dots ("Hypothesis is
    empty" / no sentences), and a RecursionError from its recursive LCS walk on a sentence
    pair of more than about 1,000 words in all (the official script ran at Python's default
    recursion limit of 1,000; a caller that raises the limit will score such pairs instead,
    and a pair within a few dozen words of the limit can depend on the caller's stack depth).
    """
    try:
        scores = _ROUGE.get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # noqa: BLE001  (the official code scores every failure 0)
        return 0.0
    return float(scores["rouge-l"]["f"])


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """1 / (number of matched class names) when the ground truth is among them, else 0.

    A class matches when its name is a substring of the prediction (case-sensitive). The
    official code then drops matches that are proper substrings of the ground truth by
    removing them from the list it is iterating over, so the match right after each removed
    one is never looked at and stays. Which label survives therefore depends on its position
    among the matches (in `all_classes` order), and the published scores were made this way,
    so the loop below is the official one on purpose; `list.remove` also drops the first
    equal entry, as there. The official difflib fallback is unreachable (its condition
    `em_match_list != 0` compares a list with 0), so no match scores 0 here as there.
    """
    if not all_classes:
        raise ValueError("classification needs all_classes (the allowed labels)")
    matches = [name for name in all_classes if name in prediction]
    for name in matches:  # removes while iterating, like the official loop (see above)
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
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


def _code_line(prediction: str) -> str:
    """The first line (after leading newlines) with none of "`", "#", "//"; "" if none."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


# fuzzywuzzy's own wrappers around `fuzz.ratio`: equal strings score 100 (even two empty
# ones), then an empty string scores 0; the ratio is rounded half to even to a whole percent.
@fuzz_utils.check_for_equivalence
@fuzz_utils.check_empty_string
def _difflib_ratio(a: str, b: str) -> int:
    # fuzzywuzzy's fallback without python-Levenshtein; autojunk on, as there.
    return fuzz_utils.intr(100 * difflib.SequenceMatcher(None, a, b).ratio())


@fuzz_utils.check_for_equivalence
@fuzz_utils.check_empty_string
def _levenshtein_ratio(a: str, b: str) -> int:
    # python-Levenshtein's `ratio` is the normalized Indel similarity (0.27 computes it with
    # this very rapidfuzz call); fuzzywuzzy uses it when python-Levenshtein is installed.
    return fuzz_utils.intr(100 * Indel.normalized_similarity(a, b))


def code_sim_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """fuzzywuzzy's `fuzz.ratio` / 100 of the first code line of the prediction and the truth.

    The default: the official requirements.txt installs fuzzywuzzy without
    python-Levenshtein, so `fuzz.ratio` falls back to difflib's SequenceMatcher, and that is
    what the official harness computes as shipped (this project has no official predictions
    to check the published tables against; a machine with python-Levenshtein installed would
    have produced the other variant). `code_sim_levenshtein_score` is that one, selected per
    task with `workers.tasks.with_code_sim`. Fences and comment lines are skipped as there.
    """
    return _difflib_ratio(_code_line(prediction), ground_truth) / 100


def code_sim_levenshtein_score(
    prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None
) -> float:
    """As `code_sim_score`, with fuzzywuzzy's python-Levenshtein path.

    difflib matches the longest common block first and recurses on both sides, which can miss
    the longest common subsequence that the Indel ratio counts, so the two differ on some pairs
    (15 of the 68 code cases of the parity fixture).
    """
    return _levenshtein_ratio(_code_line(prediction), ground_truth) / 100


def extract_choice(response: str) -> str | None:
    """The letter A-D that a LongBench v2 response names, as pred.py's `extract_answer` finds it.

    Asterisks (markdown bold) are dropped first; the match is case-sensitive and the first
    occurrence wins. None when the response names no letter in the expected sentence.
    """
    response = response.replace("*", "")
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(response)
        if match:
            return match.group(1)
    return None


def choice_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None) -> float:
    """LongBench v2: 1 when the extracted letter of the stripped response is the answer, else 0.

    pred.py skips a response that comes back empty (an API failure there) and so leaves it out
    of the accuracy; a local model's empty generation is a wrong answer here.
    """
    return 1.0 if extract_choice(prediction.strip()) == ground_truth else 0.0


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("qa_f1", qa_f1_score, higher_is_better=True),
        Metric("rouge", rouge_l_score, higher_is_better=True),
        Metric("classification", classification_score, higher_is_better=True),
        Metric("retrieval", retrieval_score, higher_is_better=True),
        Metric("count", count_score, higher_is_better=True),
        Metric("code_sim", code_sim_score, higher_is_better=True),
        Metric("code_sim_levenshtein", code_sim_levenshtein_score, higher_is_better=True),
        Metric("choice", choice_score, higher_is_better=True),
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


def official_task_score(scores: Sequence[float]) -> float:
    """eval.py's reported task score: the mean x 100 rounded to 2 decimals."""
    return round(aggregate(scores), 2)


# --- LongBench-E: scores by length bucket --------------------------------------------------------
LengthBucket = Literal["0-4k", "4-8k", "8k+"]
LENGTH_BUCKETS: tuple[LengthBucket, ...] = ("0-4k", "4-8k", "8k+")


def length_bucket(length: int) -> LengthBucket:
    """eval.py --e's bucket of a row's `length` (LongBench's word count): < 4000, < 8000, else."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def bucket_scores(length_and_score: Iterable[tuple[int, float]]) -> dict[LengthBucket, float]:
    """Mean x 100 of the sample scores in each length bucket that holds any, unrounded.

    Each pair is (the row's `length`, its score in [0, 1]); per-sample rows store the length
    as `length_words`. eval.py reports an empty bucket as NaN; here it is left out.
    """
    grouped: dict[LengthBucket, list[float]] = {}
    for length, score in length_and_score:
        grouped.setdefault(length_bucket(length), []).append(score)
    return {bucket: aggregate(grouped[bucket]) for bucket in LENGTH_BUCKETS if bucket in grouped}


# --- LongBench v2: accuracy by difficulty and length ------------------------------------------------
V2_SPLITS = ("overall", "easy", "hard", "short", "medium", "long")


def v2_split_accuracy(rows: Iterable[tuple[str, str, float]]) -> dict[str, float]:
    """result.py's table: accuracy x 100 overall, by difficulty and by length, unrounded.

    Each row is (difficulty, length, score) with the values `workers.data` validates
    ("easy"/"hard", "short"/"medium"/"long"). result.py rounds to 1 decimal; a split with no
    rows is left out (result.py divides by zero there).
    """
    grouped: dict[str, list[float]] = {}
    for difficulty, length, score in rows:
        for split in ("overall", difficulty, length):
            grouped.setdefault(split, []).append(score)
    unknown = set(grouped) - set(V2_SPLITS)
    if unknown:
        raise ValueError(f"unknown LongBench v2 split values {sorted(unknown)}; allowed: {', '.join(V2_SPLITS[1:])}")
    return {split: aggregate(grouped[split]) for split in V2_SPLITS if split in grouped}


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
