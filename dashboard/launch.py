"""Start the dashboard: `streamlit run dashboard/app.py ... -- --db URL --blobs URI`.

The CLI (`streamkv dashboard`) calls `launch(...)`; tests use `wait=False` to get the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from store.paths import absolute_store

APP = Path(__file__).resolve().parent / "app.py"


def command(db_url: str, blobs_uri: str, port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The argv that serves the dashboard on host:port, reading db_url / blobs_uri."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(int(port)),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--", "--db", db_url, "--blobs", str(blobs_uri)]


def launch(db_url: str, blobs_uri: str, port: int = 8501, host: str = "127.0.0.1", *,
           wait: bool = True, **popen_kwargs: object) -> subprocess.Popen[bytes] | int:
    """Runs the Streamlit server. With `wait` (the CLI), blocks and returns its exit code;
    otherwise returns the running process (the caller terminates it). Relative store paths are
    the caller's: the server runs in the install folder, so they are made absolute here."""
    db_url, blobs_uri = absolute_store(db_url, str(blobs_uri))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(APP.parents[1]), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(command(db_url, blobs_uri, port, host), env=env,
                            cwd=str(APP.parents[1]), **popen_kwargs)  # type: ignore[arg-type]
    if not wait:
        return proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
