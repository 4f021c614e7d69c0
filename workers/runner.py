"""`run_unit(loaded, unit)`: evaluate one work unit on a loaded model -> `store.UnitResult`.

Nothing here knows Ray or SQL. One model is loaded per process; each unit's method object is
passed explicitly to every forward and generate call, with a fresh cache per sample built by
the method (`method.new_cache`), and measured by the method (`method.stats`). lm-eval units
(`unit.kind == "lm_eval"`) are run by `workers.lm_eval_bridge.run_lm_eval_unit`. Per sample:

- task units (LongBench / synthetic): prompt (`prepare_input`: official template, middle
  truncation to `max_length`, chat format) -> greedy generation (`workers.generation`) ->
  `workers.metrics.score_sample` -> fidelity (b) of the continuation (`workers.fidelity`);
- perplexity units: one forward of the window (the chunked-prefill path) -> summed NLL of every
  position but the first -> fidelity (a) of all window positions.

Unit metrics (`UnitResult.metrics`):
- score: `workers.metrics.aggregate` (mean x 100) of the sample scores (task units), with
  score_ci_low / score_ci_high, its 95 % bootstrap interval over the samples (seeded by the
  unit's seed; `score_interval_metrics`);
- perplexity = exp(total NLL / total predicted tokens) and nll (per token) (perplexity units);
- kl, top1_agreement: token-weighted means over all compared positions; n_tokens: how many;
- prompt_tokens, new_tokens, ttft_s: means per sample; peak_kv_bytes: the largest cache seen.
Compression fields (avg_key_bits, avg_value_bits, kv_bytes, fp16_kv_bytes, compression_ratio,
outlier_ratio) are means over the samples of the cache stats at the end of each sample (the
ratio is the mean of the per-sample ratios); None where a method cannot measure them.

Timings: prefill_tokens_per_s = total prompt (window) tokens / total prefill seconds, where a
task sample's prefill is its time to first token (see `workers.generation`) and a window's is
its timed forward; decode_tokens_per_s = total decode steps / total decode seconds. One
untimed warm-up forward (8 tokens) runs per process and config before the first timed sample.
peak_memory_bytes: `torch.cuda.max_memory_allocated` since the unit started on CUDA; on CPU
the process's peak RSS (VmHWM, reset at unit start through /proc/self/clear_refs where the
kernel allows it, else the lifetime max RSS). `environment["peak_memory"]` says which.

A sample that fails on its data (a prompt that cannot be built or is empty, a prompt longer
than the model's positions, a ground truth the metric cannot read, a non-finite NLL) raises
`SampleError` (a ValueError) naming the unit, the sample id and its index; any other error
propagates unchanged with a note naming the sample. A method that cannot run here (e.g. an HF
backend that is not installed) raises `streamkv.methods.MethodUnavailable` with the reason. A shard with no
samples (a task smaller than the shard count) gives a result with n_samples=0 and no metrics.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from store.entities import SampleRow, UnitResult
from streamkv.methods import Method
from workers import fidelity as fid
from workers.environment import device_name, environment
from workers.generation import generate_sample
from store.intervals import DEFAULT_RESAMPLES, bootstrap_interval
from workers.metrics import aggregate, score_sample
from workers.perplexity import load_text, token_windows
from workers.prompts import prepare_input
from workers.tasks import get_task
from workers.traces import TraceCollector
from workers.units import WorkUnit, dataset_sha256, longbench_samples, window_indices

ProgressFn = Callable[[str], None]

_STAT_FIELDS = ("avg_key_bits", "avg_value_bits", "kv_bytes", "fp16_kv_bytes", "compression_ratio",
                "outlier_ratio")


class SampleError(ValueError):
    """A sample that cannot be evaluated because of its data; the message names it."""


# --- peak memory -----------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a stretch of work: CUDA allocator peak, or the process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.source = ""

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "cuda_max_memory_allocated"
            return
        try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.source = "process_peak_rss"
        except OSError:
            self.source = "process_max_rss_lifetime"

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.source == "process_peak_rss":
            try:
                with open("/proc/self/status") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) * 1024
            except OSError:
                pass
            self.source = "process_max_rss_lifetime"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss) * 1024 if os.uname().sysname == "Linux" else int(rss)


# --- one run of the model --------------------------------------------------------------------------
@dataclass
class _Plan:
    """How the unit's samples are run: its method, and the reference fidelity compares with."""

    method: Method
    reference_chunk: int | None
    same_as_reference: bool

    @classmethod
    def of(cls, unit: WorkUnit) -> _Plan:
        unit.config.check_available()
        return cls(unit.config, unit.config.chunk_size, fid.is_reference(unit.config))

    def new_cache(self, model):
        return model.new_cache(self.method)

    def stats(self, model, cache) -> tuple[dict[str, Any], Any]:
        """(scalar cache stats, CompressionStats) of the run that just finished."""
        stats = self.method.stats(cache, model.config)
        return stats.scalars(), stats


