"""`UnitWorker`: one loaded model that runs work units; the cluster wraps it in `ray.remote`.

Plain Python (Ray is not imported here): `UnitWorker(model_name, dtype, device)` loads the
model once; `run(unit)` evaluates a `WorkUnit` on it and returns a `store.UnitResult`;
`info()` describes the worker (model, device, versions, HF baselines available here).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from workers.runner import ProgressFn, run_unit
from workers.units import WorkUnit

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; allowed: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    """None/"auto": cuda when available, else cpu."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here")
    return str(device)


class UnitWorker:
    def __init__(self, model_name: str, dtype: str | torch.dtype = "float32", device: str | None = None,
                 *, loaded=None):
        """Loads `model_name` (`streamkv.loading.load_model`); `loaded` skips loading (tests)."""
        from streamkv.loading import load_model

        self.model_name = model_name
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        if loaded is None:
            loaded = load_model(model_name, dtype=self.dtype,
                                device=self.device if self.device != "cpu" else None)
        self.loaded = loaded
        self.units_run = 0

    def run(self, unit: WorkUnit, progress: ProgressFn | None = None):
        if unit.model != self.model_name:
            raise ValueError(f"this worker holds model {self.model_name!r}; the unit asks for {unit.model!r}")
        result = run_unit(self.loaded, unit, progress=progress)
        self.units_run += 1
        return result

    def info(self) -> dict[str, Any]:
        from workers.environment import device_name, git_state, versions
        from workers.hf_baselines import available_hf_baselines

        model = self.loaded.model
        return {
            "model_name": self.model_name,
            "model_id": self.loaded.model_id,
            "weights_sha256": self.loaded.weights_sha256,
            "load_seconds": self.loaded.load_seconds,
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": device_name(model.device),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "git_commit": git_state()[0],
            "versions": dict(versions()),
            "hf_baselines": {name: status._asdict() for name, status in available_hf_baselines().items()},
            "units_run": self.units_run,
        }


__all__ = ["UnitWorker", "resolve_device", "resolve_dtype"]
