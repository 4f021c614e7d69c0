"""End to end: serve the dashboard with dashboard.launch and load it in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SWEEP_NAME

from dashboard.launch import launch

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                        else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install "
                                                "chromium); Playwright browsers are not downloaded"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dashboard at {url} not healthy after {timeout_s}s")


@pytest.fixture
def server(demo_store, tmp_path):
    port = free_port()
    with open(tmp_path / "streamlit.log", "wb") as log:
        proc = launch(demo_store["db_url"], demo_store["blobs_uri"], port=port, wait=False,
                      stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_dashboard_in_chromium(server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{server}/?task=qa&task=summary", wait_until="domcontentloaded")
            page.wait_for_selector(".vega-embed", timeout=60_000)
            page.wait_for_selector(".vega-embed canvas, .vega-embed svg", timeout=30_000)
            page.wait_for_timeout(1500)  # let the chart draw its marks
            body = page.inner_text("body")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("STREAMKV_SCREENSHOT_DIR"):
                out = Path(os.environ["STREAMKV_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / "dashboard.png")
        finally:
            browser.close()
    assert SWEEP_NAME in body
    assert "Quality vs memory" in body and "Traceback" not in body
    assert shot.stat().st_size > 10_000


def test_niah_heatmap_in_chromium(server, tmp_path) -> None:
    """The RULER / NIAH tab of the demo RULER sweep: the heatmaps draw, and a screenshot of
    them is kept (tmp_path, and $STREAMKV_SCREENSHOT_DIR/niah_heatmap.png when set)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{server}/?sweep=sw-ruler", wait_until="domcontentloaded")
            page.get_by_role("tab", name="RULER / NIAH").click(timeout=60_000)
            panel = page.locator("[role=tabpanel]:visible")
            panel.locator(".vega-embed canvas, .vega-embed svg").first.wait_for(timeout=60_000)
            panel.get_by_text("RULER table").wait_for(timeout=60_000)  # the page's last element
            page.wait_for_timeout(1500)  # let the chart draw its marks
            body = panel.inner_text()
            shot = tmp_path / "niah_heatmap.png"
            panel.screenshot(path=str(shot))
            if os.environ.get("STREAMKV_SCREENSHOT_DIR"):
                out = Path(os.environ["STREAMKV_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / "niah_heatmap.png")
        finally:
            browser.close()
    assert "ruler_niah_single_1" in body and "RULER table" in body and "Traceback" not in body
    assert shot.stat().st_size > 10_000
