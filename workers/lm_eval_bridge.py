"""lm-evaluation-harness on a compressed cache: `StreamKVLM` and `run_lm_eval`.

`StreamKVLM` is lm-eval's `HFLM` around one of our loaded models and one method object. The
method is passed explicitly to every forward and generate call, each with a fresh cache that
the method builds (`model.new_cache(method)`); the model is never mutated, so one model loaded
per actor serves every config. It is registered as lm-eval model "streamkv":

    import workers.lm_eval_bridge  # registers "streamkv"
    lm_eval.simple_evaluate(model="streamkv", tasks=["hellaswag"],
                            model_args={"pretrained": "smollm2-135m", "preset": "streamkv-4"})

Requests run one at a time (batch_size 1, enforced): padding a batch would put pad tokens
into the quantization groups and statistics of the real ones, so a batched score would not be
the method's score.

`run_lm_eval` runs one lm-eval task (`simple_evaluate`, samples logged) on a shard of its
documents and returns lm-eval's metrics plus one row per document; `workers.runner` turns that
into a `UnitResult` like any unit's.

Task folders (`include_path`): relative `dataset_kwargs.data_files` of a task YAML there are read
relative to the YAML's folder when the file is there (lm-eval itself reads them relative to the
working directory, which differs between the driver and Ray actors).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
from datetime import datetime, timezone
from functools import lru_cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from streamkv.methods import Method, method_from_mapping

# The repository's offline tasks (hand-written rows, no hub): see workers/lm_eval_tasks/.
BUILTIN_TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# Metrics read as a score in [0, 1] (x 100 = the unit's `score`), in order of preference.
SCORE_METRICS: tuple[str, ...] = ("acc", "exact_match", "acc_norm", "f1", "em")


@register_model("streamkv")
class StreamKVLM(HFLM):
    """HFLM over a compressed model, with `method` passed to each forward and generate call."""

    def __init__(self, pretrained: Any, method: Method | None = None, tokenizer: Any = None,
                 *, preset: str | None = None, max_length: int | None = None, **kwargs: Any):
        if isinstance(pretrained, str):  # by name, e.g. from lm-eval's model_args
            from streamkv.loading import load_model

            loaded = load_model(pretrained, dtype=_dtype(kwargs.pop("dtype", "float32")),
                                device=kwargs.pop("device", None))
            pretrained, tokenizer = loaded.model, tokenizer or loaded.tokenizer
        if method is None:
            method = method_from_mapping({"preset": preset or "none"})
        if not isinstance(method, Method):
            raise TypeError(f"method must be a streamkv method object, got {type(method).__name__}")
        batch = kwargs.pop("batch_size", None)  # lm-eval passes None when it was not given
        kwargs.pop("max_batch_size", None)
        if batch is not None and str(batch) != "1":
            raise ValueError(f"batch_size={batch!r} is out of range (allowed: 1; padding would enter "
                             "the quantized cache of the real tokens)")
        method.check_available()
        # HFLM warns that a model object instead of a name may ignore its other arguments: that
        # is the intent here (the model is loaded once per actor), so the warning is dropped.
        hf_log = logging.getLogger("lm_eval.models.huggingface")
        level = hf_log.level
        hf_log.setLevel(logging.ERROR)
        try:
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=1, max_length=max_length,
                             **kwargs)
        finally:
            hf_log.setLevel(level)
        self.method = method
        self.cache_stats: list[dict[str, Any]] = []  # the method's stats, one per model call

    # lm-eval passes tqdm's `disable` itself, so TQDM_DISABLE=1 (the sweep's quiet actors,
    # cluster.progress.QUIET_ENV) would not hide its progress bars: pass it on here.
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or _quiet())

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or _quiet())

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=disable_tqdm or _quiet())

    def _record(self, cache) -> None:
        self.cache_stats.append(self.method.stats(cache, self.model.config).scalars())

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        # inps: [1, ctx + cont] token ids -> logits [1, ctx + cont, vocab]
        if attn_mask is not None or labels is not None:
            raise ValueError("streamkv models are causal LMs (no encoder-decoder calls)")
        cache = self.model.new_cache(self.method)
        with torch.no_grad():
            logits = self.model(inps, past_key_values=cache, compression_config=self.method).logits
        self._record(cache)
        return logits

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        cache = self.model.new_cache(self.method)
        generation_kwargs["past_key_values"] = cache
        generation_kwargs["compression_config"] = self.method
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self._record(cache)
        return out


def _quiet() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def _dtype(name: Any) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in allowed:
        raise ValueError(f"dtype={name!r} is out of range (allowed: {' | '.join(allowed)})")
    return allowed[name]


# --- one task, one shard ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LmEvalDoc:
    """One evaluated document: its id, lm-eval's per-document metrics, and what was asked."""

    doc_id: int
    metrics: dict[str, float]
    prediction: str
    target: str
    prompt: str  # the context of the document's first request
    doc_hash: str  # lm-eval's sha256 of the document
    filter: str  # the lm-eval filter these metrics are of


