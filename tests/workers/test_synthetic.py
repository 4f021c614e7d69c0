"""Synthetic LongBench-format tasks from WikiText-2: determinism, solvability, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workers.data import LongBenchSample, load_longbench
from workers.metrics import aggregate, score_sample
from workers.synthetic import (
    DEFAULT_WIKITEXT,
    Article,
    SynthConfig,
    clip_words,
    generate,
    load_wikitext,
    parse_wikitext,
    sentences,
    write_jsonl,
)
from workers.tasks import SYNTHETIC_TASK_NAMES, get_task

PARAGRAPH = re.compile(r"^Paragraph (\d+): (.*)$")


@pytest.fixture(scope="module")
def articles() -> list[Article]:
    return load_wikitext(DEFAULT_WIKITEXT)


def _passages(context: str) -> list[tuple[int, str]]:
    blocks = context.split("\n\n")
    matches = [PARAGRAPH.match(block) for block in blocks]
    assert all(matches), "every block is 'Paragraph k: text'"
    return [(int(m.group(1)), m.group(2)) for m in matches if m]


def test_parse_wikitext_by_hand() -> None:
    text = (
        " = First = \r\n One . Two . \r\n = = Section = = \r\n Three . \r\n"
        " = = = Sub = = = \r\n \r\n = Second = \r\n Four . \r\n = Empty = \r\n"
    )
    assert parse_wikitext(text) == [
        Article("First", ("One . Two .", "Three .")),
        Article("Second", ("Four .",)),
    ]


def test_the_repository_wikitext_parses_into_articles(articles: list[Article]) -> None:
    assert len(articles) == 62
    assert articles[0].title == "Robert Boulter"
    assert articles[0].paragraphs[0].startswith("Robert Boulter is an English film , television and theatre actor .")
    heading = re.compile(r"=( =)* .* =( =)*")
    assert not any(heading.fullmatch(p) for a in articles for p in a.paragraphs)
    # Content lines that merely start with "=" (a table legend) are kept.
    assert "= National record" in dict((a.title, a.paragraphs) for a in articles)["Chad at the 2008 Summer Olympics"]


def test_clip_words() -> None:
    text = "a b c . d e . f g h i ."  # WikiText spacing: each "." is a word
    assert clip_words(text, 7) == "a b c . d e ."
    assert clip_words(text, 6) == "a b c ."
    assert clip_words(text, 3) == "a b c"  # first sentence too long: cut by words
    assert clip_words(text, 100) == text


@pytest.mark.parametrize("task", SYNTHETIC_TASK_NAMES)
def test_same_seed_same_bytes_other_seed_other_bytes(task: str, articles: list[Article], tmp_path: Path) -> None:
    def write(seed: int, name: str) -> bytes:
        write_jsonl(generate(SynthConfig(task, 4, 300, seed), articles), tmp_path / name)
        return (tmp_path / name).read_bytes()

    assert write(7, "a.jsonl") == write(7, "b.jsonl")
    assert write(7, "a.jsonl") != write(8, "c.jsonl")


@pytest.mark.parametrize("task", SYNTHETIC_TASK_NAMES)
def test_samples_do_not_depend_on_how_many_are_asked_for(task: str, articles: list[Article]) -> None:
    assert generate(SynthConfig(task, 5, 300, 1), articles)[:3] == generate(SynthConfig(task, 3, 300, 1), articles)


@pytest.mark.parametrize("task", SYNTHETIC_TASK_NAMES)
def test_round_trip_through_load_longbench(task: str, articles: list[Article], tmp_path: Path) -> None:
    samples = generate(SynthConfig(task, 6, 400, 3), articles)
    write_jsonl(samples, tmp_path / f"{task}.jsonl")
    assert load_longbench(tmp_path, task) == samples
    assert len({s.id for s in samples}) == 6
    for sample in samples:
        assert (sample.dataset, sample.language, sample.all_classes) == (task, "en", None)
        assert sample.length == len(sample.input.split()) + len(sample.context.split())


def test_passage_retrieval_answer_is_recoverable(articles: list[Article]) -> None:
    for sample in generate(SynthConfig("passage_retrieval_synth", 20, 600, 0, num_passages=8), articles):
        passages = _passages(sample.context)
        assert [number for number, _ in passages] == list(range(1, 9))
        [answer] = sample.answers
        target = int(answer.removeprefix("Paragraph "))
        target_text = passages[target - 1][1]
        assert sample.context.count(target_text) == 1
        # The abstract opens the target paragraph and appears nowhere else.
        assert target_text.startswith(sample.input)
        assert sample.context.count(sample.input) == 1
        assert len(sample.input.split()) >= 15 or sample.input == target_text
        assert 300 <= sample.length <= 700


def test_passage_count_answer_is_the_number_of_distinct_passages(articles: list[Article]) -> None:
    answers = set()
    for sample in generate(SynthConfig("passage_count_synth", 20, 500, 0, num_passages=10), articles):
        texts = [text for _, text in _passages(sample.context)]
        assert len(texts) == 10
        assert sample.answers == (str(len(set(texts))),)
        assert sample.input == ""
        answers.add(sample.answers[0])
    assert len(answers) > 1, "the distinct count varies between samples"


def test_kv_retrieval_needle_is_present_once_at_the_asked_depth(articles: list[Article]) -> None:
    for depth in (0.0, 0.5, 1.0):
        for sample in generate(SynthConfig("kv_retrieval_synth", 5, 500, 0, needle_depth=depth), articles):
            [value] = sample.answers
            key = re.fullmatch(r"What is the secret code for ([0-9a-f]{4}-[0-9a-f]{4})\?", sample.input).group(1)
            needle = f"The secret code for {key} is {value} ."
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", value)
            assert sample.context.count(needle) == 1 and sample.context.count(value) == 1
            before, after = (len(part.split()) for part in sample.context.split(needle))
            # The nearest sentence boundary: off by at most half of the longest sentence.
            longest = max(len(sentence.split()) for sentence in sentences(sample.context))
            assert abs(before - depth * (before + after)) <= longest / 2
            assert (before == 0) == (depth == 0.0) and (after == 0) == (depth == 1.0)
            assert 500 <= len(sample.context.split()) <= 500 + 200


@pytest.mark.parametrize("task", SYNTHETIC_TASK_NAMES)
def test_right_answer_scores_100_and_a_wrong_one_0(task: str, articles: list[Article]) -> None:
    spec = get_task(task)
    samples = generate(SynthConfig(task, 5, 300, 2), articles)
    right = [score_sample(spec, s.answers[0], s.answers, s.all_classes) for s in samples]
    assert aggregate(right) == pytest.approx(100.0)
    assert aggregate([score_sample(spec, _wrong(s), s.answers, s.all_classes) for s in samples]) == 0.0


def _wrong(sample: LongBenchSample) -> str:
    answer = sample.answers[0]
    if answer.startswith("Paragraph "):
        return f"Paragraph {int(answer.split()[1]) % 10 + 1}"
    if answer.isdigit():
        return str(int(answer) + 1)
    return "0123abcd-0000-ffff"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown synthetic task"):
        SynthConfig("trec", 1, 100, 0)
    with pytest.raises(ValueError, match="num_samples"):
        SynthConfig("kv_retrieval_synth", 0, 100, 0)
    with pytest.raises(ValueError, match="num_passages"):
        SynthConfig("passage_count_synth", 1, 100, 0, num_passages=1)
    with pytest.raises(ValueError, match="needle_depth"):
        SynthConfig("kv_retrieval_synth", 1, 100, 0, needle_depth=1.5)
