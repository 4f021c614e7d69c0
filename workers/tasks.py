"""Tasks as data: the prompt, generation budget and metric of every evaluation task.

The 16 English LongBench v1 tasks copy the official harness (THUDM/LongBench, folder
`LongBench/`): `config/dataset2prompt.json` for the templates, byte for byte, typos included
(tests/data/longbench-parity/dataset2prompt.en.json holds the official strings and a test
compares them), `config/dataset2maxlen.json` for `max_new_tokens`, the list in `pred.py` of
tasks that skip the chat template, the list in `eval.py` of tasks scored on the first line
of the prediction, and `eval.py`'s `dataset2metric`.

LongBench-E (`<task>_e`, the 13 English tasks of `pred.py --e`) reuses those specs: same
prompts, budgets and metrics, data from the `<task>_e` files; `workers.metrics.length_bucket`
sorts its samples into the 0-4k / 4-8k / 8k+ buckets of `eval.py --e`.

`longbench_v2` is LongBench v2 (repository root: `pred.py`, `prompts/0shot.txt`,
`result.py`): four-way multiple choice, the 0-shot prompt, 128 new tokens, accuracy.

The three `*_synth` tasks are generated offline by `workers.synthetic`; their templates
mirror the official task they imitate. Bump a task's `version` whenever its template,
generator or metric changes, so stored results never mix two definitions under one name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

MetricName = Literal[
    "qa_f1", "rouge", "classification", "retrieval", "count", "code_sim", "code_sim_levenshtein", "choice",
    "ruler_string_match_all",
]
# How `workers.prompts.build_prompt` fills the template: `str.format(context=..., input=...)`
# (v1, synthetic, RULER), or LongBench v2's chain of `str.replace` over $DOC$, $Q$, $C_A$..$C_D$.
TemplateStyle = Literal["format", "v2_replace"]
CodeSimVariant = Literal["difflib", "levenshtein"]

# v1.1: scored as the official scorer does (the `rouge` package, the official TREC loop,
# fuzzywuzzy's difflib ratio) and the narrativeqa template byte-identical to the official one;
# "longbench-v1" rows were scored with rouge-score and rapidfuzz and are not comparable.
LONGBENCH_VERSION = "longbench-v1.1"
LONGBENCH_E_VERSION = "longbench-e-v1"
LONGBENCH_V2_VERSION = "longbench-v2-v1"
SYNTHETIC_VERSION = "synthetic-v1"


@dataclass(frozen=True)
class TaskSpec:
    """One task. `prompt_template` is filled as `template_style` says (see TemplateStyle)."""

    name: str
    prompt_template: str
    max_new_tokens: int
    metric: MetricName
    # pred.py wraps the prompt in the model's chat format except for the few-shot and code
    # tasks, whose prompts already end in the pattern the model must continue.
    use_chat_template: bool
    # eval.py scores only the first line for the few-shot tasks, whose models tend to go on
    # with the next in-context example.
    first_line_only: bool
    version: str
    template_style: TemplateStyle = "format"
    # The task whose rows (file `<data_task>.jsonl`, hub split) this one reads; None: its own.
    data_task: str | None = None

    @property
    def rows_of(self) -> str:
        return self.data_task or self.name


# Shared by hotpotqa, 2wikimqa and musique in the official config.
_MULTIDOC_QA = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nThe following are given passages.\n{context}\n\n"
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nQuestion: {input}\nAnswer:"
)

_QASPER = (
    "You are given a scientific article and a question. Answer the question as concisely as you can, "
    "using a single phrase or sentence if possible. If the question cannot be answered based on the "
    'information in the article, write "unanswerable". If the question is a yes/no question, answer '
    '"yes", "no", or "unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n '
    "Answer the question based on the above article as concisely as you can, using a single phrase or "
    "sentence if possible. If the question cannot be answered based on the information in the article, "
    'write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". '
    "Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"
)

# "asconcisely" (twice) is the official text's typo, kept: the published scores used it.
_NARRATIVEQA = (
    "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question asconcisely as you can, using a single phrase if possible. Do not provide any explanation."
    "\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a "
    "single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"
)

_PASSAGE_COUNT = (
    "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please "
    "carefully read these paragraphs and determine how many unique paragraphs there are after removing "
    "duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\n"
    "Please enter the final count of unique paragraphs after removing duplicates. The output format "
    "should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: "
)

_PASSAGE_RETRIEVAL_TAIL = (
    "\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph "
    'that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\n'
    "The answer is: "
)


def _longbench(
    name: str, template: str, max_new_tokens: int, metric: MetricName, *, chat: bool = True, first_line: bool = False
) -> TaskSpec:
    return TaskSpec(name, template, max_new_tokens, metric, chat, first_line, LONGBENCH_VERSION)


def _synthetic(name: str, template: str, max_new_tokens: int, metric: MetricName) -> TaskSpec:
    return TaskSpec(name, template, max_new_tokens, metric, True, False, SYNTHETIC_VERSION)


_LONGBENCH_SPECS: tuple[TaskSpec, ...] = (
    _longbench("narrativeqa", _NARRATIVEQA, 128, "qa_f1"),
    _longbench("qasper", _QASPER, 128, "qa_f1"),
    _longbench(
        "multifieldqa_en",
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based "
        "on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64,
        "qa_f1",
    ),
    _longbench("hotpotqa", _MULTIDOC_QA, 32, "qa_f1"),
    _longbench("2wikimqa", _MULTIDOC_QA, 32, "qa_f1"),
    _longbench("musique", _MULTIDOC_QA, 32, "qa_f1"),
    _longbench(
        "gov_report",
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        512,
        "rouge",
    ),
    _longbench(
        "qmsum",
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query "
        "in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        512,
        "rouge",
    ),
    _longbench(
        "multi_news",
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
        "Now, write a one-page summary of all the news.\n\nSummary:",
        512,
        "rouge",
    ),
    _longbench(
        "trec",
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        64,
        "classification",
        chat=False,
        first_line=True,
    ),
    _longbench(
        "triviaqa",
        "Answer the question based on the given passage. Only give me the answer and do not output any other "
        "words. The following are some examples.\n\n{context}\n\n{input}",
        32,
        "qa_f1",
        chat=False,
        first_line=True,
    ),
    _longbench(
        "samsum",
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        128,
        "rouge",
        chat=False,
        first_line=True,
    ),
    _longbench("passage_count", _PASSAGE_COUNT, 32, "count"),
    _longbench(
        "passage_retrieval_en",
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from." + _PASSAGE_RETRIEVAL_TAIL,
        32,
        "retrieval",
    ),
    _longbench(
        "lcc", "Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim", chat=False
    ),
    _longbench(
        "repobench-p",
        "Please complete the code given below. \n{context}{input}Next line of code:\n",
        64,
        "code_sim",
        chat=False,
    ),
)

_SYNTHETIC_SPECS: tuple[TaskSpec, ...] = (
    # passage_retrieval_en's prompt, minus its fixed "30": the paragraph count is a parameter.
    _synthetic(
        "passage_retrieval_synth",
        "Here are some paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from." + _PASSAGE_RETRIEVAL_TAIL,
        32,
        "retrieval",
    ),
    # passage_count's prompt unchanged: it names no paragraph count.
    _synthetic("passage_count_synth", _PASSAGE_COUNT, 32, "count"),
    # A needle in WikiText filler. qa_f1 turns the code into one token (hyphens are punctuation),
    # so the score is 1 only for the bare code and 0 for any other code: exact retrieval that
    # still docks a verbose answer, as the LongBench QA tasks do. 64 tokens leave room for
    # tokenizers that split hex digits one by one.
    _synthetic(
        "kv_retrieval_synth",
        "There is a secret code hidden in the text below. Read the text and remember the code.\n\n{context}\n\n"
        "Now, answer the question based on the text above. Only give me the code and do not output any other "
        "words.\n\nQuestion: {input}\nAnswer:",
        64,
        "qa_f1",
    ),
)

# pred.py --e: the English tasks LongBench-E covers (multifieldqa_zh aside, it is Chinese).
_LONGBENCH_E_BASES = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
    "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)  # fmt: skip
_V1_BY_NAME = {spec.name: spec for spec in _LONGBENCH_SPECS}
_LONGBENCH_E_SPECS: tuple[TaskSpec, ...] = tuple(
    replace(_V1_BY_NAME[base], name=f"{base}_e", version=LONGBENCH_E_VERSION) for base in _LONGBENCH_E_BASES
)

# prompts/0shot.txt of the repository root, byte for byte (no final newline). pred.py strips
# each field and substitutes them in this order with str.replace.
_V2_ZERO_SHOT = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
_LONGBENCH_V2_SPECS: tuple[TaskSpec, ...] = (
    # pred.py sends the prompt as one chat message and asks for 128 tokens without CoT.
    TaskSpec("longbench_v2", _V2_ZERO_SHOT, 128, "choice", True, False, LONGBENCH_V2_VERSION, "v2_replace"),
)

LONGBENCH_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _LONGBENCH_SPECS)
LONGBENCH_E_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _LONGBENCH_E_SPECS)
LONGBENCH_V2_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _LONGBENCH_V2_SPECS)
SYNTHETIC_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SYNTHETIC_SPECS)
# Every task whose samples `workers.data.load_longbench` reads from a file or the hub.
LONGBENCH_FORMAT_TASK_NAMES: tuple[str, ...] = LONGBENCH_TASK_NAMES + LONGBENCH_E_TASK_NAMES + LONGBENCH_V2_TASK_NAMES
LONGBENCH_TASKS: dict[str, TaskSpec] = {
    spec.name: spec for spec in _LONGBENCH_SPECS + _SYNTHETIC_SPECS + _LONGBENCH_E_SPECS + _LONGBENCH_V2_SPECS
}


def get_task(name: str) -> TaskSpec:
    """The registered task called `name`; ValueError naming the allowed names otherwise."""
    try:
        return LONGBENCH_TASKS[name]
    except KeyError:
        allowed = ", ".join(LONGBENCH_TASKS)
        raise ValueError(f"unknown task {name!r}; allowed: {allowed}") from None


def with_code_sim(spec: TaskSpec, variant: CodeSimVariant) -> TaskSpec:
    """The task scored with fuzzywuzzy's difflib ratio (the default) or its Levenshtein one.

    The Levenshtein variant gets its own `version`, so its rows never mix with the default's.
    """
    if spec.metric not in ("code_sim", "code_sim_levenshtein"):
        raise ValueError(f"task {spec.name!r} uses metric {spec.metric!r}; only code_sim tasks have a variant")
    base = spec.version.removesuffix("+levenshtein")
    if variant == "difflib":
        return replace(spec, metric="code_sim", version=base)
    if variant == "levenshtein":
        return replace(spec, metric="code_sim_levenshtein", version=f"{base}+levenshtein")
    raise ValueError(f"code_sim variant must be one of difflib, levenshtein; got {variant!r}")


# The switch to the other code-similarity variant, as tasks of their own (`lcc_levenshtein`,
# ...): they read the same rows, and their results never share a key or a version with the
# default's.
_CODE_SIM_VARIANT_SPECS: tuple[TaskSpec, ...] = tuple(
    replace(with_code_sim(spec, "levenshtein"), name=f"{spec.name}_levenshtein", data_task=spec.name)
    for spec in _LONGBENCH_SPECS + _LONGBENCH_E_SPECS if spec.metric == "code_sim"
)
CODE_SIM_VARIANT_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _CODE_SIM_VARIANT_SPECS)
LONGBENCH_FORMAT_TASK_NAMES += CODE_SIM_VARIANT_TASK_NAMES
LONGBENCH_TASKS.update({spec.name: spec for spec in _CODE_SIM_VARIANT_SPECS})


# --- RULER (NVIDIA/RULER), generated offline by workers.ruler -------------------------------------
# The templates and answer prefixes live with the generator, which fills them per sample (the
# value type, the query, the number of variables); a sample's `context` is the filled template
# and its `input` the answer prefix. Prompts are RULER's `base` model template (plain text, the
# answer prefix last), so no chat template. max_new_tokens are RULER's tokens_to_generate.
RULER_VERSION = "ruler-v1"


def _ruler(name: str, max_new_tokens: int) -> TaskSpec:
    return TaskSpec(name, "{context}{input}", max_new_tokens, "ruler_string_match_all", False, False, RULER_VERSION)


_RULER_SPECS: tuple[TaskSpec, ...] = (
    *(_ruler(f"ruler_niah_{variant}", 128) for variant in (
        "single_1", "single_2", "single_3", "multikey_1", "multikey_2", "multikey_3", "multivalue", "multiquery")),
    _ruler("ruler_vt", 30),
    _ruler("ruler_cwe", 120),
    _ruler("ruler_fwe", 50),
)
RULER_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _RULER_SPECS)
LONGBENCH_TASKS.update({spec.name: spec for spec in _RULER_SPECS})
