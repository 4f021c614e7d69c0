"""dashboard/app.py under Streamlit's AppTest (store given through STREAMKV_DB / _BLOBS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAIL_TEXT, SWEEP_NAME, TOY_SWEEP_ID
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def run_app(monkeypatch: pytest.MonkeyPatch, store: dict, **query: str) -> AppTest:
    monkeypatch.setenv("STREAMKV_DB", store["db_url"])
    monkeypatch.setenv("STREAMKV_BLOBS", store["blobs_uri"])
    at = AppTest.from_file(APP, default_timeout=60)
    for k, val in query.items():
        at.query_params[k] = val
    return at.run()


def frame_with(at: AppTest, column: str):
    """The first dataframe shown that has `column` (AppTest does not expose dataframe keys)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_all_views_render(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store)
    assert not at.exception
    assert any(SWEEP_NAME in s.value for s in at.subheader)
    assert [t.label for t in at.tabs] == ["Quality vs memory", "Ablation", "Outlier traces",
                                          "Sweep health"]
    assert metric(at, "Units done") == "20" and metric(at, "Configs shown") == "5"
    assert len(at.dataframe) >= 3  # quality points, ablation table, failures
    assert not at.error


def test_filter_changes_numbers_and_url(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store)
    before = metric(at, "Mean score (selection)")
    ablation = frame_with(at, "avg delta")
    at.multiselect(key="f_task").set_value(["qa"]).run()
    assert not at.exception
    after = metric(at, "Mean score (selection)")
    assert (before, after) == ("0.6290", "0.7240")
    assert "summary score" in ablation.columns
    assert "summary score" not in frame_with(at, "avg delta").columns
    assert at.query_params["task"] in ("qa", ["qa"])  # AppTest keeps the last value
    at.multiselect(key="f_method").set_value(["streamkv"]).run()
    assert metric(at, "Configs shown") == "4"
    # deltas still refer to the sweep's baseline even when 'none' is filtered out
    assert frame_with(at, "avg delta")["avg delta"].notna().all()


def test_query_params_preselect(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store, task="summary", axis="sink_protection")
    assert not at.exception
    assert at.multiselect(key="f_task").value == ["summary"]
    assert metric(at, "Mean score (selection)") == "0.5340"
    assert frame_with(at, "avg delta").columns[1] == "sink_protection"


def test_a_field_of_an_unknown_method_is_a_filter_kept_in_the_url(monkeypatch,
                                                                  demo_store) -> None:
    at = run_app(monkeypatch, demo_store, sweep=TOY_SWEEP_ID)
    assert not at.exception
    toy = at.multiselect(key="f_toy_scale")
    assert toy.label == "Toy scale" and toy.options == ["0.5", "1.0", "2.0", "—"]
    assert metric(at, "Mean score (selection)") == "0.5125"  # all 4 configs x 2 tasks
    toy.set_value([2.0]).run()
    assert not at.exception
    assert metric(at, "Mean score (selection)") == "0.6500"  # (0.70 + 0.60) / 2
    assert metric(at, "Configs shown") == "1"
    assert at.query_params["toy_scale"] in ("2.0", ["2.0"])
    assert frame_with(at, "avg delta")["avg delta"].tolist() == pytest.approx([-0.05])
    # The URL brings the selection back, and the field is an ablation axis.
    again = run_app(monkeypatch, demo_store, sweep=TOY_SWEEP_ID, toy_scale="0.5",
                    axis="toy_scale")
    assert again.multiselect(key="f_toy_scale").value == [0.5]
    assert metric(again, "Mean score (selection)") == "0.2500"
    assert frame_with(again, "avg delta").columns[1] == "toy_scale"


def test_failures_show_error_text(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store)
    assert any("failed" in w.value for w in at.warning)
    assert any(FAIL_TEXT in c.value for c in at.code)
    assert FAIL_TEXT in " ".join(frame_with(at, "error")["error"])


def test_sweep_without_results(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store, sweep="sw-empty")
    assert not at.exception
    assert any("no finished units" in i.value for i in at.info)


def test_empty_store_info(monkeypatch, empty_store) -> None:
    at = run_app(monkeypatch, empty_store)
    assert not at.exception
    assert any("no sweeps" in i.value for i in at.info)


def test_missing_database_shows_store_error(monkeypatch, tmp_path) -> None:
    store = {"db_url": f"sqlite:///{tmp_path / 'nowhere' / 'missing.db'}",
             "blobs_uri": str(tmp_path / "blobs")}
    at = run_app(monkeypatch, store)
    assert not at.exception
    assert any("cannot connect to the results database" in e.value for e in at.error)
    assert not (tmp_path / "nowhere" / "missing.db").exists()  # read-only: never created


def test_ruler_tab_heatmap_and_table(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store, sweep=demo_store["ruler_sweep_id"])
    assert not at.exception and not at.error
    assert [t.label for t in at.tabs][-1] == "RULER / NIAH"
    grid = frame_with(at, "depth")
    assert len(grid) == 18 and grid["score_delta"].min() == -80.0
    table = frame_with(at, "vt")
    assert set(table["config"]) == {"none", "streamkv-4", "streamkv-2"}
    at.selectbox(key="sel_niah_show").set_value("difference vs none").run()
    assert not at.exception
    assert at.query_params["niah_show"] in ("difference vs none", ["difference vs none"])


def test_no_ruler_tab_without_ruler_cells(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store)
    assert "RULER / NIAH" not in [t.label for t in at.tabs]


def test_error_bars_and_not_distinguishable_note(monkeypatch, demo_store) -> None:
    at = run_app(monkeypatch, demo_store, sweep=TOY_SWEEP_ID)
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Select one task to see each score's 95 % interval" in captions
    assert "qa: Not distinguishable (95 % intervals overlap): " in captions  # the per-task chart
    at.multiselect(key="f_task").set_value(["qa"]).run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Error bars: 95 % bootstrap intervals over samples." in captions
    note = next(c.value for c in at.caption if c.value.startswith("Not distinguishable"))
    assert note.count(" vs ") == 1 and "none" in note and "toy" in note
    assert {"95% low", "95% high", "n"} <= set(frame_with(at, "95% low").columns)