@dataclass
class _Totals:
    scores: list[float] = field(default_factory=list)
    nll_sum: float = 0.0
    nll_tokens: int = 0
    fidelity: fid.Fidelity = field(default_factory=fid.Fidelity)
    stats: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    new_tokens: int = 0
    decode_steps: int = 0
    decode_seconds: float = 0.0
    peak_kv_bytes: int = 0
    rows: list[SampleRow] = field(default_factory=list)
    kv_notes: set[str] = field(default_factory=set)
    history_reads: set[str] = field(default_factory=set)


def _warm_up(loaded, plan: _Plan) -> None:
    """One untimed 8-token forward per loaded model and config (recorded on `loaded`)."""
    key = repr(plan.method)
    if key in loaded.warmed:
        return
    model = loaded.model
    ids = torch.arange(1, 9, device=model.device).view(1, -1) % model.config.vocab_size
    model(ids, past_key_values=plan.new_cache(model), logits_to_keep=1, compression_config=plan.method)
    loaded.warmed.add(key)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- task units --------------------------------------------------------------------------------------
def _run_task_sample(loaded, unit: WorkUnit, plan: _Plan, sample, totals: _Totals,
                     traces: TraceCollector) -> None:
    model, tokenizer = loaded.model, loaded.tokenizer
    spec = get_task(unit.task)
    try:
        ids = prepare_input(spec, sample, tokenizer, unit.max_length)
    except ValueError as err:
        raise SampleError(f"cannot build the prompt: {err}") from err
    if not ids:
        raise SampleError("the prompt is empty after templating and tokenization")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and len(ids) + spec.max_new_tokens > limit:
        raise SampleError(f"prompt of {len(ids)} tokens + max_new_tokens={spec.max_new_tokens} exceeds the "
                          f"model's max_position_embeddings={limit}; lower max_length (now {unit.max_length})")
    cache = plan.new_cache(model)
    gen = generate_sample(model, tokenizer, ids, spec, past_key_values=cache, compression_config=plan.method)
    scalars, stats = plan.stats(model, cache)
    fidelity = fid.continuation_fidelity(model, ids, gen.new_token_ids, gen.step_logits, plan.reference_chunk,
                                         same_as_reference=plan.same_as_reference)
    try:
        score = score_sample(spec, gen.text, sample.answers, sample.all_classes)
    except ValueError as err:
        raise SampleError(f"metric {spec.metric} cannot score it: {err}") from err
    if not 0.0 <= score <= 1.0 or math.isnan(score):
        raise SampleError(f"metric {spec.metric} returned {score}, outside [0, 1]")
    totals.scores.append(score)
    totals.prompt_tokens += len(ids)
    totals.prefill_seconds += gen.prefill_seconds
    totals.new_tokens += gen.new_tokens
    totals.decode_steps += max(gen.new_tokens - 1, 0)
    totals.decode_seconds += gen.decode_seconds if gen.new_tokens > 1 else 0.0
    _record_stats(totals, scalars, stats, sample.id, traces)
    totals.fidelity += fidelity
    totals.rows.append(SampleRow(
        sample_id=sample.id, prediction=gen.text, answers=list(sample.answers), score=score,
        prompt_tokens=len(ids),
        extra={"new_tokens": gen.new_tokens, "stopped_by": gen.stopped_by,
               "ttft_s": gen.prefill_seconds, "decode_tokens_per_s": gen.decode_tokens_per_s,
               "kl": fidelity.mean_kl, "top1_agreement": fidelity.top1,
               "kv_bytes": scalars.get("kv_bytes"), "compression_ratio": scalars.get("compression_ratio"),
               "length_words": sample.length,
               # LongBench v2's splits (None elsewhere), so split accuracies come from the store.
               **({"difficulty": sample.difficulty, "length_class": sample.length_class}
                  if sample.difficulty is not None or sample.length_class is not None else {})}))


