"""`comfysweep report`: the sweep's view written as report.html, or as one mosaic MP4."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.conditioning import INPUTS_DIR
from orchestrator.locate import Located
from orchestrator.report.page import write_page
from orchestrator.report.posters import ASSETS, Posters
from orchestrator.report.view import (
    Cell,
    ReportError,
    View,
    add_posters,
    build_view,
    choose_axes,
)
from orchestrator.results import PARTIAL
from orchestrator.store import Store

__all__ = [
    "DEFAULT_AXES",
    "Axes",
    "Written",
    "load_view",
    "results_of",
    "write_report",
    "write_video",
]

REPORT = "report.html"
VIDEO = "report.mp4"


@dataclass(frozen=True)
class Axes:
    """The view asked for: inputs on X, Y and Z (None: chosen), and filters (input -> value)."""

    x: str | None = None
    y: str | None = None
    z: str | None = None
    filters: Mapping[str, str] | None = None


DEFAULT_AXES = Axes()


@dataclass(frozen=True)
class Written:
    """What a report wrote: the file, its cells, posters made and reused."""

    path: Path
    cells: int
    posters_made: int
    posters_reused: int


def results_of(located: Located) -> Path:
    if located.results is None:
        raise ReportError(
            "this store does not say where its results are: give the sweep's SPEC "
            "(a PostgreSQL store holds no files)"
        )
    return located.results


def load_view(located: Located, axes: Axes, *, page_dir: Path | None = None) -> View:
    """The sweep's view with its axes chosen (bad axes raise ReportError before any write)."""
    results = results_of(located)
    with Store.open(located.store, readonly=True) as store:
        view = build_view(store, results, page_dir=page_dir or results, name=located.name)
    return choose_axes(view, axes.x, axes.y, axes.z, axes.filters)


def write_report(
    located: Located, axes: Axes = DEFAULT_AXES, *, out: Path | None = None
) -> Written:
    """Write report.html (or ``out``) with its posters in ``report_assets/`` beside it."""
    results = results_of(located)
    out = (out or results / REPORT).absolute()
    if out.is_dir():
        raise ReportError(f"{out} is a folder: give --out a file name such as report.html")
    view = load_view(located, axes, page_dir=out.parent)  # bad axes fail here, before any write
    _check_out(out, located, view, (".html", ".htm"), "the page is HTML")
    posters = Posters(out.parent / ASSETS)
    add_posters(view, results, out.parent, posters)
    write_page(view, out)
    # another report in the same folder (--out) shares report_assets/: its posters stay
    posters.prune([p for p in out.parent.glob("*.htm*") if p.is_file() and p != out])
    return Written(out, len(view.cells), posters.made, posters.reused)


def write_video(located: Located, axes: Axes = DEFAULT_AXES, *, out: Path | None = None) -> Written:
    """The current X/Y view (Z: its filtered value, else its first) as one labelled mosaic MP4."""
    from orchestrator.report import mosaic  # PyAV's encoder: loaded only for --video

    results = results_of(located)
    out = (out or results / VIDEO).absolute()
    view = load_view(located, axes)
    _check_out(out, located, view, (".mp4",), "the mosaic is an MP4 video")
    kinds = {cell.kind for cell in view.cells if cell.kind is not None}
    if kinds and kinds <= {"audio"}:
        raise ReportError(
            "report --video: the mosaic is for video and image sweeps, and this sweep's outputs "
            "are audio; `comfysweep report` writes a page that plays them"
        )
    grid = xy_grid(view)
    rows = [
        [
            mosaic.MosaicCell(
                video=None if c is None or c.path is None else results / c.path,
                caption="" if c is None else caption(view, c),
                state="no job" if c is None else c.state,
            )
            for c in row
        ]
        for row in grid.cells
    ]
    shown = {view.z: grid.tab} if view.z else {}
    shown |= {k: v for k, v in view.filters.items() if k != view.z}
    title = " · ".join([view.name, *(f"{k}={v}" for k, v in shown.items())])
    mosaic.write_mosaic(out, rows, x_labels=grid.x_labels, y_labels=grid.y_labels, title=title)
    return Written(out, sum(c is not None for row in grid.cells for c in row), 0, 0)


def _check_out(
    out: Path, located: Located, view: View, suffixes: tuple[str, ...], what: str
) -> None:
    """Refuse an ``out`` that would replace what the sweep owns: its store, a job's output, a
    conditioning input or a file the tool writes (a report replaces only a file of its kind)."""
    if out.suffix.lower() not in suffixes:
        raise ReportError(f"--out {out}: {what}: give a file name ending in {suffixes[0]}")
    real = Path(os.path.realpath(out))
    results = Path(os.path.realpath(results_of(located)))
    store = Path(os.path.realpath(located.store))
    if real.parent == store.parent and real.name.startswith(store.name):
        raise ReportError(f"--out {out} is the sweep's store: give another file name")
    if real in {Path(os.path.realpath(results / path)) for path in view.outputs}:
        raise ReportError(f"--out {out} is a job's output: give another file name")
    if real.parent in {results / INPUTS_DIR, results / ASSETS, results / PARTIAL}:
        raise ReportError(f"--out {out} is in a folder the tool keeps: give another folder")


@dataclass(frozen=True)
class Grid:
    """One X/Y page of a view: per Y value a row of cells (None where no job is); a view
    without an X (or Y) axis has one column (row) labelled ""."""

    x_labels: list[str]
    y_labels: list[str]
    tab: str | None
    cells: list[list[Cell | None]]


_ORDER = {"pick": 0, "up": 1}


def xy_grid(view: View) -> Grid:
    """The view's X/Y grid on its Z tab, filtered (a filter on X or Y keeps that one column or
    row); of several jobs in a cell the one picked, else rated up, else done, else the first."""
    names = view.varying()
    xs = view.axis(view.x).labels if view.x else [""]
    ys = view.axis(view.y).labels if view.y else [""]
    tab = None
    want = {names.index(k): view.axis(k).labels.index(v) for k, v in view.filters.items()}
    if view.z:
        zi = names.index(view.z)
        labels = view.axis(view.z).labels
        tab = view.filters.get(view.z, labels[0])
        want[zi] = labels.index(tab)
    xi = names.index(view.x) if view.x else None
    yi = names.index(view.y) if view.y else None
    slots: dict[tuple[int, int], Cell] = {}
    for cell in view.cells:
        if any(cell.at[i] != v for i, v in want.items()):
            continue
        at = (0 if yi is None else cell.at[yi], 0 if xi is None else cell.at[xi])
        held = slots.get(at)
        if held is None or _rank(cell) < _rank(held):
            slots[at] = cell
    rows = range(len(ys)) if yi not in want else [want[yi]]  # a filtered Y: its one row
    columns = range(len(xs)) if xi not in want else [want[xi]]
    cells = [[slots.get((r, c)) for c in columns] for r in rows]
    return Grid([xs[c] for c in columns], [ys[r] for r in rows], tab, cells)


def _rank(cell: Cell) -> tuple[int, int]:
    return (_ORDER.get(cell.rating or "", 2), 0 if cell.state == "done" else 1)


def caption(view: View, cell: Cell) -> str:
    """A cell's values on the view's axes (and those filtered to one value stay unsaid)."""
    parts = []
    for i, axis in enumerate(view.axes):
        if axis.name == view.z or axis.name in view.filters:
            continue
        parts.append(f"{axis.name}={axis.labels[cell.at[i]]}")
    return " ".join(parts)
