"""What a sweep prints, without Ray: the results table, the bar and unit lines in a log, the
recording of one finished attempt, and third-party output hidden in a driver and an actor."""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from cluster.progress import (
    QUIET_ENV,
    SweepProgress,
    first_line,
    quiet_env,
    results_table,
    unit_line,
)

REPO = Path(__file__).resolve().parents[2]


def _unit(config_id, task, shard, n, score=math.nan, ppl=math.nan, kl=math.nan, ratio=math.nan,
          model="m", method="streamkv"):
    return dict(model_id=model, config_id=config_id, method=method, task=task, shard=shard,
                n_samples=n, score=score, perplexity=ppl, kl=kl, compression_ratio=ratio)


def test_table_has_a_row_per_config_and_a_column_per_task(helpers):
    units = pd.DataFrame([
        # config b: qa scores 0.2 on 1 sample and 0.8 on 3 -> 0.65 (weighted by n_samples)
        _unit("b", "qa", "0/2", 1, score=0.2, kl=0.01, ratio=3.0),
        _unit("b", "qa", "1/2", 3, score=0.8, kl=0.03, ratio=3.2),
        _unit("b", "wikitext2_ppl", "0/1", 2, ppl=12.5, kl=0.02, ratio=3.1),
        _unit("a", "qa", "0/2", 2, score=1.0, kl=0.0, ratio=1.0, method="none"),
        _unit("a", "qa", "1/2", 2, score=0.5, kl=0.0, ratio=1.0, method="none"),
        _unit("a", "wikitext2_ppl", "0/1", 2, ppl=10.0, kl=0.0, ratio=1.0, method="none"),
        _unit("c", "qa", "0/2", 2, score=0.1, kl=2e-6, ratio=4.0, method="kivi"),  # not in labels
    ])
    table = results_table(units, {"a": "preset none", "b": "grid key_bits_normal=3"},
                          tasks=["wikitext2_ppl", "qa"])
    header = table.splitlines()[0].split()
    assert header == ["config", "wikitext2_", "qa", "kl", "ratio"]  # the spec's task order
    rows = helpers.table_rows(table)
    assert list(rows) == ["preset none", "grid key_bits_normal=3", "kivi"]  # labels' order, then the rest
    assert rows["preset none"] == ["10.000", "0.750", "0.000", "1.00x"]
    # ppl column: perplexity (no score); kl and ratio: plain means over the config's 3 units
    assert rows["grid key_bits_normal=3"] == ["12.500", "0.650", "0.020", "3.10x"]
    assert rows["kivi"] == ["-", "0.100", "2.0e-06", "4.00x"]  # a task it has no result for


def test_table_names_the_model_when_a_sweep_has_several(helpers):
    units = pd.DataFrame([_unit("a", "qa", "0/1", 1, score=0.5, model="llama"),
                          _unit("a", "qa", "0/1", 1, score=0.25, model="smollm")])
    rows = helpers.table_rows(results_table(units, {"a": "points[0]"}))
    assert rows == {"llama: points[0]": ["0.500", "-", "-"], "smollm: points[0]": ["0.250", "-", "-"]}


def test_six_long_task_names_and_a_long_label_fit_in_120_columns():
    tasks = ["passage_retrieval_synth", "multifieldqa_en", "narrativeqa", "kv_retrieval_synth",
             "repobench-p", "wikitext2_ppl"]
    label = "grid key_bits_normal=3,value_bits_normal=2,chunk_size=512"
    units = pd.DataFrame([_unit("g", t, "0/1", 4, score=0.5 if t != "wikitext2_ppl" else math.nan,
                                ppl=51416.08 if t == "wikitext2_ppl" else math.nan, kl=3.3e-6, ratio=4.5)
                          for t in tasks])
    table = results_table(units, {"g": label}, tasks=tasks)
    assert max(map(len, table.splitlines())) <= 120, table
    headers = table.split("\n---")[0]
    for piece in ("passage_", "retrieval_", "synth", "multifield", "repobench-", "wikitext2_", "ppl"):
        assert piece in headers, headers
    # The label wraps at its commas; the continuation is indented, so it reads as one row.
    continuation = [line for line in table.splitlines() if line.startswith("  ") and "chunk_size" in line]
    assert continuation and "grid key_bits_normal=3," in table
    assert "51416.1" in table


def test_table_of_a_sweep_without_results_says_so():
    empty = pd.DataFrame(columns=list(_unit("a", "qa", "0/1", 1)))
    assert "no unit" in results_table(empty, {"a": "points[0]"})


