"""RULER tasks (workers.ruler): determinism, token budgets, solvability, depths, scoring, units."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from workers.metrics import aggregate, ruler_string_match_all, score_sample
from workers.ruler import (
    DEPTH_TASKS,
    DEPTHS,
    NIAH_VARIANTS,
    NOISE,
    RulerConfig,
    cell_name,
    generate,
    min_context_length,
    parse_cell,
    ruler_problems,
    sources_from_articles,
    word_pool,
    zeta,
)
from workers.synthetic import load_wikitext
from workers.tasks import RULER_TASK_NAMES, get_task

try:
    from test_runner import tiny_loaded  # noqa: F401  (the session fixture: tiny random Llama)
except ImportError:  # run from another rootdir layout
    from tests.workers.test_runner import tiny_loaded  # noqa: F401

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "ruler_string_match.json"
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word (fast and exact)."""
    return len(text.split())


@pytest.fixture(scope="module")
def sources():
    return sources_from_articles(load_wikitext())


def _one(sources, task, length=1500, depth=None, index=0, count=words, seed=0):
    return generate(RulerConfig(task, length, seed, depth), [index], sources, count)[0]


def test_rulers_numbers():
    assert DEPTHS == tuple(int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)))  # niah.py
    assert zeta(2.0) == pytest.approx(1.6449340668, rel=1e-9)
    assert zeta(3.0) == pytest.approx(1.2020569032, rel=1e-9)
    with pytest.raises(ValueError, match="alpha > 1"):
        zeta(1.0)
    assert word_pool("alpha alpha alpha bet bet bet Gamma Gamma Gamma cat cat cat", 3) == ("alpha",)


@pytest.mark.parametrize("task", RULER_TASK_NAMES)
def test_fits_the_budget_and_is_deterministic(sources, task):
    budget = 1500 - get_task(task).max_new_tokens
    a, b = generate(RulerConfig(task, 1500), [0, 7], sources, words)
    assert words(a.context + a.input) <= budget
    # The haystack fills the budget, up to one sizing step (5 noise lines, 500 essay words...).
    assert words(a.context + a.input) > budget * 0.6
    assert a.id != b.id and a.context != b.context
    again = generate(RulerConfig(task, 1500), [7], sources, words)[0]
    assert again == b  # sample i does not depend on which others are generated
    assert generate(RulerConfig(task, 1500, seed=1), [7], sources, words)[0].context != b.context
    assert get_task(task).prompt_template.format(context=a.context, input=a.input) == a.context + a.input
    assert a.answers[0] and all(a.answers[0].split("\n"))


@pytest.mark.parametrize("task", [t for t in NIAH_VARIANTS])
def test_niah_answers_are_the_queried_needles(sources, task):
    args = NIAH_VARIANTS[task]
    sample = _one(sources, task)
    needles = NEEDLE.findall(sample.context)
    question = sample.context.rsplit("\n", 1)[1]
    queried = [key for _, key, _ in needles if f" {key} " in question or f" {key}," in question]
    expected = [value for _, key, value in needles if key in queried]
    assert sorted(sample.answers[0].split("\n")) == sorted(expected)
    assert len(expected) == args.num_v * args.num_q
    if args.haystack == "needle":
        assert len(needles) > 20  # the haystack is made of distractor needles
    if args.num_v * args.num_q == 1:  # niah.py's singular wording
        assert sample.context.startswith("A special magic ") and " is hidden within" in sample.context
        assert sample.input.endswith("mentioned in the provided text is")
    else:
        assert sample.context.startswith("Some special magic ") and sample.input.endswith("text are")


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_noise_needle_depth(sources, depth):
    sample = _one(sources, "ruler_niah_single_1", depth=depth)
    lines = sample.context.split("\n")[1:-1]  # between the instruction and the question
    where = [i for i, line in enumerate(lines) if NEEDLE.fullmatch(line)]
    assert len(where) == 1 and all(line == NOISE for i, line in enumerate(lines) if i != where[0])
    assert where[0] == round((len(lines) - 1) * depth / 100)


@pytest.mark.parametrize("depth", [0, 25, 75, 100])
def test_essay_needle_depth(sources, depth):
    sample = _one(sources, "ruler_niah_single_2", length=3000, depth=depth)
    body = sample.context.split("\n")[1]
    at = NEEDLE.search(body).start()
    assert abs(at / len(body) - depth / 100) < 0.02