@dataclass(frozen=True)
class LmEvalRun:
    task: str
    metrics: dict[str, float]  # lm-eval's results[task]: "acc", "acc_stderr", "acc_norm", ...
    score_metric: str | None  # the metric read as the unit's score (None: none in [0, 1])
    docs: list[LmEvalDoc]
    n_docs_total: int  # documents of the task's evaluation split, before sharding
    versions: dict[str, Any] = field(default_factory=dict)  # lm-eval's task versions
    cache_stats: list[dict[str, Any]] = field(default_factory=list)


def task_manager(name: str, include_path: str | Path | None = None):
    """lm-eval's TaskManager that knows `name`: ours and `include_path`'s tasks alone when one
    of them is `name` (indexing lm-eval's ~15k built-in tasks takes half a minute), else with
    the built-in ones too."""
    paths = (str(BUILTIN_TASK_DIR),) + ((str(include_path),) if include_path else ())
    local = _manager(paths, False)
    if name in local.task_index:
        return local
    manager = _manager(paths, True)
    if name not in manager.task_index:
        raise ValueError(f"unknown lm-eval task {name!r}: not built into lm-eval {_version()} and "
                         f"not in {' or '.join(paths)}")
    return manager


@lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], include_defaults: bool):
    return _RebasingTaskManager(include_path=list(paths), include_defaults=include_defaults)


def _rebasing_class():
    from lm_eval.tasks import TaskManager

    class RebasingTaskManager(TaskManager):
        """lm-eval's TaskManager, but a task named by its name reads relative local
        `data_files` beside its YAML (`_task_spec`), wherever the process runs."""

        def _load_spec(self, spec):  # lm-eval 0.4.13's one loading path for names and dicts
            return super()._load_spec(_task_spec(self, spec) if isinstance(spec, str) else spec)

    return RebasingTaskManager


