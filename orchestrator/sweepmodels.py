"""The models of a sweep as its store knows them, for the views that read the store, not the
spec (report, export): each model's names as the spec gave them (its ``map``: the common names),
and the ``model`` pseudo-input that tells the jobs of a sweep of several models apart.

A sync records each model's names in the store (orchestrator.drift's meta, under ``names``),
so a report shows ``image`` for one model's ``image_url`` and another's ``image`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from orchestrator.models import Model, get_model
from orchestrator.naming import MODEL_FIELD, model_labels
from orchestrator.store import JobRow, Store

__all__ = ["StoreModels", "names_meta", "with_model"]

META = "defaults"  # orchestrator.drift.META: the sync's record of each model
NAMES = "names"


def names_meta(parts: Sequence[tuple[str, Model]]) -> dict[str, dict[str, str]]:
    """What a sync records: model id -> its friendly names, for the models whose spec names
    differ from the registry's (a ``map``)."""
    out = {}
    for model_id, model in parts:
        if dict(model.friendly_names) != dict(get_model(model_id).friendly_names):
            out[model_id] = dict(model.friendly_names)
    return out


class StoreModels:
    """Model id -> its Model with the names the spec gave it (as the store recorded them)."""

    def __init__(self, store: Store) -> None:
        meta = store.get_meta(META)
        names = meta.get(NAMES) if isinstance(meta, dict) else None
        self.names: Mapping[str, Any] = names if isinstance(names, dict) else {}
        self._models: dict[str, Model] = {}

    def model(self, model_id: str) -> Model:
        found = self._models.get(model_id)
        if found is None:
            found = get_model(model_id)
            given = self.names.get(model_id)
            if isinstance(given, dict) and all(isinstance(v, str) for v in given.values()):
                found = replace(found, friendly_names=dict(found.friendly_names) | given)
            self._models[model_id] = found
        return found


def with_model(rows: Sequence[JobRow], named: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job's shown inputs led by ``model`` (its model's short label) when the jobs are of
    several models; unchanged otherwise (one model is no axis)."""
    ids = list(dict.fromkeys(row.model_id for row in rows))
    if len(ids) < 2:
        return named
    labels = dict(zip(ids, model_labels(ids), strict=True))
    return [{MODEL_FIELD: labels[r.model_id]} | n for r, n in zip(rows, named, strict=True)]
