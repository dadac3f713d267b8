"""comfysweep: resumable parameter sweeps on RunComfy's Model API.

The public API; the ``comfysweep`` CLI only calls what is exported here.
"""

from __future__ import annotations

from orchestrator.canonical import canonical_json, input_sha256, job_key
from orchestrator.errors import ComfysweepError
from orchestrator.models import Model, get_model, known_models

__all__ = [
    "ComfysweepError",
    "Model",
    "canonical_json",
    "get_model",
    "input_sha256",
    "job_key",
    "known_models",
]