# --- perplexity units --------------------------------------------------------------------------------
_TOKENS: dict[tuple, torch.Tensor] = {}


def _text_tokens(tokenizer, path) -> torch.Tensor:
    key = (str(path), os.path.getmtime(path), id(tokenizer), len(tokenizer))
    if key not in _TOKENS:
        _TOKENS.clear()  # one text at a time: WikiText-2 test is ~300k ids
        _TOKENS[key] = tokenizer(load_text(path), return_tensors="pt").input_ids[0]
    return _TOKENS[key]


def _run_window(loaded, plan: _Plan, index: int, window: torch.Tensor, totals: _Totals,
                traces: TraceCollector) -> None:
    model = loaded.model
    ids = window.view(1, -1).to(model.device)
    cache = plan.new_cache(model)
    _sync(model.device)
    start = time.perf_counter()
    out = model(ids, past_key_values=cache, compression_config=plan.method)
    _sync(model.device)
    seconds = time.perf_counter() - start
    logits = out.logits[0].float()
    del out
    nll = float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
    if not math.isfinite(nll):
        raise SampleError(f"window {index}: non-finite NLL {nll}")
    scalars, stats = plan.stats(model, cache)
    fidelity = fid.prefill_fidelity(model, window, logits, plan.reference_chunk,
                                    same_as_reference=plan.same_as_reference)
    tokens = window.numel() - 1
    sample_id = f"window-{index}"
    totals.nll_sum += nll
    totals.nll_tokens += tokens
    totals.prompt_tokens += window.numel()
    totals.prefill_seconds += seconds
    _record_stats(totals, scalars, stats, sample_id, traces)
    totals.fidelity += fidelity
    totals.rows.append(SampleRow(
        sample_id=sample_id, prediction="", answers=[], score=None, prompt_tokens=window.numel(),
        extra={"window": index, "nll_sum": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens),
               "kl": fidelity.mean_kl, "top1_agreement": fidelity.top1, "prefill_s": seconds,
               "kv_bytes": scalars.get("kv_bytes"), "compression_ratio": scalars.get("compression_ratio")}))


def _record_stats(totals: _Totals, scalars: dict[str, Any], stats, sample_id: str,
                  traces: TraceCollector) -> None:
    totals.stats.append(scalars)
    peak = scalars.get("peak_kv_bytes") or scalars.get("kv_bytes") or 0
    totals.peak_kv_bytes = max(totals.peak_kv_bytes, int(peak))
    if scalars.get("kv_bytes_note"):
        totals.kv_notes.add(scalars["kv_bytes_note"])
    if stats is not None:
        totals.history_reads.update(stats.history_read_counts)
        traces.add(sample_id, stats)


# --- the unit ----------------------------------------------------------------------------------------
def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def score_interval_metrics(scores: list[float], seed: int,
                           n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, float]:
    """score_ci_low / score_ci_high: the 95 % bootstrap interval (`store.intervals`) of the
    unit's score (x 100, like the score), over its per-sample scores, seeded by the unit's seed."""
    ci = bootstrap_interval(scores, n_resamples=n_resamples, seed=seed)
    return {"score_ci_low": 100.0 * ci.low, "score_ci_high": 100.0 * ci.high}


