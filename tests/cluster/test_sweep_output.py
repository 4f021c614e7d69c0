"""`python -m cluster.sweep` on the tiny spec as a user runs it (a local Ray, in a private
network namespace where the machine permits one): what it prints is our output only, and every
Ray listener is on loopback. One run, then the same command with --verbose (which resumes it).
(This run is also the isolation check: one tiny run of the CLI serves both.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from cluster import isolation
from cluster.progress import QUIET_ENV

pytestmark = pytest.mark.slow

# Third-party output a tiny run printed before it was hidden (or would, on a first model load):
# Ray's start-up notices, transformers' tokenizer warning in each actor, tqdm redraws.
NOISE = ("Converting and de-quantizing", "UserWarning", "clean_up_tokenization_spaces",
         "Token authentication is enabled", "network_util.cc", "\r")


def _sweep(helpers, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (*QUIET_ENV, "RAY_ADDRESS", "STREAMKV_DB", "STREAMKV_BLOBS", isolation.MARKER)}
    cmd = [sys.executable, "-m", "cluster.sweep", str(helpers.TINY), "--limit", "1",
           "--db", f"sqlite:///{tmp_path / 'out.db'}", "--blobs", str(tmp_path / "blobs"), *flags]
    proc = subprocess.run(cmd, cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _check_isolation(proc: subprocess.CompletedProcess) -> None:
    if isolation.available():
        assert "private network namespace" in proc.stdout
        assert "network interfaces in this run: lo\n" in proc.stdout
    else:
        assert "cannot create a network namespace here" in proc.stderr


def test_local_sweep_prints_unit_lines_one_bar_and_the_results_table(tmp_path, helpers):
    from cluster.plan import plan
    from cluster.spec import load_spec

    proc = _sweep(helpers, tmp_path)
    out = proc.stdout + proc.stderr
    assert [n for n in NOISE if n in out] == [], out[-4000:]
    _check_isolation(proc)

    spec = load_spec(helpers.TINY)
    labels = [c.label for c in spec.configs]
    tasks = [d.task for d in spec.datasets]
    lines = proc.stdout.splitlines()
    unit_line = re.compile(r"^done    (\S+) (\d+/\d+) \[(.+)\] \d+\.\ds$")
    finished = [m.groups() for m in map(unit_line.match, lines) if m]
    assert sorted(finished) == sorted((t, f"{i}/2", label) for t in tasks for i in range(2) for label in labels)
    bars = [line for line in lines if re.match(r"^tiny-\w+: +\d+%\|", line)]
    assert bars and "8/8" in bars[-1] and "failed=0" in bars[-1]  # one bar; its last line: all done

    rows = helpers.table_rows(proc.stdout)
    assert sorted(rows) == sorted(labels)
    methods = {u.key.config_id: u.method for u in plan(spec)}
    none_row = rows[next(c.label for c in spec.configs if methods[c.config_id] == "none")]
    compressed = rows[next(c.label for c in spec.configs if methods[c.config_id] != "none")]
    for cells in (none_row, compressed):  # one cell per task, then kl and ratio
        assert len(cells) == len(tasks) + 2 and "-" not in cells
    ppl = tasks.index("wikitext2_ppl")
    assert float(none_row[ppl]) > 1 and none_row[-1] == "1.00x"  # a perplexity; no compression
    assert float(compressed[-1].rstrip("x")) > 2  # the measured ratio of the compressed config
    assert proc.stdout.index("task cells") < proc.stdout.index("8 succeeded, 0 failed") < \
        proc.stdout.index("streamkv dashboard --db")

    # --verbose: the sweep is done, so the run resumes it and reports (Ray is not started, hence
    # --no-isolate: one process less). run_sweep's verbose path, the default of the Python API,
    # runs units in test_driver.py; test_progress.py checks --verbose is passed into the namespace.
    again = _sweep(helpers, tmp_path, "--verbose", "--no-isolate")
    assert "0 succeeded, 0 failed, 8 skipped (8 already done) of 8" in again.stdout
    assert helpers.table_rows(again.stdout) == rows
