"""Store locations made absolute against the caller's working directory.

A relative SQLite path or blob folder means "relative to where I typed the command"; processes
that run elsewhere (Ray actors, the dashboard's Streamlit server, which runs in the install
folder) must get the absolute one, or they open another file and their errors name the wrong
place.
"""

from __future__ import annotations

from pathlib import Path


def absolute_store(url: str, blobs: str, cwd: str | Path | None = None) -> tuple[str, str]:
    """(url, blobs) with a relative SQLite file and a local blob folder resolved against `cwd`
    (default: this process's working directory); other URLs and URIs unchanged."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        if rel and rel != ":memory:" and not rel.startswith("file:"):
            url = "sqlite:///" + str((base / rel).resolve())
    if "://" not in str(blobs):
        blobs = str((base / blobs).resolve())
    return url, str(blobs)


__all__ = ["absolute_store"]