def test_variable_tracking_chain(sources):
    sample = _one(sources, "ruler_vt")
    example, task = sample.context.split("\nMemorize and track", 1)
    assert example.startswith("Memorize and track") and "they are: " in example  # the worked example
    assigned = dict(re.findall(r"^VAR (\w+) = (.+?) ?$", task, flags=re.M))
    value = re.search(r"assigned the value (\d+) in the text above", task).group(1)
    names = sample.answers[0].split("\n")

    def resolve(name):
        target = assigned[name]
        return target if target.isdigit() else resolve(target.removeprefix("VAR "))

    assert len(names) == 5 and {n for n in assigned if resolve(n) == value} == set(names)
    assert f"5 variables are assigned the value {value}" in sample.input


@pytest.mark.parametrize("length", [1500, 5000])
def test_common_words_are_the_most_common(sources, length):
    sample = _one(sources, "ruler_cwe", length=length)
    listed = sample.context.rsplit("\nBelow is a numbered list", 1)[1]
    counts = Counter(re.findall(r"\d+\. (\w+)", listed.split("\nQuestion:")[0]))
    common = sample.answers[0].split("\n")
    top = 6 if length < 4096 else 30  # common_words_extraction.py's repeats
    assert len(common) == 10 and all(counts[w] == top for w in common)
    assert max(n for w, n in counts.items() if w not in common) == (1 if length < 4096 else 3)


def test_frequent_words_are_the_most_frequent(sources):
    sample = _one(sources, "ruler_fwe")
    text = sample.context.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    ranked = [w for w, _ in Counter(text.split()).most_common()]
    assert ranked[0] == "..." and ranked[1:4] == sample.answers[0].split("\n")


def test_cell_names_and_problems():
    assert cell_name("ruler_vt", 4096) == "ruler_vt@ctx4096"
    assert parse_cell(cell_name("ruler_niah_single_2", 2048, 0)) == ("ruler_niah_single_2", 2048, 0)
    assert parse_cell("ruler_vt@ctx4096") == ("ruler_vt", 4096, None)
    assert parse_cell("kv_retrieval_synth") is None and parse_cell("nope@ctx10") is None
    assert set(DEPTH_TASKS) == {"ruler_niah_single_1", "ruler_niah_single_2", "ruler_niah_single_3",
                                "ruler_niah_multikey_2", "ruler_niah_multikey_3"}
    assert ruler_problems("ruler_vt", 2048, None) == []
    assert "not ruler_niah_multivalue" in ruler_problems("ruler_niah_multivalue", 2048, 50)[0]
    assert "0..100" in ruler_problems("ruler_niah_single_1", 2048, -1)[0]
    assert f">= {min_context_length('ruler_vt')}" in ruler_problems("ruler_vt", 300, None)[0]
    with pytest.raises(ValueError, match="not a RULER task"):
        RulerConfig("passage_count_synth", 2048)


def test_string_match_all_matches_rulers_own():
    doc = json.loads(FIXTURE.read_text())
    for case in doc["cases"]:
        score = ruler_string_match_all(case["prediction"], "\n".join(case["references"]))
        assert round(100 * score, 2) == case["string_match_all"], case
    spec = get_task("ruler_niah_multivalue")
    assert score_sample(spec, "1 and 3", ("1\n2\n3\n4",)) == 0.5
    assert aggregate([score_sample(spec, "A b", ("a\nB",)), 0.0]) == 50.0
    with pytest.raises(ValueError, match="at least one reference"):
        ruler_string_match_all("x", "")


# --- units -------------------------------------------------------------------------------------------
def _unit(task="ruler_niah_single_1", **kw):
    from streamkv.methods import preset
    from workers.units import WorkUnit

    return WorkUnit(model="tiny-random-llama", config=preset("none"), task=task, **kw)


