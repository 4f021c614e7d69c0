"""RULER's synthetic tasks (NVIDIA/RULER, `scripts/data/synthetic/`), generated offline.

Families, with RULER's templates and answer prefixes (`scripts/data/synthetic/constants.py`)
and its task settings (`scripts/synthetic.yaml`):
- NIAH (`niah.py`): needles "One of the special magic {numbers} for {key} is: {value}." in a
  haystack; single (3 variants), multi-key (3), multi-value, multi-query.
- variable tracking (`variable_tracking.py`): a chain "VAR A = 12345", "VAR B = VAR A", ...
  in repeated-sentence noise, after one worked example; the answer is every name of the value.
- common-words extraction (`common_words_extraction.py`): a numbered word list in which 10
  words repeat often; the answer is those 10.
- frequent-words extraction (`freq_words_extraction.py`): coded words drawn from a zeta law;
  the answer is the 3 most frequent (the most frequent one, '...', is noise).

A prompt is RULER's `base` model template: the filled task template followed by the answer
prefix, as plain text (the tasks register `use_chat_template=False`). The context is sized as
RULER sizes it: the largest haystack (binary search, then steps of `incremental` down per
sample) for which the prompt's tokens plus the task's `max_new_tokens` fit `context_length`
tokens of the model's tokenizer, passed in as `count_tokens`.

Where this departs from RULER, because the repository is offline:
- the essay haystack is WikiText-2 (`data/wikitext-2-raw/wiki.test.raw`, article paragraphs in
  file order, WikiText's own tokenization kept) instead of Paul Graham's essays, and it is
  split into sentences at WikiText's " . " / " ? " / " ! " instead of by nltk's `sent_tokenize`;
- word lists come from WikiText-2 (`word_pool`: lowercase alphabetic words of 4-12 letters seen
  at least 3 times) instead of wonderwords' noun/adjective/verb lists; NIAH's "adjective-noun"
  keys are two distinct pool words joined by "-";
- random draws use one `random.Random` per sample, seeded from (task, seed, context_length,
  depth, index) through SHA-256, where RULER shares one global generator (and a fixed
  `random_seed` for some shuffles); numbers differ, distributions do not;
- variable tracking's worked example is built directly with 3-letter names and a fresh value
  (RULER builds one with the value 12345 and then renames it) and is sized to 500 tokens;
- a NIAH task may be given a fixed `depth` (percent of the haystack before the needle) for the
  needle-in-a-haystack grid; RULER draws depths from 40 evenly spaced values.
A sample's `answers` holds one string: its references, one per line (`workers.metrics`'s
`ruler_string_match_all` scores the fraction of them found in the prediction).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from store import cells as store_cells
from store.cells import cell_name  # noqa: F401  (re-exported: the generator names its cells)
from workers.data import LongBenchSample
from workers.synthetic import Article
from workers.tasks import RULER_TASK_NAMES, get_task

TokenCounter = Callable[[str], int]

# --- RULER's templates (scripts/data/synthetic/constants.py), verbatim ----------------------------
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
    "{type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
    "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
# niah.py's DEPTHS: np.round(np.linspace(0, 100, 40)).astype(int)
DEPTHS: tuple[int, ...] = tuple(int(math.floor(100 * i / 39 + 0.5)) for i in range(40))
_SENTENCE_BREAK = re.compile(r"(?<= [.?!]) (?=\S)")
_POOL_WORD = re.compile(r"^[a-z]{4,12}$")


@dataclass(frozen=True)
class NiahArgs:
    """One NIAH variant of scripts/synthetic.yaml."""

    haystack: str  # "noise" | "essay" | "needle"
    key_type: str  # "words" | "numbers" | "uuids"
    value_type: str
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1


NIAH_VARIANTS: dict[str, NiahArgs] = {
    "ruler_niah_single_1": NiahArgs("noise", "words", "numbers"),
    "ruler_niah_single_2": NiahArgs("essay", "words", "numbers"),
    "ruler_niah_single_3": NiahArgs("essay", "words", "uuids"),
    "ruler_niah_multikey_1": NiahArgs("essay", "words", "numbers", num_k=4),
    "ruler_niah_multikey_2": NiahArgs("needle", "words", "numbers"),
    "ruler_niah_multikey_3": NiahArgs("needle", "uuids", "uuids"),
    "ruler_niah_multivalue": NiahArgs("essay", "words", "numbers", num_v=4),
    "ruler_niah_multiquery": NiahArgs("essay", "words", "numbers", num_q=4),
}
# Tasks with one needle, whose depth is well defined: the needle-in-a-haystack grid's.
DEPTH_TASKS: tuple[str, ...] = tuple(name for name, a in NIAH_VARIANTS.items()
                                   if max(a.num_k, a.num_q) * a.num_v == 1)
# variable tracking: 1 chain of 4 hops; cwe: 10 words, 30 / 3 repeats; fwe: alpha 2, 6 letters.
VT_CHAINS, VT_HOPS = 1, 4
CWE_COMMON, CWE_FREQ, CWE_UNCOMMON_FREQ, CWE_FEWSHOT = 10, 30, 3, 1
FWE_ALPHA, FWE_WORD_LEN = 2.0, 6
_VT_EXAMPLE_TOKENS = 500


@dataclass(frozen=True)
class RulerConfig:
    """One cell: a task at `context_length` tokens (prompt + max_new_tokens), optionally with
    the needle at `depth` percent of the haystack (NIAH single-needle tasks only)."""

    task: str
    context_length: int
    seed: int = 0
    depth: int | None = None

    def __post_init__(self) -> None:
        problems = ruler_problems(self.task, self.context_length, self.depth)
        if problems:
            raise ValueError("invalid RulerConfig: " + "; ".join(problems))


def ruler_problems(task: str, context_length: object, depth: object) -> list[str]:
    """Every problem of a (task, context_length, depth) cell, each naming the field."""
    problems = []
    if task not in RULER_TASK_NAMES:
        problems.append(f"task={task!r} is not a RULER task; allowed: {', '.join(RULER_TASK_NAMES)}")
        return problems
    low = min_context_length(task)
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < low:
        problems.append(f"context_length={context_length!r} is out of range for {task} (allowed: integer >= {low} "
                        "tokens: the generation budget plus a minimal haystack)")
    if depth is not None:
        if task not in DEPTH_TASKS:
            problems.append(f"depth is only for single-needle tasks ({', '.join(DEPTH_TASKS)}), not {task}")
        elif isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 100:
            problems.append(f"depth={depth!r} is out of range (allowed: integer percent 0..100)")
    return problems


def min_context_length(task: str) -> int:
    """The shortest context a task accepts: its generation budget, vt's 500-token worked
    example, and room for a minimal haystack."""
    return get_task(task).max_new_tokens + (_VT_EXAMPLE_TOKENS if task == "ruler_vt" else 0) + 64


def parse_cell(name: str) -> tuple[str, int, int | None] | None:
    """(task, context_length, depth) of a `cell_name` of one of our RULER tasks; None otherwise."""
    cell = store_cells.parse_cell(name)
    return cell if cell is not None and cell[0] in RULER_TASK_NAMES else None


# --- text sources ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sources:
    """What the haystacks and word lists are cut from."""

    essay_words: tuple[str, ...]  # the essay haystack, whitespace-split
    words: tuple[str, ...]  # the word pool, sorted


def sources_from_articles(articles: Sequence[Article]) -> Sources:
    text = " ".join(p for article in articles for p in article.paragraphs)
    return Sources(tuple(text.split()), word_pool(text))


def word_pool(text: str, min_count: int = 3) -> tuple[str, ...]:
    """Lowercase alphabetic words of 4-12 letters seen at least `min_count` times, sorted."""
    counts = Counter(w for w in text.split() if _POOL_WORD.match(w))
    return tuple(sorted(w for w, n in counts.items() if n >= min_count))


# --- random values (niah.py's generate_random) ------------------------------------------------------
def _random_value(rng: random.Random, kind: str, words: Sequence[str]) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    first, second = rng.sample(range(len(words)), 2)
    return f"{words[first]}-{words[second]}"


# --- NIAH ------------------------------------------------------------------------------------------
def _essay_sentences(words: Sequence[str], count: int) -> list[str]:
    repeats = -(-count // len(words))  # the haystack repeats when shorter than asked, as in niah.py
    text = " ".join((list(words) * repeats)[:count])
    return _SENTENCE_BREAK.split(text.strip())


def _niah(rng: random.Random, args: NiahArgs, size: int, depth: int | None,
          sources: Sources) -> tuple[str, str, list[str]]:
    words = sources.words
    num_k = max(args.num_k, args.num_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(_random_value(rng, args.key_type, words))
        values.append([_random_value(rng, args.value_type, words) for _ in range(args.num_v)])
        needles += [NEEDLE.format(type_needle_v=args.value_type, key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)
    if args.haystack == "essay":
        sents = _essay_sentences(sources.essay_words, size)
        depths = [depth] if depth is not None else rng.sample(DEPTHS, len(needles))
        cuts = [0, *sorted(int(len(sents) * (d / 100)) for d in depths), len(sents)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        context = " ".join(parts)
    else:
        if args.haystack == "noise":
            lines = [NOISE] * size
        else:  # "needle": distractor needles with other random keys and values
            lines = [NEEDLE.format(type_needle_v=args.value_type, key=_random_value(rng, args.key_type, words),
                                   value=_random_value(rng, args.value_type, words)) for _ in range(size)]
        where = [round(size * depth / 100)] if depth is not None else rng.sample(range(size), len(needles))
        for index, needle in zip(sorted(where, reverse=True), needles):
            lines.insert(index, needle)
        context = "\n".join(lines)
    asked = rng.sample(range(num_k), args.num_q)
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix, kind = NIAH_TEMPLATE, NIAH_PREFIX, args.value_type
    if args.num_q * args.num_v == 1:  # niah.py's singular wording, replacements in its order
        whole = template + "\x00" + prefix
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            whole = whole.replace(old, new)
        template, prefix = whole.split("\x00")
        kind = kind[:-1]
    return (template.format(type_needle_v=kind, context=context, query=query),
            prefix.format(type_needle_v=kind, query=query), answers)


# --- variable tracking -----------------------------------------------------------------------------
def _chains(rng: random.Random, letters: int) -> tuple[list[list[str]], list[list[str]], str]:
    """(names per chain, statements per chain, the first chain's value)."""
    count = VT_CHAINS * (VT_HOPS + 1)
    names: list[str] = []
    while len(names) < count:  # distinct names, as variable_tracking.py's retry loop makes them
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    groups = [names[i:i + VT_HOPS + 1] for i in range(0, count, VT_HOPS + 1)]
    value = str(rng.randint(10000, 99999))
    chains = []
    for group in groups:
        chain = [f"VAR {group[0]} = {value if not chains else rng.randint(10000, 99999)}"]
        chain += [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(VT_HOPS)]
        chains.append(chain)
    return groups, chains, value


def _vt_text(rng: random.Random, size: int, letters: int) -> tuple[str, str, list[str]]:
    groups, chains, value = _chains(rng, letters)
    lines = [NOISE] * size
    for chain in chains:
        positions = sorted(rng.sample(range(len(lines)), len(chain)))
        for offset, (position, statement) in enumerate(zip(positions, chain)):
            lines.insert(position + offset, statement)
    context = "\n".join(lines).replace(". \n", ".\n")
    return (VT_TEMPLATE.format(context=context, query=value),
            VT_PREFIX.format(num_v=VT_HOPS + 1, query=value), groups[0])


def _vt(rng: random.Random, size: int, example: str) -> tuple[str, str, list[str]]:
    text, prefix, answers = _vt_text(rng, size, 5)
    return example + "\n" + text, prefix, answers


def _vt_example(rng: random.Random, count_tokens: TokenCounter) -> str:
    """The worked example: a 3-letter chain in noise fitted to 500 tokens, with its answer."""
    probe = rng.getstate()

    def build(size: int) -> str:
        rng.setstate(probe)
        text, prefix, answers = _vt_text(rng, size, 3)
        return text + prefix + " " + " ".join(answers) + "\n"

    size = _largest_fitting(lambda n: count_tokens(build(n)), _VT_EXAMPLE_TOKENS, 5)
    return build(size)


# --- common-words extraction -----------------------------------------------------------------------
def _cwe_list(rng: random.Random, words: Sequence[str], count: int, common_repeats: int,
              uncommon_repeats: int) -> tuple[str, list[str]]:
    if count > len(words):
        raise ValueError(f"common-words extraction needs {count} distinct words; the word pool has {len(words)}")
    chosen = rng.sample(list(words), count)
    common, uncommon = chosen[:CWE_COMMON], chosen[CWE_COMMON:]
    listed = common * common_repeats + uncommon * uncommon_repeats
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common


def _cwe(rng: random.Random, size: int, context_length: int, words: Sequence[str]) -> tuple[str, str, list[str]]:
    # common_words_extraction.py: shorter contexts get lighter repeats and a smaller example.
    short = context_length < 4096
    example_args, main_args = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (CWE_FREQ, CWE_UNCOMMON_FREQ))
    shots = []
    for _ in range(CWE_FEWSHOT):
        listed, common = _cwe_list(rng, words, *example_args)
        shots.append(CWE_TEMPLATE.format(context=listed) + " "
                     + " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)))
    listed, common = _cwe_list(rng, words, size, *main_args)
    return "\n".join(shots) + "\n" + CWE_TEMPLATE.format(context=listed), CWE_PREFIX, common


# --- frequent-words extraction ---------------------------------------------------------------------
def zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta(alpha), alpha > 1: a partial sum plus its Euler-Maclaurin tail."""
    if alpha <= 1:
        raise ValueError(f"zeta needs alpha > 1, got {alpha}")
    head = sum(k ** -alpha for k in range(1, terms))
    return head + terms ** (1 - alpha) / (alpha - 1) + terms ** -alpha / 2 + alpha * terms ** (-alpha - 1) / 12


def _fwe_vocab(rng: random.Random, size: int) -> list[str]:
    vocab: set[str] = set()
    while len(vocab) < size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN)))
    ordered = sorted(vocab)
    rng.shuffle(ordered)
    ordered[0] = "..."  # the top-ranked word is noise, as in freq_words_extraction.py
    return ordered


def _fwe(rng: random.Random, size: int, vocab: Sequence[str]) -> tuple[str, str, list[str]]:
    norm = zeta(FWE_ALPHA)
    listed = [w for k, w in enumerate(vocab, start=1) for _ in range(int(size * k ** -FWE_ALPHA / norm))]
    rng.shuffle(listed)
    return FWE_TEMPLATE.format(context=" ".join(listed)), FWE_PREFIX, list(vocab[1:4])


# --- sizing ----------------------------------------------------------------------------------------
def _largest_fitting(tokens_of: Callable[[int], int], budget: int, incremental: int,
                     cap: int | None = None) -> int:
    """RULER's binary search: the largest size whose prompt fits `budget` tokens (at least
    `incremental`, whatever it costs, as in RULER), at most `cap`. RULER's upper bound is 3x
    the size a per-unit estimate at `incremental` predicts; it is doubled here while it still
    fits, since a fixed part (cwe's worked example) makes that estimate too small."""
    per_unit = tokens_of(incremental) / incremental
    low, high = incremental, max(int(budget / per_unit * 3), incremental * 2)
    while (cap is None or high < cap) and tokens_of(high) <= budget:
        high *= 2
    high = min(high, cap) if cap is not None else high
    best = None
    while low <= high:
        mid = (low + high) // 2
        if tokens_of(mid) <= budget:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best if best is not None else incremental


def _family(task: str) -> str:
    if task in NIAH_VARIANTS:
        return "niah"
    return task.removeprefix("ruler_")


def _incremental(task: str, context_length: int) -> int:
    if task in NIAH_VARIANTS:
        if NIAH_VARIANTS[task].haystack == "essay":
            return 500
        return 5 if context_length < 4096 else 25
    return {"vt": 5 if context_length < 4096 else 10, "cwe": 10}[_family(task)]


# --- samples ---------------------------------------------------------------------------------------
def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(part) for part in parts).encode("utf-8")).hexdigest()


