"""A small results store for the dashboard tests, written through `store.repository` only.

Sweep "sw-demo" ("KV ablation demo"): 5 done configs (none baseline, streamkv-4, streamkv-2,
streamkv-4 without sink protection, streamkv-4 without outlier detection) x 2 tasks x 2 shards,
with metrics, trace blobs (outlier_channels + layer_summary), plus a kivi-2 config whose units
failed (error text), one running and one pending. Sweep "sw-empty": registered, nothing run.
Sweep "sw-toy": a method no built-in knows ("toy", field `toy_scale`) next to the baseline.
Configs are plain dicts (`config_dict`): the dashboard reads whatever fields they have.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from store import (
    BlobStore,
    SampleRow,
    UnitKey,
    UnitResult,
    create_store_engine,
    mark_failed,
    mark_running,
    register_sweep,
    write_unit_result,
)
from tests.store.conftest import cid, config_dict

SWEEP_ID = "sw-demo"
SWEEP_NAME = "KV ablation demo"
MODEL = "smollm2-135m"
TASKS = ("qa", "summary")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
FAIL_TEXT = "RuntimeError: CUDA out of memory while quantizing layer 7"



def streamkv(bits: int = 4, **fields: Any) -> dict[str, Any]:
    """A streamkv-shaped config dict (the fields the dashboard tests vary)."""
    return config_dict("streamkv", **{
        "key_bits_normal": bits, "value_bits_normal": bits,
        "value_quant_groups": 1 if bits >= 4 else 4, "sink_protection": True,
        "outlier_detection": True, **fields})


CONFIGS = {
    "none": config_dict("none"),
    "skv4": streamkv(4),
    "skv2": streamkv(2),
    "skv4_nosink": streamkv(4, sink_protection=False),
    "skv4_noout": streamkv(4, outlier_detection=False),
}
FAILING = config_dict("kivi", key_bits_normal=2, value_bits_normal=2, group_size=32,
                      residual_length=128)
# name -> (qa score, summary score, avg bits (key = value), compression ratio)
SCORES: dict[str, tuple[float, float, float, float]] = {
    "none": (0.80, 0.60, 16.0, 1.0),
    "skv4": (0.78, 0.58, 4.25, 3.7),
    "skv2": (0.70, 0.40, 2.25, 6.5),
    "skv4_nosink": (0.60, 0.50, 4.0, 3.9),
    "skv4_noout": (0.74, 0.59, 4.5, 3.5),
}
TOY_SWEEP_ID = "sw-toy"
# A method registered at run time by a third party: the store and dashboard know none of it.
TOY_CONFIGS = {f"toy{scale}": config_dict("toy", chunk_size=None, toy_scale=scale)
               for scale in (0.5, 1.0, 2.0)}
TOY_CI_HALF = 0.06
TOY_SCORES = {"none": (0.80, 0.60, 16.0, 1.0), "toy0.5": (0.30, 0.20, 3.0, 5.0),
              "toy1.0": (0.50, 0.40, 4.0, 4.0), "toy2.0": (0.70, 0.60, 6.0, 2.5)}


def trace_tables(seed: int, n_layers: int = 3, n_heads: int = 2) -> dict[str, pa.Table]:
    """Worker-shaped trace tables: outlier channels of 2 samples, and the per-layer summary."""
    out: dict[str, list[Any]] = {k: [] for k in ("sample_id", "layer", "kind", "head", "channel",
                                                 "statistic", "head_median", "head_max")}
    summ: dict[str, list[Any]] = {k: [] for k in ("sample_id", "layer", "kind", "heads",
                                                  "outlier_channels", "max_head_outliers",
                                                  "head_median_mean", "head_max", "sink_tokens",
                                                  "tokens")}
    for sample in ("s000", "s001"):
        for layer in range(n_layers):
            for kind in ("key", "value"):
                counts = []
                for head in range(n_heads):
                    n = (layer + head + seed) % 3 + (1 if kind == "key" else 0)
                    counts.append(n)
                    for c in range(n):
                        for name, v in (("sample_id", sample), ("layer", layer), ("kind", kind),
                                        ("head", head), ("channel", 5 * c + head),
                                        ("statistic", 10.0 + c), ("head_median", 1.0),
                                        ("head_max", 12.0)):
                            out[name].append(v)
                for name, v in (("sample_id", sample), ("layer", layer), ("kind", kind),
                                ("heads", n_heads), ("outlier_channels", sum(counts)),
                                ("max_head_outliers", max(counts)), ("head_median_mean", 1.0),
                                ("head_max", 12.0), ("sink_tokens", 4), ("tokens", 128)):
                    summ[name].append(v)
    i32 = ("layer", "head", "channel", "heads", "outlier_channels", "max_head_outliers",
           "sink_tokens", "tokens")
    def table(d: dict[str, list[Any]]) -> pa.Table:
        return pa.table({k: pa.array(v, pa.int32() if k in i32 else None) for k, v in d.items()})
    return {"outlier_channels": table(out), "layer_summary": table(summ)}


def unit_result(key: UnitKey, name: str, minute: int) -> UnitResult:
    cfg = {**CONFIGS, **TOY_CONFIGS}[name]
    qa, summary, bits, ratio = {**SCORES, **TOY_SCORES}[name]
    score = qa if key.task == "qa" else summary
    samples = [SampleRow(f"s{i:03d}", f"pred {i}", [f"a{i}"], float(i % 2), 100 + i)
               for i in range(4)]
    return UnitResult(
        key=key, config=cfg, method=cfg["method"],
        metrics={"score": score, "perplexity": 10.0 + (16 - bits) / 4, "kl": (16 - bits) / 100,
                 "top1_agreement": 1.0 - (16 - bits) / 100,
                 # Hand-set intervals (+- TOY_CI_HALF): none and toy2.0 overlap, toy0.5 stands apart.
                 **({"score_ci_low": score - TOY_CI_HALF, "score_ci_high": score + TOY_CI_HALF}
                    if name in TOY_SCORES and key.sweep_id == TOY_SWEEP_ID else {})},
        n_samples=4, avg_key_bits=bits, avg_value_bits=bits, kv_bytes=int(1e6 / ratio),
        fp16_kv_bytes=1_000_000, compression_ratio=ratio, outlier_ratio=0.02,
        prefill_tokens_per_s=1000.0, decode_tokens_per_s=40.0, peak_memory_bytes=2**30,
        environment={"model_id": MODEL, "git_commit": "deadbeef", "seed": 0},
        samples=samples, traces=trace_tables(minute) if cfg["method"] == "streamkv" else {},
        worker="worker-0", device="cpu", started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=50))


def fill_toy_sweep(engine: Any, blobs: BlobStore) -> None:
    """sw-toy: the baseline and three toy configs x 2 tasks, one shard each, all done."""
    names = {"none": CONFIGS["none"], **TOY_CONFIGS}
    keys = {(n, t): UnitKey(TOY_SWEEP_ID, MODEL, cid(c), t, "0/1") for n, c in names.items()
            for t in TASKS}
    register_sweep(engine, TOY_SWEEP_ID, "Toy plugin", {"tasks": list(TASKS)},
                   list(keys.values()), list(names.values()), created_by="tests")
    for minute, ((name, _task), key) in enumerate(keys.items()):
        write_unit_result(engine, blobs, unit_result(key, name, 200 + minute))


RULER_SWEEP_ID = "sw-ruler"
RULER_CONFIGS = {"none": CONFIGS["none"], "streamkv-4": CONFIGS["skv4"], "streamkv-2": CONFIGS["skv2"]}
NIAH_LENGTHS, NIAH_DEPTHS = (1024, 2048), (0, 50, 100)


def niah_score(name: str, length: int, depth: int) -> float:
    """Made-up cell scores with a shape to see: 2-bit loses the long, mid-depth needles."""
    if name == "streamkv-2" and length == 2048 and depth == 50:
        return 20.0
    return 100.0 if name != "streamkv-2" or depth == 0 else 60.0


def fill_ruler_sweep(engine: Any, blobs: BlobStore) -> None:
    """sw-ruler: a NIAH grid (2 lengths x 3 depths) and two RULER cells (vt, cwe @ 1024) for
    none, streamkv-4 and streamkv-2; the spec lists its configs' labels as a sweep spec does."""
    from store.cells import cell_name

    tasks = [cell_name("ruler_niah_single_1", n, d) for n in NIAH_LENGTHS for d in NIAH_DEPTHS]
    tasks += [cell_name("ruler_vt", 1024), cell_name("ruler_cwe", 1024)]
    keys = {(n, t): UnitKey(RULER_SWEEP_ID, MODEL, cid(c), t, "0/1") for n, c in RULER_CONFIGS.items()
            for t in tasks}
    spec = {"configs": [{"label": f"preset {n}", "config_id": cid(c)} for n, c in RULER_CONFIGS.items()]}
    register_sweep(engine, RULER_SWEEP_ID, "RULER demo", spec, list(keys.values()),
                   list(RULER_CONFIGS.values()), created_by="tests")
    skv = {"none": "none", "streamkv-4": "skv4", "streamkv-2": "skv2"}
    for minute, ((name, task), key) in enumerate(keys.items()):
        result = unit_result(key, skv[name], 300 + minute)
        if "@depth" in task:
            _, length, depth = task.split("@")
            score = niah_score(name, int(length.removeprefix("ctx")), int(depth.removeprefix("depth")))
        else:
            score = {"none": 80.0, "streamkv-4": 70.0, "streamkv-2": 30.0}[name] - (10.0 if "cwe" in task else 0.0)
        result.metrics["score"] = score
        write_unit_result(engine, blobs, result)


