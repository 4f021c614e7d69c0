"""Task registry, prompt building and middle truncation, with a hand-built tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from workers.data import LongBenchSample, load_longbench
from workers.prompts import build_prompt, middle_halves, prepare_input, truncate_middle
from workers.tasks import (
    CODE_SIM_VARIANT_TASK_NAMES,
    LONGBENCH_E_TASK_NAMES,
    LONGBENCH_TASK_NAMES,
    LONGBENCH_TASKS,
    LONGBENCH_V2_TASK_NAMES,
    RULER_TASK_NAMES,
    SYNTHETIC_TASK_NAMES,
    TaskSpec,
    get_task,
)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "longbench-sample"
NO_CHAT = {"trec", "triviaqa", "samsum", "lcc", "repobench-p"}
CHAT_MARKERS = "<user> <assistant>"
CHAT_TEMPLATE = (
    "{{ bos_token }} <user> {{ messages[0]['content'] }}{% if add_generation_prompt %} <assistant>{% endif %}"
)


# --- registry ---------------------------------------------------------------------------


def test_registry_holds_the_16_english_longbench_tasks_and_3_synthetic() -> None:
    assert LONGBENCH_TASK_NAMES == (
        "narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum",
        "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
    )  # fmt: skip
    assert SYNTHETIC_TASK_NAMES == ("passage_retrieval_synth", "passage_count_synth", "kv_retrieval_synth")
    assert LONGBENCH_E_TASK_NAMES == (
        "qasper_e", "multifieldqa_en_e", "hotpotqa_e", "2wikimqa_e", "gov_report_e", "multi_news_e", "trec_e",
        "triviaqa_e", "samsum_e", "passage_count_e", "passage_retrieval_en_e", "lcc_e", "repobench-p_e",
    )  # fmt: skip
    assert LONGBENCH_V2_TASK_NAMES == ("longbench_v2",)
    assert list(LONGBENCH_TASKS) == list(
        LONGBENCH_TASK_NAMES + SYNTHETIC_TASK_NAMES + LONGBENCH_E_TASK_NAMES + LONGBENCH_V2_TASK_NAMES
        + CODE_SIM_VARIANT_TASK_NAMES + RULER_TASK_NAMES
    )
    assert CODE_SIM_VARIANT_TASK_NAMES == (
        "lcc_levenshtein", "repobench-p_levenshtein", "lcc_e_levenshtein", "repobench-p_e_levenshtein")
    assert all(name == spec.name for name, spec in LONGBENCH_TASKS.items())


def test_official_generation_budgets_metrics_and_flags() -> None:
    max_new = {
        "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32, "musique": 32,
        "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32, "samsum": 128,
        "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
    }  # fmt: skip
    metric = {name: "qa_f1" for name in ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa")}
    metric |= {"musique": "qa_f1", "triviaqa": "qa_f1", "gov_report": "rouge", "qmsum": "rouge"}
    metric |= {"multi_news": "rouge", "samsum": "rouge", "trec": "classification", "passage_count": "count"}
    metric |= {"passage_retrieval_en": "retrieval", "lcc": "code_sim", "repobench-p": "code_sim"}
    for name in LONGBENCH_TASK_NAMES:
        spec = get_task(name)
        assert (spec.max_new_tokens, spec.metric) == (max_new[name], metric[name]), name
        assert spec.use_chat_template == (name not in NO_CHAT), name
        assert spec.first_line_only == (name in {"trec", "triviaqa", "samsum"}), name
        assert spec.version == "longbench-v1.1"


def test_templates_are_the_official_ones() -> None:
    # Byte-for-byte equality with the official strings is tested against a recorded copy in
    # tests/workers/test_longbench_parity.py; these spot-check the quirks a retyping would lose.
    assert get_task("narrativeqa").prompt_template.count("asconcisely as you can") == 2
    assert "\n\nArticle: {context}\n\n Answer the question" in get_task("qasper").prompt_template
    assert get_task("multi_news").prompt_template.startswith(
        "You are given several news passages. Write a one-page summary of all news. \n\n"
    )
    assert get_task("lcc").prompt_template == "Please complete the code given below. \n{context}Next line of code:\n"
    assert get_task("passage_count").prompt_template.endswith("The final answer is: ")


def test_synthetic_tasks_have_their_own_version_and_mirror_the_official_format() -> None:
    for name in SYNTHETIC_TASK_NAMES:
        spec = get_task(name)
        assert spec.version == "synthetic-v1"
        assert "{context}" in spec.prompt_template and spec.use_chat_template
    assert get_task("passage_count_synth").prompt_template == get_task("passage_count").prompt_template
    assert get_task("passage_retrieval_synth").metric == "retrieval"
    assert get_task("passage_retrieval_synth").prompt_template.endswith(
        get_task("passage_retrieval_en").prompt_template.split("abstract is from.", 1)[1]
    )


def test_get_task_rejects_unknown_names_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'lsht'.*narrativeqa.*kv_retrieval_synth"):
        get_task("lsht")


# --- build_prompt on the real sample rows -----------------------------------------------


SAMPLE_TASKS = sorted(path.stem for path in SAMPLE_DIR.glob("*.jsonl"))


def test_the_sample_folder_has_every_task_but_passage_count() -> None:
    assert set(SAMPLE_TASKS) == set(LONGBENCH_TASK_NAMES) - {"passage_count"}


@pytest.mark.parametrize("task", SAMPLE_TASKS)
def test_build_prompt_fills_the_template_for_real_rows(task: str) -> None:
    spec = get_task(task)
    for sample in load_longbench(SAMPLE_DIR, task):
        prompt = build_prompt(spec, sample)
        assert "{context}" not in prompt and "{input}" not in prompt
        head, rest = spec.prompt_template.split("{context}", 1)
        assert prompt.startswith(head + sample.context)
        assert prompt.endswith(rest.format(input=sample.input))
        assert len(prompt) == len(spec.prompt_template) - len("{context}") + len(sample.context) + (
            rest.count("{input}") * (len(sample.input) - len("{input}"))
        )


def test_build_prompt_leaves_braces_in_the_content_alone() -> None:
    spec = get_task("lcc")
    sample = _sample(context="int f() { return {x}; }", question="")
    expected = "Please complete the code given below. \nint f() { return {x}; }Next line of code:\n"
    assert build_prompt(spec, sample) == expected


# --- truncate_middle ----------------------------------------------------------------------


def test_truncate_middle_by_hand() -> None:
    ids = list(range(10))
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 5) == [0, 1, 8, 9]  # odd budget: half = 2 on each side
    assert truncate_middle(ids, 10) == ids
    assert truncate_middle(ids, 11) == ids
    assert truncate_middle(ids, 1) == []  # not pred.py's ids[-0:], which is everything
    assert truncate_middle([], 0) == []
    assert middle_halves(ids, 6) == ([0, 1, 2], [7, 8, 9])
    with pytest.raises(ValueError):
        truncate_middle(ids, -1)


@given(st.lists(st.integers(0, 1000), max_size=60), st.integers(0, 80))
def test_truncate_middle_keeps_a_prefix_and_a_suffix(ids: list[int], budget: int) -> None:
    out = truncate_middle(ids, budget)
    assert len(out) <= budget
    if len(ids) <= budget:
        assert out == ids
    else:
        half = budget // 2
        assert len(out) == 2 * half
        assert out[:half] == ids[:half]
        assert out[half:] == ids[len(ids) - half :]


# --- prepare_input with a hand-built word-level tokenizer ----------------------------------


def _sample(context: str, question: str) -> LongBenchSample:
    return LongBenchSample(question, context, ("x",), "id0", 0, "t", "en", None)


def make_tokenizer(text: str, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One id per whitespace-separated word of `text` (sorted), after <unk>=0, <s>=1, </s>=2."""
    words = sorted(set(text.split()) - {"<unk>", "<s>", "</s>"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {word: i for i, word in enumerate(words, start=3)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    # Adds the BOS the way Llama-style tokenizers do by default.
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = chat_template
    return tokenizer


PLAIN = TaskSpec("plain", "{context} Q: {input}", 8, "qa_f1", False, False, "test")
CHAT = TaskSpec("chat", "{context} Q: {input}", 8, "qa_f1", True, False, "test")
CONTEXT = " ".join(f"w{i}" for i in range(20))


def test_prepare_input_truncates_the_middle_and_adds_bos() -> None:
    tokenizer = make_tokenizer(CONTEXT + " Q: q")
    vocab = tokenizer.get_vocab()
    ids = lambda words: [vocab[word] for word in words.split()]  # noqa: E731
    sample = _sample(CONTEXT, "q")
    # 22 prompt tokens fit: all of them, after the BOS.
    assert prepare_input(PLAIN, sample, tokenizer, 22) == [1] + ids(CONTEXT + " Q: q")
    # 6 allowed: "w0 w1 w2" + "w19 Q: q". pred.py decodes each half on its own and joins the
    # text, so the seam reads "w2w19", an unknown word here (sentencepiece merges it too).
    assert prepare_input(PLAIN, sample, tokenizer, 6) == [1] + ids("w0 w1") + [0] + ids("Q: q")
    # 7 allowed (odd): still 3 + 3.
    assert prepare_input(PLAIN, sample, tokenizer, 7) == prepare_input(PLAIN, sample, tokenizer, 6)


def test_prepare_input_applies_the_chat_template_only_when_asked_and_available() -> None:
    sample = _sample(CONTEXT, "q")
    with_chat = make_tokenizer(CONTEXT + " Q: q " + CHAT_MARKERS, CHAT_TEMPLATE)
    vocab = with_chat.get_vocab()
    prompt_ids = [vocab[word] for word in (CONTEXT + " Q: q").split()]
    assert prepare_input(CHAT, sample, with_chat, 100) == [1, vocab["<user>"]] + prompt_ids + [vocab["<assistant>"]]
    assert prepare_input(PLAIN, sample, with_chat, 100) == [1] + prompt_ids
    without_chat = make_tokenizer(CONTEXT + " Q: q " + CHAT_MARKERS)
    assert prepare_input(CHAT, sample, without_chat, 100) == [1] + prompt_ids


@pytest.mark.parametrize("task", SAMPLE_TASKS)
def test_prepare_input_on_real_rows_follows_the_chat_rule(task: str) -> None:
    spec = get_task(task)
    sample = load_longbench(SAMPLE_DIR, task)[0]
    prompt = build_prompt(spec, sample)
    tokenizer = make_tokenizer(prompt + " " + CHAT_MARKERS, CHAT_TEMPLATE)
    user, assistant = tokenizer.convert_tokens_to_ids(["<user>", "<assistant>"])
    ids = prepare_input(spec, sample, tokenizer, 64)
    assert ids[0] == 1
    if task in NO_CHAT:
        assert user not in ids and assistant not in ids
        assert len(ids) <= 1 + 64 + 1  # BOS, budget, at most one extra token from the seam
    else:
        assert ids[1] == user and ids[-1] == assistant
        assert len(ids) <= 3 + 64 + 1
    # The kept head is the start of the prompt, word for word.
    words = prompt.split()
    start = 2 if task not in NO_CHAT else 1
    assert tokenizer.convert_ids_to_tokens(ids[start : start + 31]) == words[:31]