_RebasingTaskManager = _rebasing_class()


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _task_spec(manager, name: str) -> str | dict[str, Any]:
    """The name, or for a YAML task of an include folder its config with data_files rebased."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if not path:
        return name
    cfg = load_yaml(Path(path), resolve_func=True)
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if cfg.get("dataset_path") not in ("json", "csv", "parquet", "text") or files is None:
        return name
    folder = Path(path).parent
    cfg["dataset_kwargs"] = {**kwargs, "data_files": _rebase(files, folder)}
    return cfg


def _rebase(files: Any, folder: Path) -> Any:
    if isinstance(files, dict):
        return {k: _rebase(v, folder) for k, v in files.items()}
    if isinstance(files, list):
        return [_rebase(v, folder) for v in files]
    path = Path(str(files))
    return str(folder / path) if not path.is_absolute() and (folder / path).exists() else files


def load_task(manager, name: str):
    """The lm-eval Task object of `name` (its documents are loaded here, once per unit)."""
    loaded = manager.load([name])
    if loaded["groups"] or len(loaded["tasks"]) != 1:
        raise ValueError(f"lm-eval task {name!r} is a group of {len(loaded['tasks'])} tasks; list its tasks "
                         "one by one under lm_eval.tasks (each is one unit)")
    return next(iter(loaded["tasks"].values()))


def shard_doc_ids(n_docs: int, index: int, count: int, limit: int | None) -> list[int]:
    """Documents i, i + n, i + 2n, ... of shard i/n, capped at `limit`."""
    chosen = list(range(index, n_docs, count))
    return chosen[:limit] if limit is not None else chosen


def run_lm_eval(lm: StreamKVLM, name: str, *, include_path: str | Path | None, shard: tuple[int, int],
                limit: int | None, seed: int, num_fewshot: int | None = None,
                bootstrap_iters: int = 1000) -> LmEvalRun:
    """Runs lm-eval task `name` on shard `shard` of its documents with `lm`."""
    import lm_eval

    manager = task_manager(name, include_path)
    task = load_task(manager, name)
    total = len(task.eval_docs)
    doc_ids = shard_doc_ids(total, *shard, limit)
    lm.cache_stats.clear()
    if not doc_ids:
        return LmEvalRun(name, {}, None, [], total)
    out = lm_eval.simple_evaluate(
        # The manager too: without one lm-eval indexes all its built-in tasks (~30 s) again.
        model=lm, tasks=[task], task_manager=manager, num_fewshot=num_fewshot,
        samples={name: doc_ids}, log_samples=True, bootstrap_iters=bootstrap_iters,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    results = out["results"][name]
    metrics = metric_values(results)
    names = [m.split(",")[0] for m in results if "," in m and "_stderr" not in m]
    score_metric = next((m for m in SCORE_METRICS if m in names), None)
    docs: dict[int, LmEvalDoc] = {}
    for row in out["samples"][name]:  # one row per document and filter: keep the first filter's
        doc = _doc(row, names)
        docs.setdefault(doc.doc_id, doc)
    return LmEvalRun(name, metrics, score_metric, [docs[i] for i in sorted(docs)], total,
                     dict(out.get("versions", {})), list(lm.cache_stats))


_NO_FILTER = "none"  # lm-eval's name for a metric's unfiltered value (not our method "none")


def metric_values(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's "metric,filter" entries as floats: "acc" for filter "none", else
    "acc/<filter>"; entries that are not numbers (lm-eval writes "N/A") are left out."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, filter_name = key.split(",", 1)
        name = metric if filter_name == _NO_FILTER else f"{metric}/{filter_name}"
        if math.isfinite(float(value)):
            out[name] = float(value)
    return out


def _doc(row: dict[str, Any], metric_names: list[str]) -> LmEvalDoc:
    values = {m: float(row[m]) for m in metric_names if isinstance(row.get(m), (int, float))
              and not isinstance(row.get(m), bool)}
    args = row.get("arguments") or []
    prompt = _first_text(args[0]) if args else ""
    return LmEvalDoc(doc_id=int(row["doc_id"]), metrics=values, prediction=_prediction(row.get("filtered_resps")),
                     target=_text(row.get("target")), prompt=prompt, doc_hash=str(row.get("doc_hash", "")),
                     filter=str(row.get("filter", "none")))


def _first_text(args: Any) -> str:
    # An argument tuple ("context", " continuation") or ("context", {gen kwargs}); dict form in
    # newer versions: {"gen_args_0": {"arg_0": ...}}.
    if isinstance(args, dict):
        args = list(args.values())
    if isinstance(args, (list, tuple)) and args:
        return _first_text(args[0]) if isinstance(args[0], (list, tuple, dict)) else str(args[0])
    return str(args)


def _prediction(resps: Any) -> str:
    """A generation's text; for a multiple-choice document the index of the likeliest choice
    (lm-eval logs one (loglikelihood, is_greedy) pair per choice)."""
    if (isinstance(resps, (list, tuple)) and resps
            and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps)):
        lls = [float(r[0]) for r in resps]
        return str(max(range(len(lls)), key=lls.__getitem__))
    return _text(resps)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _text(value[0])
    return value if isinstance(value, str) else str(value)


# --- the unit ----------------------------------------------------------------------------------------
_STAT_FIELDS = ("avg_key_bits", "avg_value_bits", "kv_bytes", "fp16_kv_bytes", "compression_ratio",
                "outlier_ratio")


def run_lm_eval_unit(loaded, unit, progress=None):
    """An "lm_eval" `WorkUnit` on `loaded` -> `store.UnitResult` (called by `workers.runner`).

    metrics: lm-eval's results of the task (`metric_values`), plus `score` = 100 x the mean of
    the per-document values of `score_metric` (the first of SCORE_METRICS the task reports)
    with its bootstrap interval (`score_ci_low`, `score_ci_high`), and `peak_kv_bytes`.
    samples: one row per document (`doc-<id>`), score = its `score_metric` value.
    Compression fields: means over the model calls of the method's cache stats."""
    from store.entities import SampleRow, UnitResult
    from workers.environment import device_name, environment
    from workers.runner import PeakMemory, score_interval_metrics
    from workers.units import lm_eval_task

    started = datetime.now(timezone.utc)
    report = progress or (lambda message: None)
    name = lm_eval_task(unit.task)
    lm = StreamKVLM(loaded.model, unit.config, loaded.tokenizer)
    memory = PeakMemory(loaded.model.device)
    report(f"{unit.task} {unit.shard} [{unit.method}]: running lm-eval")
    torch.manual_seed(unit.seed)
    memory.start()
    run = run_lm_eval(lm, name, include_path=unit.source, shard=unit.shard_index, limit=unit.limit,
                      seed=unit.seed)
    peak = memory.stop()
    data_sha = hashlib.sha256("\n".join(d.doc_hash for d in run.docs).encode()).hexdigest()
    env = environment(loaded, model_name=unit.model, dataset_sha256=data_sha,
                      dataset_hash_of="lm-eval doc hashes of the evaluated documents", seed=unit.seed)
    env.update(unit.config.environment())
    env.update(peak_memory=memory.source, lm_eval_version=_version(), lm_eval_task=name,
               lm_eval_task_version=run.versions.get(name), lm_eval_docs_total=run.n_docs_total,
               score_metric=run.score_metric)
    rows = [_sample_row(SampleRow, loaded.tokenizer, d, run.score_metric) for d in run.docs]
    metrics = dict(run.metrics)
    scores = [r.score for r in rows if r.score is not None]
    if scores and len(scores) == len(rows):
        metrics["score"] = 100.0 * sum(scores) / len(scores)
        metrics.update(score_interval_metrics(scores, unit.seed))
    if rows:
        metrics["prompt_tokens"] = sum(r.prompt_tokens for r in rows) / len(rows)
        metrics["peak_kv_bytes"] = float(max((s.get("peak_kv_bytes") or s.get("kv_bytes") or 0)
                                             for s in run.cache_stats) if run.cache_stats else 0)
    means = {f: _mean([s.get(f) for s in run.cache_stats]) for f in _STAT_FIELDS}
    return UnitResult(
        key=unit.key, config=unit.config.to_dict(), method=unit.method, metrics=metrics, n_samples=len(rows),
        avg_key_bits=means["avg_key_bits"], avg_value_bits=means["avg_value_bits"],
        kv_bytes=None if means["kv_bytes"] is None else round(means["kv_bytes"]),
        fp16_kv_bytes=None if means["fp16_kv_bytes"] is None else round(means["fp16_kv_bytes"]),
        compression_ratio=means["compression_ratio"], outlier_ratio=means["outlier_ratio"],
        peak_memory_bytes=peak, environment=env, samples=rows, worker=f"{socket.gethostname()}:{os.getpid()}",
        device=device_name(loaded.model.device), started_at=started, finished_at=datetime.now(timezone.utc))


def _sample_row(cls, tokenizer, doc: LmEvalDoc, score_metric: str | None):
    score = doc.metrics.get(score_metric) if score_metric else None
    return cls(sample_id=f"doc-{doc.doc_id}", prediction=doc.prediction, answers=[doc.target],
               score=score, prompt_tokens=len(tokenizer(doc.prompt).input_ids),
               extra={"doc_id": doc.doc_id, "filter": doc.filter, "doc_hash": doc.doc_hash, **doc.metrics})


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


__all__ = ["BUILTIN_TASK_DIR", "LmEvalDoc", "LmEvalRun", "SCORE_METRICS", "StreamKVLM", "load_task",
           "metric_values", "run_lm_eval", "run_lm_eval_unit", "shard_doc_ids", "task_manager"]