def build_store(root: Path) -> dict[str, Any]:
    db_url = f"sqlite:///{root / 'store.db'}"
    blobs_uri = str(root / "blobs")
    engine = create_store_engine(db_url)
    blobs = BlobStore(blobs_uri)
    try:
        fill_toy_sweep(engine, blobs)  # first: the newest sweep (sw-demo) is the default view
        fill_ruler_sweep(engine, blobs)
        register_sweep(engine, "sw-empty", "Nothing run yet", {"note": "empty"},
                       [UnitKey("sw-empty", MODEL, cid(CONFIGS["none"]), "qa", "0/1")],
                       [CONFIGS["none"]])
        all_cfgs = [*CONFIGS.values(), FAILING]
        keys = [UnitKey(SWEEP_ID, MODEL, cid(c), t, f"{i}/2")
                for c in all_cfgs for t in TASKS for i in range(2)]
        register_sweep(engine, SWEEP_ID, SWEEP_NAME, {"tasks": list(TASKS)}, keys, all_cfgs,
                       created_by="tests")
        minute = 0
        for name, cfg in CONFIGS.items():
            for task in TASKS:
                for i in range(2):
                    key = UnitKey(SWEEP_ID, MODEL, cid(cfg), task, f"{i}/2")
                    mark_running(engine, key, "worker-0", "cpu")
                    write_unit_result(engine, blobs, unit_result(key, name, minute))
                    minute += 3
        fail = [UnitKey(SWEEP_ID, MODEL, cid(FAILING), t, f"{i}/2")
                for t in TASKS for i in range(2)]
        for key in fail[:2]:
            mark_running(engine, key, "worker-1", "cuda:0")
            mark_failed(engine, key, f"Traceback (most recent call last):\n{FAIL_TEXT}", final=True)
        mark_running(engine, fail[2], "worker-1", "cuda:0")  # fail[3] stays pending
    finally:
        engine.dispose()
    return {"db_url": db_url, "blobs_uri": blobs_uri, "sweep_id": SWEEP_ID,
            "sweep_name": SWEEP_NAME, "configs": CONFIGS, "scores": SCORES,
            "toy_sweep_id": TOY_SWEEP_ID, "ruler_sweep_id": RULER_SWEEP_ID}


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_store(tmp_path_factory.mktemp("dashboard_store"))


@pytest.fixture
def empty_store(tmp_path: Path) -> dict[str, Any]:
    db_url = f"sqlite:///{tmp_path / 'empty.db'}"
    create_store_engine(db_url).dispose()
    return {"db_url": db_url, "blobs_uri": str(tmp_path / "blobs")}
