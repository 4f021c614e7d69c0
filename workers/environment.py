"""What a result needs to be reproduced: model, data, code and library versions, device.

`environment(...)` returns the dict stored in `UnitResult.environment`:
model_name, model_id, weights_sha256, dataset_sha256 (+ dataset_hash_of: what was hashed),
git_commit ("unknown" outside a git checkout or before the first commit) and git_dirty,
versions {python, torch, transformers, streamkv, optimum-quanto, hqq, rouge, fuzzywuzzy,
rapidfuzz}, python, seed, device
(e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"), dtype, hostname, plus whatever the runner
adds (task_version of a generation task, peak-memory source, calibration file).
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=4)
def git_state(root: str = str(REPO_ROOT)) -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout at `root`; ("unknown", None) without git or commits."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    try:
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return commit, dirty


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    import transformers

    import streamkv

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "streamkv": streamkv.__version__,
            # The peers' backends and the official metrics' packages: scores depend on them.
            **{dist: _version(dist) for dist in ("optimum-quanto", "hqq", "rouge", "fuzzywuzzy", "rapidfuzz")}}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def environment(loaded, *, model_name: str, dataset_sha256: str, dataset_hash_of: str,
                seed: int) -> dict[str, Any]:
    commit, dirty = git_state()
    model = loaded.model
    return {
        "model_name": model_name,
        "model_id": loaded.model_id,
        "weights_sha256": loaded.weights_sha256,
        "dataset_sha256": dataset_sha256,
        "dataset_hash_of": dataset_hash_of,
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": dict(versions()),
        "python": platform.python_version(),
        "seed": seed,
        "device": device_name(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "hostname": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
    }


__all__ = ["REPO_ROOT", "device_name", "environment", "git_state", "versions"]
