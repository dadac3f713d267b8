"""comfysweep: resumable parameter sweeps on RunComfy's Model API.

The public API; the ``comfysweep`` CLI only calls what is exported here.
"""

from __future__ import annotations

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
from orchestrator.errors import ComfysweepError
from orchestrator.grid import Job, count_jobs, iter_jobs
from orchestrator.models import Model, get_model, known_models
from orchestrator.retry import RetryPolicy
from orchestrator.spec import Spec, load_spec

__all__ = [
    "CancelOutcome",
    "ComfysweepError",
    "Downloaded",
    "Job",
    "Model",
    "ModelApiClient",
    "ModelInfo",
    "RemoteState",
    "Result",
    "RetryPolicy",
    "Spec",
    "Status",
    "Submitted",
    "canonical_json",
    "count_jobs",
    "get_model",
    "input_sha256",
    "iter_jobs",
    "job_key",
    "known_models",
    "load_spec",
]
