"""Offline synthetic tasks in LongBench format, built from WikiText-2 raw text.

They need no download and can be made as short as a CPU test wants, while exercising the
same skills as LongBench's synthetic tasks:
- `passage_retrieval_synth`: "Paragraph k: ..." paragraphs and an abstract that is the
  opening sentence(s) of one of them, verbatim; the answer is "Paragraph k" (as in
  passage_retrieval_en, whose abstracts are summaries instead).
- `passage_count_synth`: paragraphs, some repeated, shuffled; the answer is the number of
  distinct ones (as in passage_count).
- `kv_retrieval_synth`: "The secret code for <key> is <value>." inserted between two
  sentences of WikiText filler at a chosen depth; the answer is the value.

Generation is a pure function of (`SynthConfig`, articles). Each sample draws from its own
`random.Random`, seeded from (task, seed, index) through SHA-256, so sample i does not
change when `num_samples` does and the bytes are the same in every process.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.data import LongBenchSample, to_row
from workers.tasks import SYNTHETIC_TASK_NAMES, get_task

DEFAULT_WIKITEXT = Path(__file__).resolve().parents[1] / "data" / "wikitext-2-raw" / "wiki.test.raw"

# " = Title = " starts an article; " = = Section = = " and deeper do not.
_ARTICLE_HEADING = re.compile(r"^ = ([^=].*) = $")
_ANY_HEADING = re.compile(r"^ =( =)* .* =( =)* $")
# WikiText puts spaces around punctuation, so a sentence ends with " ." (or " ?", " !").
_SENTENCE_BREAK = re.compile(r"(?<= [.?!]) (?=\S)")
# Paragraphs shorter than this are mostly captions and list items: too thin to tell apart.
_MIN_PARAGRAPH_WORDS = 30
_MIN_ABSTRACT_WORDS = 15


@dataclass(frozen=True)
class Article:
    title: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. `context_words` is the approximate context size in words
    (about 1.3 tokens each for Llama-style tokenizers on WikiText)."""

    task: str
    num_samples: int
    context_words: int
    seed: int
    # Paragraphs per context for passage_retrieval_synth and passage_count_synth.
    num_passages: int = 10
    # kv_retrieval_synth: the share of the filler's words before the needle (0 = start,
    # 1 = end), met at the nearest sentence boundary; None draws it per sample.
    needle_depth: float | None = None

    def __post_init__(self) -> None:
        if self.task not in SYNTHETIC_TASK_NAMES:
            raise ValueError(f"unknown synthetic task {self.task!r}; allowed: {', '.join(SYNTHETIC_TASK_NAMES)}")
        if self.num_samples < 1 or self.context_words < 20:
            raise ValueError("need num_samples >= 1 and context_words >= 20")
        if self.num_passages < 2:
            raise ValueError("need num_passages >= 2")
        if self.needle_depth is not None and not 0.0 <= self.needle_depth <= 1.0:
            raise ValueError(f"needle_depth must be in [0, 1], got {self.needle_depth}")


def parse_wikitext(text: str) -> list[Article]:
    """Articles of a WikiText raw file: top-level headings and the paragraph lines under them."""
    articles: list[Article] = []
    title: str | None = None
    paragraphs: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.rstrip("\r")
        heading = _ARTICLE_HEADING.match(line)
        if heading:
            if title is not None and paragraphs:
                articles.append(Article(title, tuple(paragraphs)))
            title, paragraphs = heading.group(1).strip(), []
        elif line.strip() and not _ANY_HEADING.match(line) and title is not None:
            paragraphs.append(line.strip())
    if title is not None and paragraphs:
        articles.append(Article(title, tuple(paragraphs)))
    return articles


def load_wikitext(path: str | Path = DEFAULT_WIKITEXT) -> list[Article]:
    return parse_wikitext(Path(path).read_text(encoding="utf-8"))


def sentences(paragraph: str) -> list[str]:
    return _SENTENCE_BREAK.split(paragraph)


def clip_words(paragraph: str, max_words: int) -> str:
    """Whole leading sentences of at most `max_words` words; the first `max_words` words
    when even the first sentence is longer."""
    kept: list[str] = []
    total = 0
    for sentence in sentences(paragraph):
        words = len(sentence.split())
        if total + words > max_words:
            break
        kept.append(sentence)
        total += words
    return " ".join(kept) if kept else " ".join(paragraph.split()[:max_words])


def _paragraph_pool(articles: Sequence[Article]) -> list[str]:
    pool = [p for article in articles for p in article.paragraphs if len(p.split()) >= _MIN_PARAGRAPH_WORDS]
    return list(dict.fromkeys(pool))  # drops repeats, keeps file order