def test_unit_keys_shards_and_real_tokenizer():
    from workers.prompts import prepare_input
    from workers.units import dataset_sha256, longbench_samples, model_tokenizer

    unit = _unit(context_length=600, depth=25, limit=2)
    assert unit.kind == "ruler" and unit.key.task == "ruler_niah_single_1@ctx600@depth25"
    tokenizer = model_tokenizer(unit.model)
    spec = get_task(unit.task)
    samples = longbench_samples(unit)
    assert len(samples) == 2
    for sample in samples:
        ids = prepare_input(spec, sample, tokenizer, unit.max_length)
        assert 600 - 5 * 25 < len(ids) + spec.max_new_tokens <= 600  # within one step of 5 noise lines
    halves = [{s.id for s in longbench_samples(unit.replace(shard=f"{i}/2", limit=None))} for i in range(2)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 100
    sha, what = dataset_sha256(unit)
    assert sha == dataset_sha256(unit)[0] and "generated samples" in what
    assert dataset_sha256(unit.replace(depth=75))[0] != sha


def test_unit_validation():
    with pytest.raises(ValueError) as err:
        _unit(task="ruler_vt", context_length=100, depth=5)
    assert "context_length=100" in str(err.value) and "depth is only for" in str(err.value)
    with pytest.raises(ValueError, match="max_length=512 would cut the middle"):
        _unit(context_length=2048, max_length=512)
    with pytest.raises(ValueError, match="only for RULER NIAH tasks"):
        _unit(task="kv_retrieval_synth", context_length=100, depth=5)


@pytest.mark.parametrize("task", ["ruler_niah_single_1", "ruler_fwe"])
def test_ruler_unit_runs(tiny_loaded, task):
    from workers.runner import run_unit

    depth = 50 if task in DEPTH_TASKS else None
    unit = _unit(task=task, context_length=400, depth=depth, limit=1)
    result = run_unit(tiny_loaded, unit)
    assert result.key == unit.key and result.n_samples == 1
    assert 0.0 <= result.metrics["score"] <= 100.0
    assert result.samples[0].prompt_tokens + get_task(task).max_new_tokens <= 400
    assert result.environment["dataset_sha256"] and "generated samples" in result.environment["dataset_hash_of"]


# --- sweep specs ---------------------------------------------------------------------------------
def test_spec_expands_cells_and_reports_every_problem():
    from cluster.plan import plan
    from cluster.spec import SpecError, parse_spec

    spec = parse_spec({"presets": ["none", "streamkv-2"], "generation": {"max_length": 2048},
                       "datasets": [{"tasks": ["ruler_vt", "ruler_cwe"], "context_lengths": [1024, 2048]},
                                    {"task": "ruler_niah_single_2", "context_length": 1024, "depths": [0, 100],
                                     "limit": 2}]})
    keys = [u.key.task for u in plan(spec)]
    assert keys[::2] == ["ruler_vt@ctx1024", "ruler_vt@ctx2048", "ruler_cwe@ctx1024", "ruler_cwe@ctx2048",
                         "ruler_niah_single_2@ctx1024@depth0", "ruler_niah_single_2@ctx1024@depth100"]
    assert [u.depth for u in plan(spec)][-2:] == [100, 100] and plan(spec)[-1].limit == 2
    with pytest.raises(SpecError) as err:
        parse_spec({"presets": ["none"],
                    "datasets": [{"task": "ruler_vt", "context_lengths": [100, 2048], "depths": [10]},
                                 {"task": "ruler_niah_single_1", "context_lengths": [4096]},
                                 {"task": "ruler_niah_single_1", "context_length": 4096, "depths": [101]},
                                 {"task": "kv_retrieval_synth", "depths": [5]}]})
    problems = err.value.problems
    assert any(p.startswith("datasets[0].context_lengths[0]: context_length=100") for p in problems)
    assert any(p.startswith("datasets[0].depths[0]: depth is only for single-needle") for p in problems)
    assert any(p.startswith("generation.max_length: 3500 is below the 3968-token prompts of "
                            "ruler_niah_single_1@ctx4096") for p in problems)
    assert any(p.startswith("datasets[2].depths[0]: depth=101 is out of range") for p in problems)
    assert any(p.startswith("datasets[3]: context_lengths: / depths: are for RULER tasks") for p in problems)
    with pytest.raises(SpecError, match="already appears"):
        parse_spec({"presets": ["none"], "datasets": [{"task": "ruler_vt", "context_lengths": [1024, 1024]}]})


def test_specs_without_ruler_cells_keep_their_sweep_ids():
    from cluster.spec import parse_spec

    spec = parse_spec({"presets": ["none"], "datasets": [{"task": "wikitext2_ppl", "context_length": 1024}]})
    assert "depth" not in spec.content()["datasets"][0]  # the content hash is the one before RULER
    ruler = parse_spec({"presets": ["none"], "datasets": [{"task": "ruler_niah_single_1", "depths": [50]}]})
    assert ruler.content()["datasets"][0]["depth"] == 50