def test_bar_in_a_log_prints_whole_lines_in_order():
    out = io.StringIO()  # not a TTY, as `ray job logs` or a pipe
    bar = SweepProgress(4, already_done=1, desc="s", file=out, log_interval=3600)
    bar.note("sweep s: 4 units")
    for status, line in (("done", "done    qa 0/2 [a] 1.0s"), ("retry", "retry   qa 1/2 [a] (x)"),
                         ("failed", "FAILED  qa 1/2 [a] after 2 attempt(s): ValueError: bad")):
        bar.started()
        bar.finished(status, line)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "sweep s: 4 units" and lines[1].startswith("done    qa 0/2")
    assert lines[2].startswith("s:") and "2/4" in lines[2]  # the bar's line at the first finished unit
    assert lines[3].startswith("retry") and lines[4].startswith("FAILED")  # no bar line within the hour
    assert lines[5].startswith("s:") and "3/4" in lines[5] and "failed=1 retried=1" in lines[5]
    assert len(lines) == 6


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    bar = SweepProgress(2, file=out, enabled=False)
    bar.note("hello")
    bar.started()
    bar.finished("done", "done    qa 0/1 [a] 1.0s")
    bar.close()
    assert out.getvalue() == ""


def test_unit_lines_give_the_first_line_of_the_error():
    error = "ValueError: row 3 is not a LongBench row\n\nTraceback (most recent call last): ..."
    assert unit_line("failed", "qa 0/1 [a]", attempt=2, error=error) == \
        "FAILED  qa 0/1 [a] after 2 attempt(s): ValueError: row 3 is not a LongBench row"
    assert unit_line("retry", "qa 0/1 [a]", attempt=1, error=error).endswith(
        "(attempt 1 failed: ValueError: row 3 is not a LongBench row)")
    assert unit_line("skipped", "qa 0/1 [b]", error="quanto is not installed\nmore") == \
        "skipped qa 0/1 [b]: quanto is not installed"
    assert unit_line("done", "qa 0/1 [a]", seconds=2.25) == "done    qa 0/1 [a] 2.2s"
    assert first_line("") == ""


