"""The README's main job, end to end, as a new user runs it: the smoke sweep (with a tiny
sample limit) from a fresh directory, then the dashboard on the store it filled."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_smollm2

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, requires_smollm2]


def test_smoke_sweep_then_dashboard(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMKV_DB", "STREAMKV_BLOBS", "RAY_ADDRESS")}
    # The command `make run` runs after setup, with a tiny sample limit, from a fresh folder.
    cmd = [sys.executable, "-m", "cluster.sweep", str(REPO / "sweeps" / "smoke.yaml"),
           "--limit", "1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = tmp_path / "results" / "streamkv.db"
    assert db.exists()
    assert "streamkv dashboard" in proc.stdout  # it says how to look at the results

    from store import create_store_engine
    from store import queries

    url = f"sqlite:///{db}"
    engine = create_store_engine(url)
    sweeps = queries.list_sweeps(engine)
    assert list(sweeps["name"]) == ["smoke"]
    units = queries.unit_status(engine, sweeps["sweep_id"][0])
    assert len(units) == 12 and set(units["status"]) == {"done"}
    results = queries.result_frame(engine, sweeps["sweep_id"][0])
    assert len(results) == 12
    assert results.loc[results["method"] == "none", "kl"].fillna(0).eq(0).all()
    # Windows span several chunks, so the compressed perplexity rows really saw quantized tokens.
    ppl = results[(results["task"] == "wikitext2_ppl") & (results["method"] != "none")]
    assert len(ppl) == 3 and (ppl["kl"] > 0).all()
    # The lm-eval tasks ran offline through the bridge: lm-eval's own metrics are stored.
    metrics = queries.metric_frame(engine, sweeps["sweep_id"][0])
    lm = results[results["task"].str.startswith("lm_eval:")]
    assert len(lm) == 8 and lm["score_ci_low"].notna().all()
    names = set(metrics.loc[metrics["task"].str.startswith("lm_eval:"), "metric"])
    assert {"acc", "acc_norm", "exact_match/strip", "score", "score_ci_low", "score_ci_high"} <= names
    engine.dispose()

    from streamlit.testing.v1 import AppTest

    os.environ["STREAMKV_DB"], os.environ["STREAMKV_BLOBS"] = url, str(tmp_path / "results" / "blobs")
    try:
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    finally:
        del os.environ["STREAMKV_DB"], os.environ["STREAMKV_BLOBS"]
    assert not at.exception
    assert any("smoke" in s.value for s in at.subheader)  # the sweep it ran is shown
    assert not [w for w in at.warning if "failed" in str(w.value)]