def _distinct_passages(rng: random.Random, pool: Sequence[str], count: int, max_words: int) -> list[str]:
    """`count` clipped paragraphs, none equal to or inside another, so they are countable."""
    chosen: list[str] = []
    for index in rng.sample(range(len(pool)), len(pool)):
        text = clip_words(pool[index], max_words)
        if all(text not in other and other not in text for other in chosen):
            chosen.append(text)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"the text has fewer than {count} distinct paragraphs of {_MIN_PARAGRAPH_WORDS}+ words")


def _numbered(passages: Sequence[str]) -> str:
    # passage_retrieval_en's layout: "Paragraph 1: ...", blank line between paragraphs.
    return "\n\n".join(f"Paragraph {number}: {text}" for number, text in enumerate(passages, start=1))


def _abstract(paragraph: str) -> str:
    """The paragraph's opening sentences, at least _MIN_ABSTRACT_WORDS words when it has them."""
    kept: list[str] = []
    for sentence in sentences(paragraph):
        kept.append(sentence)
        if len(" ".join(kept).split()) >= _MIN_ABSTRACT_WORDS:
            break
    return " ".join(kept)


def _passage_retrieval(rng: random.Random, pool: Sequence[str], config: SynthConfig) -> tuple[str, str, str]:
    passages = _distinct_passages(rng, pool, config.num_passages, config.context_words // config.num_passages)
    abstracts = [_abstract(text) for text in passages]
    # Only a paragraph whose abstract occurs in no other paragraph has a single right answer.
    unique = [i for i, abstract in enumerate(abstracts) if sum(abstract in text for text in passages) == 1]
    target = rng.choice(unique)
    return _numbered(passages), abstracts[target], f"Paragraph {target + 1}"


def _passage_count(rng: random.Random, pool: Sequence[str], config: SynthConfig) -> tuple[str, str, str]:
    total = config.num_passages
    distinct = rng.randint(max(1, total // 2), total)
    passages = _distinct_passages(rng, pool, distinct, config.context_words // total)
    passages += [rng.choice(passages[:distinct]) for _ in range(total - distinct)]
    rng.shuffle(passages)
    return _numbered(passages), "", str(distinct)


def _code(rng: random.Random, group_sizes: Sequence[int]) -> str:
    return "-".join("".join(rng.choice("0123456789abcdef") for _ in range(size)) for size in group_sizes)


def _kv_retrieval(rng: random.Random, pool: Sequence[str], config: SynthConfig) -> tuple[str, str, str]:
    key, value = _code(rng, (4, 4)), _code(rng, (8, 4, 4))
    # Consecutive paragraphs from a random start read as running text.
    start = rng.randrange(len(pool))
    filler: list[str] = []
    words = 0
    for offset in range(len(pool)):
        for sentence in sentences(pool[(start + offset) % len(pool)]):
            filler.append(sentence)
            words += len(sentence.split())
            if words >= config.context_words:
                break
        if words >= config.context_words:
            break
    depth = rng.random() if config.needle_depth is None else config.needle_depth
    # The sentence boundary whose share of the filler's words before it is closest to depth.
    before = [0]
    for sentence in filler:
        before.append(before[-1] + len(sentence.split()))
    position = min(range(len(before)), key=lambda i: abs(before[i] - depth * words))
    needle = f"The secret code for {key} is {value} ."
    context = " ".join(filler[:position] + [needle] + filler[position:])
    return context, f"What is the secret code for {key}?", value


_BUILDERS = {
    "passage_retrieval_synth": _passage_retrieval,
    "passage_count_synth": _passage_count,
    "kv_retrieval_synth": _kv_retrieval,
}


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(part) for part in parts).encode("utf-8")).hexdigest()


def generate(config: SynthConfig, articles: Sequence[Article]) -> list[LongBenchSample]:
    """`config.num_samples` LongBench-format samples of `config.task`."""
    pool = _paragraph_pool(articles)
    if len(pool) < config.num_passages:
        raise ValueError(f"need at least {config.num_passages} paragraphs of {_MIN_PARAGRAPH_WORDS}+ words")
    version = get_task(config.task).version
    samples = []
    for index in range(config.num_samples):
        rng = random.Random(int(_digest(config.task, config.seed, index)[:16], 16))
        context, question, answer = _BUILDERS[config.task](rng, pool, config)
        samples.append(
            LongBenchSample(
                input=question,
                context=context,
                answers=(answer,),
                id=_digest(config.task, version, config.seed, index)[:48],
                length=len(question.split()) + len(context.split()),
                dataset=config.task,
                language="en",
                all_classes=None,
            )
        )
    return samples


def write_jsonl(samples: Sequence[LongBenchSample], path: str | Path) -> None:
    """One LongBench JSON object per line, UTF-8, "\\n" line ends: same samples, same bytes."""
    with Path(path).open("w", encoding="utf-8", newline="\n") as handle:
        for sample in samples:
            handle.write(json.dumps(to_row(sample), ensure_ascii=False) + "\n")