def _rng(config: RulerConfig, index: object) -> random.Random:
    return random.Random(int(_digest(config.task, config.seed, config.context_length, config.depth, index)[:16], 16))


def sample_id(config: RulerConfig, index: int) -> str:
    version = get_task(config.task).version
    return _digest(config.task, version, config.seed, config.context_length, config.depth, index)[:48]


Builder = Callable[[random.Random, int], tuple[str, str, list[str]]]


def _builder(config: RulerConfig, sources: Sources, count_tokens: TokenCounter) -> Builder:
    """size -> (prompt without prefix, answer prefix, references) for one sample's generator."""
    family = _family(config.task)
    if family == "niah":
        args = NIAH_VARIANTS[config.task]
        return lambda rng, size: _niah(rng, args, size, config.depth, sources)
    if family == "vt":
        example = _vt_example(_rng(config, "example"), count_tokens)
        return lambda rng, size: _vt(rng, size, example)
    if family == "cwe":
        return lambda rng, size: _cwe(rng, size, config.context_length, sources.words)
    vocab = _fwe_vocab(_rng(config, "vocab"), (config.context_length - get_task(config.task).max_new_tokens) // 50)
    return lambda rng, size: _fwe(rng, size, vocab)


def generate(config: RulerConfig, indices: Sequence[int], sources: Sources,
             count_tokens: TokenCounter) -> list[LongBenchSample]:
    """Samples `indices` of the cell, in LongBench format: `context` is the filled template,
    `input` the answer prefix (the task's template is "{context}{input}"), `answers` one string
    of the references, one per line. Each prompt's `count_tokens` plus the task's
    `max_new_tokens` is at most `config.context_length`."""
    budget = config.context_length - get_task(config.task).max_new_tokens
    build = _builder(config, sources, count_tokens)
    step = _incremental(config.task, config.context_length) if _family(config.task) != "fwe" else None

    def tokens(rng_key: object, size: int) -> int:
        text, prefix, _ = build(_rng(config, rng_key), size)
        return count_tokens(text + prefix)

    if step is None:  # fwe sizes by words: freq_words_extraction.py's upward scan, once
        step = max(budget // 32, 1)
        size = budget // FWE_WORD_LEN
        while tokens("probe", size) < budget:
            size += step
        size -= step
    else:
        cap = len(sources.words) if _family(config.task) == "cwe" else None
        size = _largest_fitting(lambda n: tokens("probe", n), budget, step, cap)
    samples = []
    for index in indices:
        used = size
        while True:
            text, prefix, answers = build(_rng(config, index), used)
            if count_tokens(text + prefix) <= budget or used <= step:
                break
            used -= step
        if count_tokens(text + prefix) > budget:
            raise ValueError(f"{cell_name(config.task, config.context_length, config.depth)}: even the "
                             f"smallest haystack does not fit {config.context_length} tokens; use a longer context")
        samples.append(LongBenchSample(
            input=prefix, context=text, answers=("\n".join(answers),), id=sample_id(config, index),
            length=len((text + prefix).split()), dataset=config.task, language="en", all_classes=None))
    return samples


__all__ = ["DEPTHS", "DEPTH_TASKS", "NIAH_VARIANTS", "RulerConfig", "Sources", "cell_name", "generate",
           "min_context_length", "parse_cell", "ruler_problems", "sample_id", "sources_from_articles",
           "word_pool", "zeta"]
