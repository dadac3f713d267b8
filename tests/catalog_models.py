"""Catalog models for tests: entries of RunComfy's catalog (tests/catalog_sample.json) made
Models by ``Model.from_catalog`` and put in the model registry for one test.

The hook is the registry's dict itself (``orchestrator.models._registry()``), patched with
``monkeypatch.setitem`` so each test's models leave with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import models
from orchestrator.models import Model

__all__ = [
    "I2V_SEEDANCE",
    "I2V_WAN",
    "T2V_SEEDANCE",
    "catalog_entry",
    "catalog_ids",
    "use_catalog",
]

I2V_WAN = "wan-ai/wan-3.0/image-to-video"
I2V_SEEDANCE = "bytedance/seedance-2.5/image-to-video/1080p"
T2V_SEEDANCE = "bytedance/seedance-2.5/text-to-video/1080p"
_SAMPLE = Path(__file__).with_name("catalog_sample.json")


def catalog_ids() -> list[str]:
    """Every model id of the sample (the emulator's catalog serves these, and vace-fun)."""
    return [e["model_id"] for e in json.loads(_SAMPLE.read_text(encoding="utf-8"))["models"]]


def catalog_entry(model_id: str) -> dict[str, object]:
    """One model's catalog entry from the sample."""
    for entry in json.loads(_SAMPLE.read_text(encoding="utf-8"))["models"]:
        if entry["model_id"] == model_id:
            return dict(entry)
    raise KeyError(model_id)


def use_catalog(monkeypatch: pytest.MonkeyPatch, *model_ids: str) -> list[Model]:
    """Register these catalog models for the test (unless the registry knows them already)."""
    registry = models._registry()
    out = []
    for model_id in model_ids:
        model = registry.get(model_id) or Model.from_catalog(catalog_entry(model_id))
        monkeypatch.setitem(registry, model_id, model)
        out.append(model)
    return out
