"""Canonical JSON and the job key: the encoding that names every job, fixed for good.

Canonical JSON is ``json.dumps`` with sorted keys, no spaces, UTF-8 text (not ``\\u`` escapes) and
no NaN. Values are normalised by the model's schema *before* encoding (a float field's ``4``
becomes ``4.0``), so equal inputs always encode to equal bytes. Changing anything here changes
every job key, which would make every existing store resubmit its jobs: don't.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "input_sha256", "job_key"]


# What json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
# allow_nan=False) builds at each call, built once: the same bytes, without a new encoder per job.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text."""
    return _ENCODER.encode(value)


def input_sha256(inputs: Mapping[str, Any]) -> str:
    """The sha256 (hex) of an input object's canonical JSON, as the emulator's ledger keys it."""
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def job_key(model_id: str, inputs: Mapping[str, Any], repeat: int = 0) -> str:
    """The job's identity: sha256 of the model id and its complete, normalised input.

    ``repeat`` tells apart the copies that a spec's ``repeat: N`` asks for; copy 0 has the key of
    the bare input, so raising ``repeat`` later reuses the jobs that already ran.
    """
    # canonical_json({"input": inputs, "model": model_id, "repeat": repeat}) (repeat only when
    # not 0), its keys in their sorted order, written out without a dict built per job.
    text = f'{{"input":{_ENCODER.encode(inputs)},"model":{_ENCODER.encode(model_id)}'
    text += f',"repeat":{_ENCODER.encode(repeat)}}}' if repeat else "}"
    return hashlib.sha256(text.encode()).hexdigest()