def test_quiet_env_keeps_a_variable_the_user_set(monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    env = quiet_env()
    assert env["TRANSFORMERS_VERBOSITY"] == "info" and env["TQDM_DISABLE"] == "1"
    assert set(env) == set(QUIET_ENV)


NOISE = textwrap.dedent("""
    import sys, warnings
    from cluster.progress import hide_third_party_output  # imports tqdm, as the driver does
    if sys.argv[1] == "driver":
        hide_third_party_output()
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging
    if sys.argv[1] != "driver":  # the driver loads no weights: only an actor draws this bar
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...", mininterval=0):
            pass
    warnings.warn("a deprecated argument", UserWarning)
    hf_logging.get_logger("transformers.tokenization_utils_base").warning("tokenizer notice")
    hf_logging.get_logger("transformers.modeling_utils").error("an error of the library")
""")


@pytest.mark.parametrize("mode", ["verbose", "driver", "actor"])
def test_third_party_output_is_hidden_in_driver_and_actors(mode):
    """verbose: all of it shows (so the other two can fail); driver: `hide_third_party_output`;
    actor: a process started with `quiet_env()`, as the Ray actors are (runtime_env)."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if mode == "actor":
        env.update(QUIET_ENV)
    proc = subprocess.run([sys.executable, "-c", NOISE, mode], env=env, capture_output=True, text=True,
                          timeout=120, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "an error of the library" in out  # errors are never hidden
    noise = ("UserWarning", "tokenizer notice") + (("Converting and de-quantizing",) if mode != "driver" else ())
    shown = [n for n in noise if n in out]
    assert shown == (list(noise) if mode == "verbose" else []), out


def test_ray_notices_are_dropped_and_errors_kept():
    from cluster.driver import drop_ray_notices

    text = ("[2026-12-03 11:16:43,130 W 7767 7767] network_util.cc:330: Failed to determine local IP\n"
            "[2026-12-03 11:16:43,131 I 7767 7767] logging.cc:303: Set ray log level\n"
            "[2026-12-03 11:16:44,000 E 7767 7767] core_worker.cc:1: cannot connect\n"
            "Traceback (most recent call last):\n")
    assert drop_ray_notices(text) == ("[2026-12-03 11:16:44,000 E 7767 7767] core_worker.cc:1: cannot connect\n"
                                      "Traceback (most recent call last):\n")


def test_verbose_is_passed_on_to_the_isolated_rerun():
    from cluster.sweep import add_arguments, to_argv

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert to_argv(parser.parse_args(["s.yaml", "--verbose", "--limit", "1"])) == \
        ["s.yaml", "--limit", "1", "--verbose"]
    assert to_argv(parser.parse_args(["s.yaml", "--no-progress"])) == ["s.yaml", "--no-progress"]


# --- one finished attempt, recorded (a real SQLite store, no Ray) ---------------------------------
@pytest.fixture
def recorder_for(make_tiny_spec):
    from cluster.driver import AttemptRecorder, Tally, open_sweep

    def make(**changes):
        spec = make_tiny_spec(**changes)
        sweep = open_sweep(spec)
        out = io.StringIO()
        recorder = AttemptRecorder(sweep.engine, sweep.blobs, write_here=True, max_attempts=spec.max_attempts,
                                   labels={c.config_id: c.label for c in spec.configs}, tally=Tally(),
                                   bar=SweepProgress(len(sweep.units), desc="bar", file=out, log_interval=3600))
        return sweep, recorder, out

    return make


def test_attempts_end_as_retry_then_failed_or_skipped(recorder_for, helpers, store_paths):
    from cluster.driver import Attempt

    sweep, recorder, out = recorder_for(max_attempts=2)
    first, second = sweep.todo[0], sweep.todo[1]
    error = "RuntimeError: the actor ran out of memory\n\ndetails"
    assert recorder.record(Attempt(first, 0, number=1, started=0.0, status="error", error=error)) == "retry"
    assert recorder.record(Attempt(first, 1, number=2, started=0.0, status="error", error=error)) == "failed"
    assert recorder.record(Attempt(second, 0, number=1, started=0.0, status="skipped",
                                   error="HF backend quanto is not installed")) == "skipped"
    tally = recorder.tally
    assert (tally.done, tally.failed, tally.skipped, tally.finished) == (0, 1, 1, 2)
    assert tally.failures == [(first.key, error)]
    rows = dict(((t, s, c), (st, e)) for t, s, c, st, e in helpers.db_rows(
        store_paths[0], "SELECT task, shard, config_id, status, error FROM units"))
    assert rows[(first.key.task, first.key.shard, first.key.config_id)] == ("failed", error)
    assert rows[(second.key.task, second.key.shard, second.key.config_id)] == (
        "skipped", "HF backend quanto is not installed")
    # (the bar's own lines and redraws aside)
    lines = [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith("bar:")]
    label = recorder.labels[first.key.config_id]
    assert lines == [
        f"retry   {first.key.task} {first.key.shard} [{label}] (attempt 1 failed: RuntimeError: the actor ran out of memory)",
        f"FAILED  {first.key.task} {first.key.shard} [{label}] after 2 attempt(s): RuntimeError: the actor ran out of memory",
        f"skipped {second.key.task} {second.key.shard} [{recorder.labels[second.key.config_id]}]: "
        "HF backend quanto is not installed",
    ]


def test_an_error_another_attempt_would_repeat_fails_at_once(recorder_for, helpers, store_paths):
    from cluster.driver import Attempt

    sweep, recorder, _ = recorder_for(max_attempts=3)
    unit = sweep.todo[0]
    bad = Attempt(unit, 0, number=1, started=0.0, status="error", error="SampleError: bad row", deterministic=True)
    assert recorder.record(bad) == "failed"
    assert recorder.tally.failed == 1
    assert helpers.db_rows(store_paths[0], "SELECT status, attempts FROM units WHERE task = ? AND shard = ? "
                           "AND config_id = ?", unit.key.task, unit.key.shard, unit.key.config_id) == [("failed", 0)]


def test_ray_start_up_notices_are_held_back_unless_the_start_fails(capfd):
    from cluster.driver import ray_notices_hidden

    notice = "[2026-12-03 11:16:43,130 W 7767 7767] gcs_client.cc:210: Failed to get cluster ID\n"
    with ray_notices_hidden():
        os.write(2, notice.encode() + b"something else\n")
    assert capfd.readouterr().err == "something else\n"
    with pytest.raises(ConnectionError), ray_notices_hidden():
        os.write(2, notice.encode())
        raise ConnectionError("could not join")
    assert capfd.readouterr().err == notice  # it may say why
