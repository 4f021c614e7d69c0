"""workers.lm_eval_bridge: lm-eval tasks from local files, run offline on a tiny random Llama
through a compressed cache, and stored like any unit."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch

from cluster.spec import SpecError, parse_spec
from streamkv.loading import LoadedModel
from streamkv.methods import preset
from streamkv.modeling import CompressedLlamaForCausalLM
from tests.conftest import tiny_llama_config
from tests.workers.test_runner import smollm2_tokenizer
from workers.lm_eval_bridge import StreamKVLM, metric_values, run_lm_eval, shard_doc_ids
from workers.runner import run_unit
from workers.units import WorkUnit

REPO = Path(__file__).resolve().parents[2]
FACTS = "lm_eval:streamkv_facts_mc"
COPY = "lm_eval:streamkv_copy_gen"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub: datasets and huggingface_hub in offline mode, and any TCP connection refused."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test is offline: connection to {address} refused")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


@pytest.fixture(scope="module")
def tiny_loaded() -> LoadedModel:
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    model = CompressedLlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)), preset("none")).eval()
    return LoadedModel(model, tokenizer, "tiny-llama-test", "0" * 64, 0.0)


def unit(task: str, config=None, **kw) -> WorkUnit:
    return WorkUnit(model="tiny-llama", config=config or preset("streamkv-4", chunk_size=8), task=task,
                    **{"shard": "0/1", "limit": 4, "sweep_id": "lm", **kw})


def _direct_loglikelihood(model, tokenizer, method, context: str, continuation: str) -> float:
    """Sum of log p(continuation | context) from one forward of our model with `method`."""
    ctx = tokenizer(context).input_ids
    cont = tokenizer(context + continuation).input_ids[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = model(ids, past_key_values=model.new_cache(method), compression_config=method).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(logprobs[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont)))


def test_loglikelihood_goes_through_the_method_and_leaves_the_model_alone(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    before = model.compression_config
    requests = [("The capital of France is", " Paris"), ("One, two, three, four,", " five")]
    values = {}
    for name in ("none", "streamkv-3"):
        method = preset(name) if name == "none" else preset(name, chunk_size=4)
        lm = StreamKVLM(model, method, tokenizer)
        from lm_eval.api.instance import Instance

        got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)],
                               disable_tqdm=True)
        values[name] = [ll for ll, _ in got]
        for (ctx, cont), ll in zip(requests, values[name]):
            assert ll == pytest.approx(_direct_loglikelihood(model, tokenizer, method, ctx, cont), abs=1e-4)
        assert len(lm.cache_stats) == len(requests)  # one fresh cache per request
    assert model.compression_config is before
    # 3-bit keys/values change the scores: the method really is in the path.
    assert any(abs(a - b) > 1e-4 for a, b in zip(values["none"], values["streamkv-3"]))


def test_batches_are_refused(tiny_loaded):
    with pytest.raises(ValueError, match="batch_size=4 is out of range"):
        StreamKVLM(tiny_loaded.model, preset("none"), tiny_loaded.tokenizer, batch_size=4)


def test_registered_model_by_name():
    """The README's call: lm-eval builds the model from its name and a preset."""
    import lm_eval

    from workers.lm_eval_bridge import task_manager

    out = lm_eval.simple_evaluate(model="streamkv", tasks=["streamkv_facts_mc"], limit=2,
                                  model_args={"pretrained": "tiny-random-llama", "preset": "streamkv-3"},
                                  task_manager=task_manager("streamkv_facts_mc"))
    assert 0.0 <= out["results"]["streamkv_facts_mc"]["acc,none"] <= 1.0
    assert out["config"]["model"] == "streamkv"


def test_shards_and_metric_names():
    assert shard_doc_ids(7, 1, 3, None) == [1, 4]
    assert shard_doc_ids(16, 0, 2, 3) == [0, 2, 4]
    assert metric_values({"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A",
                          "exact_match,strip": 1.0, "sample_len": 3}) == {"acc": 0.5, "exact_match/strip": 1.0}


