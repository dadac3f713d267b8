"""What the report shows: a sweep's jobs as cells on axes, read from the store and the disk.

The axes are the inputs whose value differs between jobs (by friendly name), the largest first;
every job is one cell holding its inputs as indexes into its axes' values, its state, its output
(a video, an image or an audio file, by a path relative to the page), that output's kind and
its poster. A ``done`` job whose file is gone is "missing".
The page (orchestrator/report/page.py) and the mosaic video both draw from this one view.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from orchestrator import objects
from orchestrator.conditioning import INPUTS_DIR, decode_data_uri
from orchestrator.errors import ComfysweepError
from orchestrator.models import get_model
from orchestrator.report.posters import Posters
from orchestrator.responses import error_message
from orchestrator.store import JobRow, JobState, Store
from orchestrator.sweepmodels import StoreModels, with_model
from orchestrator.verify import kind_of_extension

__all__ = ["Axis", "Cell", "ReportError", "View", "add_posters", "build_view", "choose_axes"]

TOP_ERRORS = 5
HISTOGRAM_BINS = 12
REPEAT = "repeat"  # a pseudo-input: jobs that differ only by their repeat number


class ReportError(ComfysweepError):
    """The report cannot be made as asked (an axis that does not vary, no jobs)."""


@dataclass(frozen=True)
class Axis:
    """An input that varies across the jobs, and its values in display order."""

    name: str
    values: list[Any]
    labels: list[str]


@dataclass
class Cell:
    """One job as the report shows it."""

    key: str
    state: str
    at: list[int]  # per axis, the index of this job's value
    inputs: dict[str, Any]
    video: str | None  # relative to the page, URL-quoted
    poster: str | None
    path: str | None  # the output's path in the results folder (not quoted)
    error: str | None
    rating: str | None
    seconds: float | None
    orphaned: bool = False  # no longer in the spec: kept, never submitted again
    kind: str | None = None  # the output's: "video", "image" or "audio" (None: none on disk)


@dataclass
class View:
    """A sweep's report: its axes, fixed inputs, cells and summary figures."""

    name: str
    axes: list[Axis]
    fixed: dict[str, Any]
    cells: list[Cell]
    counts: dict[str, int]
    ledger: dict[str, float | None]
    errors: list[tuple[str, int]]
    durations: list[float]
    x: str | None = None
    y: str | None = None
    z: str | None = None
    filters: dict[str, str] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)  # every job's output paths, on disk or not

    def axis(self, name: str) -> Axis:
        return next(a for a in self.axes if a.name == name)

    def varying(self) -> list[str]:
        return [a.name for a in self.axes]

    def histogram(self, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
        """Durations (seconds) in ``bins`` equal bins from 0 to the longest."""
        if not self.durations:
            return {"max": 0.0, "bins": []}
        top = max(self.durations) or 1.0
        counts = [0] * bins
        for d in self.durations:
            counts[min(bins - 1, int(d / top * bins))] += 1
        return {"max": top, "bins": counts}

    def to_json(self) -> dict[str, Any]:
        """The page's data: compact (a cell's inputs as indexes into its axes' labels)."""
        return {
            "name": self.name,
            "axes": [{"name": a.name, "labels": a.labels} for a in self.axes],
            "fixed": {k: _label(v) for k, v in self.fixed.items()},
            "cells": [
                {
                    "k": c.key,
                    "s": c.state,
                    "v": c.at,
                    "f": c.video,
                    "p": c.poster,
                    "e": c.error,
                    "r": c.rating,
                    "o": c.orphaned,
                    "m": c.kind,
                }
                for c in self.cells
            ],
            "x": self.x,
            "y": self.y,
            "z": self.z,
            "filters": {k: v for k, v in self.filters.items() if k != self.z},
            "tab": self.filters.get(self.z) if self.z else None,
            "summary": {
                "counts": {s: n for s, n in self.counts.items() if n},
                "ledger": self.ledger,
                "errors": self.errors,
                "histogram": self.histogram(),
            },
        }


def build_view(
    store: Store,
    results: Path,
    *,
    page_dir: Path | None = None,
    name: str | None = None,
) -> View:
    """The report of ``store``'s jobs; files are looked up in ``results`` and linked relative to
    ``page_dir`` (default: ``results``). Posters come after, from add_posters()."""
    page_dir = page_dir or results
    rows = list(store.jobs())
    if not rows:
        raise ReportError(f"store {store.name} has no jobs yet: `comfysweep run SPEC` makes them")
    ratings = store.ratings()
    models = StoreModels(store)
    named = with_model(rows, [_shown(row, models) for row in rows])
    axes, fixed = _axes(named)
    index = {a.name: {_canon(v): i for i, v in enumerate(a.values)} for a in axes}
    cells = []
    durations = []
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for row, inputs in zip(rows, named, strict=True):
        cell = _cell(row, inputs, results, page_dir)
        cell.at = [index[a.name][_canon(inputs.get(a.name))] for a in axes]
        cell.rating = ratings.get(row.key)
        cells.append(cell)
        counts[cell.state] += 1
        if cell.error is not None and cell.state != "done":
            errors[cell.error] += 1
        if cell.seconds is not None:
            durations.append(cell.seconds)
    ledger = store.ledger()
    return View(
        name=name or results.name,
        axes=axes,
        fixed=fixed,
        cells=cells,
        counts=dict(counts),
        ledger={
            "spent": _usd(ledger.spent_usd),
            "reserved": _usd(ledger.reserved_usd),
            "cap": _usd(ledger.cap_usd),
        },
        errors=errors.most_common(TOP_ERRORS),
        durations=durations,
        outputs={str(o["path"]) for row in rows for o in row.outputs if o.get("path")},
    )


def choose_axes(
    view: View,
    x: str | None = None,
    y: str | None = None,
    z: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> View:
    """Set the view's X/Y/Z (the named ones, the rest the largest remaining axes) and filters.

    Raises ReportError for a name that does not vary (naming those that do) or one on two axes.
    """
    varying = view.varying()
    asked = {"--x": x, "--y": y, "--z": z}
    for flag, name in asked.items():
        if name is not None and name not in varying:
            raise ReportError(f"{flag} {name!r}: {_not_varying(name, view)}")
    named = [n for n in asked.values() if n is not None]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice is not None:
        raise ReportError(f"{twice!r} is given for two axes; each axis needs its own input")
    picked = list(named)
    for axis, given in (("x", x), ("y", y), ("z", z)):
        if given is None:  # the largest input left that the axes chosen do not already decide
            given = next((n for n in varying if n not in picked and _free(view, picked, n)), None)
            picked += [given] if given is not None else []
        setattr(view, axis, given)
    view.filters = {}
    for name, value in (filters or {}).items():
        if name not in varying:
            raise ReportError(f"--filter {name}: {_not_varying(name, view)}")
        labels = view.axis(name).labels
        value = _same_number(value, labels)
        if value not in labels:
            raise ReportError(
                f"--filter {name}={value}: no job has that value (it has {', '.join(labels)})"
            )
        view.filters[name] = value
    return view


def _free(view: View, picked: list[str], name: str) -> bool:
    """Whether ``name`` takes more than one value for some values of the ``picked`` axes: a
    model's own fixed ``duration`` in a sweep of several models is decided by ``model`` (as Z,
    each of its tabs would show one model alone)."""
    if not picked:
        return True
    where = [i for i, a in enumerate(view.axes) if a.name in picked]
    at = next(i for i, a in enumerate(view.axes) if a.name == name)
    seen: dict[tuple[int, ...], int] = {}
    return any(
        seen.setdefault(tuple(c.at[i] for i in where), c.at[at]) != c.at[at] for c in view.cells
    )


def _same_number(value: str, labels: Sequence[str]) -> str:
    """The one label that is ``value`` as a number (``5`` for ``5.0``, as a spec may write it),
    else ``value`` itself."""
    try:
        number = float(value)
    except ValueError:
        return value
    same = [label for label in labels if _as_float(label) == number]
    return same[0] if value not in labels and len(same) == 1 else value


def _as_float(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _not_varying(name: str, view: View) -> str:
    varying = view.varying()
    what = "no such input" if name not in view.fixed else "this input does not vary"
    if not varying:
        return f"{what}; no input varies in this sweep"
    return f"{what}; the inputs that vary: {', '.join(varying)}"


def _shown(row: JobRow, models: StoreModels | None = None) -> dict[str, Any]:
    """A job's inputs as a person reads them (Model.shown_inputs, by the spec's names): a local
    file by the name the spec gave it, another data: URI by its file under inputs/ (as the
    manifest names it); and its repeat."""
    inputs = _media_files(row.inputs)
    model = models.model(row.model_id) if models is not None else get_model(row.model_id)
    return model.shown_inputs(inputs, row.sources) | {REPEAT: row.repeat}


def _media_files(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` with each data: URI as the path of its file under ``inputs/`` (not written)."""
    out = dict(inputs)
    for key, value in inputs.items():
        if isinstance(value, list):  # a list input: each item's file
            out[key] = [_media_file(item) for item in value]
        else:
            out[key] = _media_file(value)
    return out


def _media_file(value: Any) -> Any:
    media = decode_data_uri(value)
    return value if media is None else f"{INPUTS_DIR}/{media.file_name}"


def _axes(named: Sequence[Mapping[str, Any]]) -> tuple[list[Axis], dict[str, Any]]:
    """The inputs that vary (largest first, ties in input order) and those that do not."""
    values: dict[str, dict[str, Any]] = {}
    for inputs in named:
        for k, v in inputs.items():
            values.setdefault(k, {}).setdefault(_canon(v), v)
    for inputs in named:  # an input only some jobs have varies: absent is a value too
        for k in values:
            if k not in inputs:
                values[k].setdefault(_canon(None), None)
    axes = []
    fixed = {}
    for k, seen in values.items():
        if len(seen) < 2:
            fixed[k] = next(iter(seen.values()))
            continue
        ordered = _ordered(list(seen.values()))
        axes.append(Axis(k, ordered, _distinct_labels(ordered)))
    axes.sort(key=lambda a: -len(a.values))  # stable: ties keep the inputs' order
    return axes, fixed


def _distinct_labels(values: list[Any]) -> list[str]:
    """Each value's label, told apart where two values share one (two LoRAs of one file stem
    from two URLs): the page, tabs and ``--filter`` find a value by its label, so a shared one
    hid the second value's cells. The clash gets a short hash of the value added."""
    labels = [_label(v) for v in values]
    counts = Counter(labels)
    if all(n == 1 for n in counts.values()):
        return labels
    out = []
    for value, text in zip(values, labels, strict=True):
        digest = hashlib.sha256(_canon(value).encode()).hexdigest()[:6]
        out.append(text if counts[text] == 1 else f"{text} #{digest}")
    return out


def _ordered(values: list[Any]) -> list[Any]:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return sorted(values) if numbers else values


def add_posters(view: View, results: Path, page_dir: Path, posters: Posters) -> None:
    """Give every cell with an output its poster (made now, or reused from the cache): a
    video's first frame, an image scaled down, an audio file's waveform."""
    with_video = [cell for cell in view.cells if cell.path is not None]
    made = posters.posters([results / str(cell.path) for cell in with_video])
    for cell, poster in zip(with_video, made, strict=True):
        cell.poster = None if poster is None else _relative(poster, page_dir)


def _cell(row: JobRow, inputs: dict[str, Any], results: Path, page_dir: Path) -> Cell:
    state = str(row.state)
    video = path = kind = None
    output = _main_output(row.outputs)
    if row.state is JobState.DONE:
        if output is None or not _on_disk(results, output):
            state = "missing"
        else:
            path = str(output["path"])
            file = results / path
            video = _relative(file, page_dir)
            kind = kind_of_extension(file.suffix) or "video"
    error = None
    if state == "missing":
        error = "the output file is not on disk (run again to download it)"
    elif row.error is not None:
        text = " ".join((error_message(row.error) or "an error without a message").split())
        error = text if len(text) <= 200 else text[:199] + "…"
    return Cell(
        key=row.key,
        state=state,
        at=[],
        inputs=inputs,
        video=video,
        poster=None,
        path=path,
        error=error,
        rating=None,
        seconds=_seconds(row),
        orphaned=not row.in_spec,
        kind=kind,
    )


def _main_output(outputs: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The output a cell shows: the first video, else the first image or audio file, else the
    first of any kind."""
    outputs = list(outputs)
    for kinds in (("video",), ("image", "audio")):
        for output in outputs:
            if kind_of_extension(PurePosixPath(str(output.get("path", ""))).suffix) in kinds:
                return output
    return outputs[0] if outputs else None


def _on_disk(results: Path, output: Mapping[str, Any]) -> bool:
    try:
        file = results / str(output.get("path", ""))
        return file.is_file() and file.stat().st_size == output.get("size")
    except OSError:
        return False


def _usd(value: float | None) -> float | None:
    """Dollars without the running totals' float residue (-1e-16 reserved shows as -0.00)."""
    return None if value is None else round(value, 9) + 0.0


def _seconds(row: JobRow) -> float | None:
    start = row.started_at or row.submitted_at
    if start is None or row.finished_at is None:
        return None
    return max(0.0, (row.finished_at - start).total_seconds())


def _relative(file: Path, page_dir: Path) -> str:
    rel = os.path.relpath(file, page_dir)
    return quote(rel.replace(os.sep, "/"))


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return objects.label(value)  # a LoRA: my-style@0.5

    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)  # a list input: its files as the spec names them
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False)
