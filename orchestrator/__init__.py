"""comfysweep: resumable parameter sweeps on RunComfy's Model API.

The public API; the ``comfysweep`` CLI only calls what is exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.canonical import canonical_json, input_sha256, job_key
    from orchestrator.client import (
        CancelOutcome,
        Downloaded,
        ModelApiClient,
        ModelInfo,
        RemoteState,
        Result,
        Status,
        Submitted,
    )
    from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
    from orchestrator.errors import ComfysweepError
    from orchestrator.grid import Job, count_jobs, iter_jobs
    from orchestrator.models import Model, get_model, known_models
    from orchestrator.retry import RetryPolicy
    from orchestrator.runner import RunOptions, RunReport
    from orchestrator.spec import Spec, load_spec
    from orchestrator.store import JobRow, JobState, Store
    from orchestrator.sweep import (
        CancelReport,
        Overrides,
        cancel_sweep,
        refresh_price,
        retry_jobs,
        run_sweep,
        sweep_status,
    )

# Everything loads on first use: `import orchestrator` costs nothing, so `comfysweep` (and `python
# -m orchestrator`) can catch a Ctrl-C from its first line, and `comfysweep plan` never pays for
# the store, the runner and the emulator (PyAV, uvicorn: half a second).
_LAZY = {
    "canonical_json": "orchestrator.canonical",
    "input_sha256": "orchestrator.canonical",
    "job_key": "orchestrator.canonical",
    "CancelOutcome": "orchestrator.client",
    "Downloaded": "orchestrator.client",
    "ModelApiClient": "orchestrator.client",
    "ModelInfo": "orchestrator.client",
    "RemoteState": "orchestrator.client",
    "Result": "orchestrator.client",
    "Status": "orchestrator.client",
    "Submitted": "orchestrator.client",
    "ComfysweepError": "orchestrator.errors",
    "Job": "orchestrator.grid",
    "count_jobs": "orchestrator.grid",
    "iter_jobs": "orchestrator.grid",
    "Model": "orchestrator.models",
    "get_model": "orchestrator.models",
    "known_models": "orchestrator.models",
    "RetryPolicy": "orchestrator.retry",
    "Spec": "orchestrator.spec",
    "load_spec": "orchestrator.spec",
    "Emulator": "orchestrator.emulator",
    "EmulatorConfig": "orchestrator.emulator",
    "FaultProfile": "orchestrator.emulator",
    "RunOptions": "orchestrator.runner",
    "RunReport": "orchestrator.runner",
    "JobRow": "orchestrator.store",
    "JobState": "orchestrator.store",
    "Store": "orchestrator.store",
    "CancelReport": "orchestrator.sweep",
    "Overrides": "orchestrator.sweep",
    "cancel_sweep": "orchestrator.sweep",
    "refresh_price": "orchestrator.sweep",
    "retry_jobs": "orchestrator.sweep",
    "run_sweep": "orchestrator.sweep",
    "sweep_status": "orchestrator.sweep",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CancelOutcome",
    "CancelReport",
    "ComfysweepError",
    "Downloaded",
    "Emulator",
    "EmulatorConfig",
    "FaultProfile",
    "Job",
    "JobRow",
    "JobState",
    "Model",
    "ModelApiClient",
    "ModelInfo",
    "Overrides",
    "RemoteState",
    "Result",
    "RetryPolicy",
    "RunOptions",
    "RunReport",
    "Spec",
    "Status",
    "Store",
    "Submitted",
    "cancel_sweep",
    "canonical_json",
    "count_jobs",
    "get_model",
    "input_sha256",
    "iter_jobs",
    "job_key",
    "known_models",
    "load_spec",
    "refresh_price",
    "retry_jobs",
    "run_sweep",
    "sweep_status",
]