@pytest.mark.parametrize("task, metric", [(FACTS, "acc"), (COPY, "exact_match")])
def test_unit_runs_offline_and_its_metrics_are_stored(tiny_loaded, tmp_path, task, metric):
    from store import BlobStore, create_store_engine, register_sweep, write_unit_result
    from store.queries import baseline_deltas, load_unit_result, metric_frame, samples_frame

    u = unit(task, shard="1/2", limit=3)
    result = run_unit(tiny_loaded, u)
    assert result.key == u.key and result.n_samples == 3
    assert [s.sample_id for s in result.samples] == ["doc-1", "doc-3", "doc-5"]
    scores = [s.score for s in result.samples]
    assert all(s in (0.0, 1.0) for s in scores)
    assert result.metrics["score"] == pytest.approx(100 * sum(scores) / 3)
    lm_metric = metric if metric in result.metrics else f"{metric}/strip"
    assert result.metrics[lm_metric] == pytest.approx(sum(scores) / 3)  # lm-eval's own aggregate
    low, high = result.metrics["score_ci_low"], result.metrics["score_ci_high"]
    assert 100 * min(scores) <= low <= result.metrics["score"] <= high <= 100 * max(scores)
    assert result.environment["score_metric"] == metric
    assert result.environment["lm_eval_docs_total"] == 16 and len(result.environment["dataset_sha256"]) == 64
    assert result.kv_bytes > 0 and result.compression_ratio > 1  # the method's cache, measured
    assert all(s.prompt_tokens > 0 for s in result.samples)

    engine = create_store_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    blobs = BlobStore(tmp_path / "blobs")
    register_sweep(engine, "lm", "lm-eval test", {}, [u.key], [result.config])
    write_unit_result(engine, blobs, result)
    stored = load_unit_result(engine, blobs, u.key)
    assert stored.metrics == pytest.approx(result.metrics)
    assert len(samples_frame(engine, u.key)) == 3
    frame = metric_frame(engine, "lm")
    assert set(frame["metric"]) >= {lm_metric, "score", "score_ci_low", "score_ci_high"}
    row = baseline_deltas(engine, sweep_id="lm").iloc[0]
    assert (row["task"], row["n_samples"]) == (task, 3)
    assert (row["score_ci_low"], row["score_ci_high"]) == pytest.approx((low, high))


def test_task_from_an_include_folder_reads_files_beside_its_yaml(tiny_loaded, tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "rows.jsonl").write_text("".join(
        f'{{"q": "Is {n} even?", "choices": ["yes", "no"], "answer": {n % 2}}}\n' for n in range(6)))
    (folder / "parity.yaml").write_text(
        "task: parity_local\ndataset_path: json\ndataset_kwargs:\n  data_files: {test: rows.jsonl}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    monkeypatch.chdir(REPO / "tests")  # not the folder of the YAML: lm-eval alone would not find rows.jsonl
    run = run_lm_eval(StreamKVLM(tiny_loaded.model, preset("none"), tiny_loaded.tokenizer), "parity_local",
                      include_path=folder, shard=(0, 1), limit=None, seed=0)
    assert run.n_docs_total == 6 and [d.doc_id for d in run.docs] == list(range(6))
    assert [d.target for d in run.docs] == [str(n % 2) for n in range(6)]
    assert run.metrics["acc"] == pytest.approx(sum(d.metrics["acc"] for d in run.docs) / 6)
    assert not math.isnan(run.metrics["acc_stderr"])


def test_sweep_spec_lm_eval_datasets():
    spec = parse_spec({"presets": ["none", "kivi-4"], "limit": 2, "datasets": [
        {"lm_eval": {"tasks": ["streamkv_facts_mc", "streamkv_copy_gen"]}, "shards": 2},
        {"task": "kv_retrieval_synth", "context_length": 100}]})
    assert [(d.task, d.shards) for d in spec.datasets] == [(FACTS, 2), (COPY, 2), ("kv_retrieval_synth", None)]
    with pytest.raises(SpecError) as err:
        parse_spec({"presets": ["none"], "datasets": [
            {"lm_eval": {"tasks": ["longbench", "streamkv_facts_mc", "streamkv_facts_mc"]}, "max_length": 9}]})
    assert err.value.problems == [
        "datasets[0].max_length: unused by lm-eval tasks (their YAML sets data, prompts and lengths; a folder "
        "of extra task YAMLs is lm_eval.include_path)",
        "datasets[0].lm_eval.tasks[0]: 'longbench' is an lm-eval group: list its tasks one by one (each is "
        "one unit of work with its own score)",
        "datasets[0].lm_eval.tasks[2]: lm-eval task 'streamkv_facts_mc' already appears in "
        "datasets[0].lm_eval.tasks[1]"]
