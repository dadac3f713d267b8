"""New jobs that differ from submitted ones only in a schema default the spec leaves unset.

A job key hashes the complete input, defaults filled in. When a shipped schema changes a default,
every job that relied on it gets a new key, and resuming a finished sweep would render (and bill)
it all again. Each sync records the defaults it used in the store (meta ``defaults``); the next
sync compares, and for each new job builds its *twin*, the key it had under the recorded defaults.
A twin already submitted means a render nobody asked for: the sync is refused, rolled back, unless
the user confirms. Nothing is done per job unless a default the spec relies on has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.canonical import canonical_json, job_key
from orchestrator.errors import DefaultsChanged
from orchestrator.spec import Spec
from orchestrator.store import JobLike, JobRow, JobState
from orchestrator.sweepmodels import NAMES, names_meta

__all__ = ["DefaultsDrift", "SeveralDrift", "current_defaults", "recorded"]

META = "defaults"
_MISSING = object()  # a key one side's defaults do not have


def current_defaults(spec: Spec) -> dict[str, Any]:
    """What the store records: the model and its schema defaults, normalised, as this code has;
    with several models, the first's as before and every model's under ``models``."""
    each = {part.model: _defaults(part) for part in spec.each()}
    first = spec.each()[0].model
    out: dict[str, Any] = {"model": first, "values": each[first]}
    if spec.parts:
        out["models"] = each
    names = names_meta([(part.model, part.definition) for part in spec.each()])
    if names:  # the spec's common names, for the report and exports (orchestrator.sweepmodels)
        out[NAMES] = names
    return out


def _defaults(spec: Spec) -> dict[str, Any]:
    model = spec.definition
    return {k: model.normalise(k, v) for k, v in model.defaults().items()}


def recorded(meta: Any, sample: JobRow | None, spec: Spec) -> dict[str, Any] | None:
    """The defaults the store's jobs were made with, if it can tell.

    A store written before defaults were recorded tells by one of its jobs: what that job holds
    under each key the spec now leaves to the schema is what the schema gave it then. A spec of
    several models gets model id -> its recorded defaults, for the models the store tells of.
    """
    if spec.parts:
        found = {part.model: recorded(meta, sample, part) for part in spec.parts}
        return {model: values for model, values in found.items() if values is not None}
    if isinstance(meta, dict) and isinstance(meta.get("models"), dict):
        values = meta["models"].get(spec.model)
        return dict(values) if isinstance(values, dict) else None
    if isinstance(meta, dict) and meta.get("model") == spec.model:
        values = meta.get("values")
        return dict(values) if isinstance(values, dict) else None
    if meta is None and sample is not None and sample.model_id == spec.model:
        return {k: sample.inputs[k] for k in spec.defaulted if k in sample.inputs}
    return None


@dataclass
class SeveralDrift:
    """The sync guard of a spec of several models: each model's own DefaultsDrift, by job."""

    guards: dict[str, DefaultsDrift]

    @property
    def jobs(self) -> int:
        return sum(guard.jobs for guard in self.guards.values())

    def twin(self, job: JobLike) -> str | None:
        guard = self.guards.get(job.model_id)
        return None if guard is None else guard.twin(job)

    def found(self, job: JobLike, state: JobState) -> None:
        self.guards[job.model_id].found(job, state)

    def check(self) -> None:
        for guard in self.guards.values():
            guard.check()


@dataclass
class DefaultsDrift:
    """A sync guard (orchestrator.store.SyncGuard) for one spec whose defaults changed."""

    spec: Spec
    changed: dict[str, tuple[Any, Any]]  # raw key -> (old default, new default); _MISSING: none
    confirm: Callable[[str], bool] | None = None
    jobs: int = 0
    fields: set[str] = field(default_factory=set)

    @classmethod
    def between(
        cls,
        spec: Spec,
        old: Mapping[str, Any] | None,
        confirm: Callable[[str], bool] | None = None,
    ) -> DefaultsDrift | SeveralDrift | None:
        """A guard when a default the spec relies on changed since ``old``; None otherwise.

        A spec of several models: ``old`` is ``recorded``'s model id -> defaults."""
        if old is None:
            return None
        if spec.parts:
            guards = {}
            for part in spec.parts:
                guard = cls.between(part, old.get(part.model), confirm)
                if isinstance(guard, DefaultsDrift):
                    guards[part.model] = guard
            return SeveralDrift(guards) if guards else None
        new = current_defaults(spec)["values"]
        changed = {}
        for key in sorted(set(old) | set(new)):
            if key in spec.fixed and key not in spec.defaulted:
                continue  # the spec sets it: its value is the user's, whatever the schema says
            if any(key in d.keys for d in spec.dimensions):
                continue
            before, after = old.get(key, _MISSING), new.get(key, _MISSING)
            if _text(before) != _text(after):
                changed[key] = (before, after)
        return cls(spec, changed, confirm) if changed else None

    def twin(self, job: JobLike) -> str | None:
        """The key ``job`` had under the old defaults, or None if it sets every changed key."""
        inputs = dict(job.inputs)
        touched = False
        for key, (before, after) in self.changed.items():
            if _text(inputs.get(key, _MISSING)) != _text(after):
                continue  # an include entry set it: not the default's doing
            touched = True
            if before is _MISSING:
                inputs.pop(key, None)
            else:
                inputs[key] = before
        return job_key(job.model_id, inputs, job.repeat) if touched else None

    def found(self, job: JobLike, state: JobState) -> None:
        if state is JobState.PENDING:
            return  # never submitted: rendering the new one instead costs nothing more
        self.jobs += 1
        for key, (_, after) in self.changed.items():
            if _text(job.inputs.get(key, _MISSING)) == _text(after):
                self.fields.add(key)

    def check(self) -> None:
        """Refuse (the sync rolls back) unless nobody would pay again or the user agrees."""
        if not self.jobs:
            return
        model = self.spec.definition
        names = [model.display_name(k) for k in sorted(self.fields)]
        changes = " and ".join(
            f"{name!r} ({_show(self.changed[k][0])} -> {_show(self.changed[k][1])})"
            for name, k in zip(names, sorted(self.fields), strict=True)
        )
        plural = "s" if len(names) > 1 else ""
        summary = (
            f"{self.jobs} job(s) differ from jobs already submitted only in the default{plural} "
            f"of {changes}, which changed in the model's schema"
        )
        if self.confirm is not None and self.confirm(f"{summary}. Render them again (pays again)?"):
            return
        fields = " and ".join(repr(n) for n in names)
        raise DefaultsChanged(
            f"{summary}: run again with --yes to render them again, or set {fields} in the spec"
        )


def _text(value: Any) -> str:
    return "<none>" if value is _MISSING else canonical_json(value)


def _show(value: Any) -> str:
    return "no default" if value is _MISSING else canonical_json(value)
