"""What a sweep prints and records for one finished attempt, without Ray."""

from __future__ import annotations

import io

import pytest

from cluster.progress import SweepProgress, first_line, unit_line


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
    error = "ValueError: bad row\n\ndetails"
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
        f"retry   {first.key.task} {first.key.shard} [{label}] (attempt 1 failed: ValueError: bad row)",
        f"FAILED  {first.key.task} {first.key.shard} [{label}] after 2 attempt(s): ValueError: bad row",
        f"skipped {second.key.task} {second.key.shard} [{recorder.labels[second.key.config_id]}]: "
        "HF backend quanto is not installed",
    ]