def run_unit(loaded, unit: WorkUnit, progress: ProgressFn | None = None) -> UnitResult:
    """Evaluate `unit` on `loaded` (a `streamkv.loading.LoadedModel`); see the module docstring."""
    if unit.kind == "lm_eval":  # lm-eval runs its own requests (imported here: lm-eval is heavy)
        from workers.lm_eval_bridge import run_lm_eval_unit

        return run_lm_eval_unit(loaded, unit, progress)
    started = datetime.now(timezone.utc)
    report = progress or (lambda message: None)
    model = loaded.model
    plan = _Plan.of(unit)
    data_sha, data_what = dataset_sha256(unit)
    env = environment(loaded, model_name=unit.model, dataset_sha256=data_sha, dataset_hash_of=data_what,
                      seed=unit.seed)
    env.update(unit.config.environment())
    if unit.kind != "perplexity":  # prompt template + metric + their packages: what a score means
        env["task_version"] = get_task(unit.task).version
    totals, traces = _Totals(), TraceCollector()
    memory = PeakMemory(model.device)
    label = f"{unit.task} {unit.shard} [{unit.method}]"
    torch.manual_seed(unit.seed)
    with torch.no_grad():
        if unit.kind == "perplexity":
            limit = getattr(model.config, "max_position_embeddings", None)
            if limit and unit.context_length > limit:
                raise ValueError(f"context_length={unit.context_length} exceeds the model's "
                                 f"max_position_embeddings={limit}")
            report(f"{label}: tokenizing {unit.text_path().name}")
            windows = token_windows(_text_tokens(loaded.tokenizer, unit.text_path()), unit.context_length)
            chosen = window_indices(len(windows), unit)
            items = [(f"window-{i}", (i, windows[i])) for i in chosen]
        else:
            report(f"{label}: loading samples")
            items = [(s.id, s) for s in longbench_samples(unit)]
        if items:
            _warm_up(loaded, plan)
        memory.start()
        for number, (sample_id, item) in enumerate(items, start=1):
            where = f"{unit.key}: sample {sample_id!r} ({number}/{len(items)})"
            try:
                if unit.kind == "perplexity":
                    _run_window(loaded, plan, item[0], item[1], totals, traces)
                else:
                    _run_task_sample(loaded, unit, plan, item, totals, traces)
            except SampleError as err:
                raise SampleError(f"{where}: {err}") from err
            except Exception as err:
                err.add_note(f"while running {where}")
                raise
            report(f"{label}: sample {number}/{len(items)}")
        peak = memory.stop()
    env["peak_memory"] = memory.source
    if totals.kv_notes:
        env["kv_bytes_note"] = "; ".join(sorted(totals.kv_notes))
    if totals.history_reads:  # which read paths the unit's forward steps took (streamkv.layers)
        env["history_reads"] = ", ".join(sorted(totals.history_reads))

    metrics: dict[str, float] = {}
    n = len(totals.rows)
    if n:
        if unit.kind == "perplexity":
            metrics["nll"] = totals.nll_sum / totals.nll_tokens
            metrics["perplexity"] = math.exp(metrics["nll"])
        else:
            metrics["score"] = aggregate(totals.scores)
            metrics.update(score_interval_metrics(totals.scores, unit.seed))
            metrics["new_tokens"] = totals.new_tokens / n
            metrics["ttft_s"] = totals.prefill_seconds / n
        if totals.fidelity.tokens:
            metrics["kl"] = totals.fidelity.mean_kl
            metrics["top1_agreement"] = totals.fidelity.top1
        metrics["n_tokens"] = float(totals.fidelity.tokens)
        metrics["prompt_tokens"] = totals.prompt_tokens / n
        metrics["peak_kv_bytes"] = float(totals.peak_kv_bytes)
        if unit.kind == "perplexity" and "calibration" in env:
            windows = [row.extra["window"] for row in totals.rows]
            metrics["calibration_overlap_windows"] = float(
                _calibration_overlap(env["calibration"], unit, data_sha, windows))
    means = {name: _mean([s.get(name) for s in totals.stats]) for name in _STAT_FIELDS}
    return UnitResult(
        key=unit.key,
        config=unit.config.to_dict(),
        method=unit.method,
        metrics=metrics,
        n_samples=n,
        avg_key_bits=means["avg_key_bits"],
        avg_value_bits=means["avg_value_bits"],
        kv_bytes=None if means["kv_bytes"] is None else round(means["kv_bytes"]),
        fp16_kv_bytes=None if means["fp16_kv_bytes"] is None else round(means["fp16_kv_bytes"]),
        compression_ratio=means["compression_ratio"],
        outlier_ratio=means["outlier_ratio"],
        prefill_tokens_per_s=(totals.prompt_tokens / totals.prefill_seconds
                              if totals.prefill_seconds > 0 else None),
        decode_tokens_per_s=(totals.decode_steps / totals.decode_seconds
                             if totals.decode_steps and totals.decode_seconds > 0 else None),
        peak_memory_bytes=peak,
        environment=env,
        samples=totals.rows,
        traces=traces.tables(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        device=device_name(model.device),
        started_at=started,
        finished_at=datetime.now(timezone.utc),
    )


def _calibration_overlap(info: dict[str, Any], unit: WorkUnit, text_sha: str, windows: list[int]) -> int:
    """Evaluated windows that the calibration file was measured on (same text and length)."""
    if info.get("text_sha256") != text_sha or info.get("context_length") != unit.context_length:
        return 0
    used = set(info.get("windows") or [])
    return sum(1 for w in windows if w in used)


__all__ = ["PeakMemory", "ProgressFn", "SampleError", "run_unit", "score_interval_metrics"]
