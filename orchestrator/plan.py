"""What ``comfysweep plan`` reports, as plain data: counts, axes, first jobs, cost and time.

Offline: nothing here talks to the network. The CLI renders this as a table or JSON.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import objects
from orchestrator.estimate import Forecast, forecast_lines
from orchestrator.grid import Job, count_jobs, iter_jobs
from orchestrator.models import get_model
from orchestrator.prices import Estimate, estimate
from orchestrator.sources import shown
from orchestrator.spec import MODEL, Spec

__all__ = ["job_record", "plan_summary", "render_plan", "short", "stream_jobs", "varying_fields"]

FIRST_JOBS = 5
_FORECAST_FIELDS = tuple(f.name for f in dataclasses.fields(Forecast))


def plan_summary(
    spec: Spec,
    *,
    concurrency: int | None = None,
    first: int = FIRST_JOBS,
    left: Forecast | None = None,
) -> dict[str, Any]:
    """The plan as one JSON-ready object (``jobs`` and ``estimated_cost_usd`` among it).

    ``estimated_*`` is the whole spec's; ``left`` (None before the sweep's store exists) is what
    is left of it: jobs done and left, their estimated cost, and what was spent so far.
    """
    count = count_jobs(spec)
    workers = concurrency or spec.run.concurrency
    each = [(part, count_jobs(part)) for part in spec.each()]
    guesses = [estimate(part, n, concurrency=workers) for part, n in each]
    guess = guesses[0] if not spec.parts else _total(guesses)
    varied = set(varying_fields(spec))
    return {
        "spec": str(spec.path),
        "name": spec.name,
        "model": spec.model,
        "results_dir": str(spec.results_dir),
        "jobs": count.jobs,
        "duplicates": count.duplicates,
        "excluded": count.excluded,
        "included": count.included,
        "repeat": spec.repeat,
        "axes": count.axes,
        "fixed": {k: v for k, v in _fixed(spec).items() if k not in varied},
        "concurrency": workers,
        "max_cost": spec.run.max_cost,
        "estimated_cost_usd": None if guess.cost_usd is None else round(guess.cost_usd, 4),
        "estimated_wall_seconds": guess.wall_seconds,
        "output_seconds": guess.output_seconds,
        "price": None if guess.price is None else guess.price.__dict__,
        "cost_note": guess.cost_note,
        "time_note": guess.time_note,
        "filename": spec.filename,
        "varying": varying_fields(spec),
        "first_jobs": [job_record(job) for job in itertools.islice(iter_jobs(spec), first)],
        "left": None if left is None else left.as_dict(),
        # Per model, in the sweep's order (one entry for a sweep of one model).
        "models": [
            {
                "model": part.model,
                "label": part.label,
                "jobs": n.jobs,
                "axes": n.axes,
                "estimated_cost_usd": None if g.cost_usd is None else round(g.cost_usd, 4),
                "cost_note": g.cost_note,
            }
            for (part, n), g in zip(each, guesses, strict=True)
        ],
    }


def _total(guesses: list[Estimate]) -> Estimate:
    """The estimate of a sweep of several models: the sum of each model's, unknown if one is."""
    costs = [g.cost_usd for g in guesses]
    walls = [g.wall_seconds for g in guesses]
    seconds = [g.output_seconds for g in guesses]
    unknown = [g for g in guesses if g.cost_usd is None]
    first = guesses[0]
    return dataclasses.replace(
        first,
        cost_usd=None if unknown else sum(c for c in costs if c is not None),
        wall_seconds=None if None in walls else sum(w for w in walls if w is not None),
        output_seconds=None if None in seconds else sum(s for s in seconds if s is not None),
        price=None,
        cost_note=unknown[0].cost_note if unknown else "the sum of the models' estimates above",
        time_note=next((g.time_note for g in guesses if g.wall_seconds is None), "per model"),
    )


def _fixed(spec: Spec) -> dict[str, Any]:
    """The inputs every job has the same value of, by the name the spec gives them."""
    fixed = []
    for part in spec.each():
        model = part.definition
        fixed.append({model.display_name(k): short(shown(v), 60) for k, v in part.fixed.items()})
    first = fixed[0]
    return {k: v for k, v in first.items() if all(k in o and o[k] == v for o in fixed[1:])}


def job_record(job: Job, width: int = 48) -> dict[str, Any]:
    """One job for display or JSONL: key, index, repeat, friendly inputs (long values cut)."""
    record: dict[str, Any] = {
        "key": job.key,
        "index": job.index,
        "repeat": job.repeat,
        "inputs": {name: short(value, width) for name, value in job.friendly().items()},
        "model": job.model_id,
    }
    if job.sources:
        model = job.definition or get_model(job.model_id)
        record["files"] = {model.display_name(k): path for k, path in job.sources.items()}
    return record


def varying_fields(spec: Spec) -> list[str]:
    """Friendly names of the fields that differ between jobs, in grid order (``model`` first
    in a sweep of several models, then each model's by the spec's common names)."""
    names = [MODEL] if spec.parts else []
    for part in spec.each():
        model = part.definition
        keys = [k for d in part.dimensions for k in d.keys]
        keys += [k for e in part.include for k, v in e.items() if part.fixed.get(k) != v]
        names += [model.display_name(k) for k in keys]
    return list(dict.fromkeys(names))


def short(value: Any, width: int) -> Any:
    """A string cut to ``width`` characters with an ellipsis; a data: URI shows its type only."""
    if isinstance(value, list):  # a list input: each item cut alike
        return [short(item, width) for item in value]
    if not isinstance(value, str):
        return value
    if value.startswith("data:") and len(value) > 64:
        head = value.split(",", 1)[0]
        return f"{head},… ({len(value):,} chars)"
    return value if len(value) <= width else value[: width - 1] + "…"


def stream_jobs(spec: Spec) -> Iterator[dict[str, Any]]:
    """Every job as a display record, lazily (``plan --jobs``)."""
    for job in iter_jobs(spec):
        yield job_record(job, width=10**9)


def render_plan(summary: dict[str, Any], console: Console) -> None:
    """The plan as a human reads it: counts, axes, fixed inputs, first jobs, estimates."""
    console.print(
        f"[bold]{summary['name']}[/]  {summary['model']}  ({summary['spec']})", highlight=False
    )
    facts = [
        f"[bold]{summary['jobs']:,}[/] jobs",
        f"{summary['duplicates']:,} duplicates collapsed",
    ]
    if summary["excluded"]:
        facts.append(f"{summary['excluded']:,} excluded")
    if summary["included"]:
        facts.append(f"{summary['included']:,} added by include")
    if summary["repeat"] > 1:
        facts.append(f"each x{summary['repeat']}")
    console.print(", ".join(facts), highlight=False)
    for line in _model_lines(summary):
        console.print(line, highlight=False)
    axes = _axes_line(summary)
    if axes:
        console.print(axes, highlight=False)
    if summary["fixed"]:
        fixed = ", ".join(
            f"{k}={objects.label(v) if isinstance(v, dict) else short(v, 40)}"
            for k, v in summary["fixed"].items()
        )
        console.print(f"fixed: {escape(fixed)}", highlight=False)
    console.print(f"results: {summary['results_dir']}  (names: {summary['filename']})")
    jobs = summary["first_jobs"]
    if jobs:
        shown = len(jobs) if len(jobs) == summary["jobs"] else f"first {len(jobs)}"
        table = Table(title=f"jobs ({shown})", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("key")
        columns = [
            c for c in summary["varying"] if c == MODEL or any(c in j["inputs"] for j in jobs)
        ]
        for column in columns:
            table.add_column(column)
        for job in jobs:
            cells = [_cell(job, c) for c in columns]
            table.add_row(str(job["index"]), job["key"][:10], *cells)
        console.print(table)
    left = summary.get("left")
    if left is not None:  # the sweep ran already: what is left of it, not the whole spec
        console.print(f"spent so far: ${left['spent_usd']:,.2f}", highlight=False)
        for line in forecast_lines(Forecast(**{k: left[k] for k in _FORECAST_FIELDS})):
            console.print(escape(line), highlight=False)
        return
    cost = summary["estimated_cost_usd"]
    wall = summary["estimated_wall_seconds"]
    cost_text = "unknown" if cost is None else f"${cost:,.2f}"
    wall_text = "unknown" if wall is None else _duration(wall)
    console.print(f"estimated cost: [bold]{cost_text}[/] ({escape(summary['cost_note'])})")
    console.print(
        f"estimated wall time at concurrency {summary['concurrency']}: [bold]{wall_text}[/] "
        f"({escape(summary['time_note'])})"
    )
    if cost is None:
        console.print(
            "  `comfysweep plan --online` reads the catalog price; every run records it too.",
            highlight=False,
        )


def _model_lines(summary: dict[str, Any]) -> list[str]:
    """A sweep of several models: each model's jobs and estimated cost, a line each."""
    models = summary.get("models") or []
    if len(models) < 2:
        return []
    lines = []
    for entry in models:
        usd = entry["estimated_cost_usd"]
        cost = "cost unknown" if usd is None else f"estimated ${usd:,.2f}"
        axes = _axes_text(entry.get("axes") or {})
        own = f"; axes: {axes}" if axes else ""
        lines.append(f"  {escape(entry['model'])}: {entry['jobs']:,} job(s), {cost}{own}")
    return lines


def _axes_line(summary: dict[str, Any]) -> str | None:
    """The axes and their sizes; with several models, each model's own are on its line above
    (their product is not the sweep's: an axis of one model multiplies its jobs alone)."""
    models = summary.get("models") or []
    if len(models) > 1:
        return f"axes: model ({len(models)}), each model's own on its line above"
    return f"axes: {_axes_text(summary['axes'])}" if summary["axes"] else None


def _axes_text(axes: dict[str, int]) -> str:
    return " x ".join(f"{name} ({size:,})" for name, size in axes.items())


def _cell(job: dict[str, Any], column: str) -> str:
    value = job.get("files", {}).get(column, job["inputs"].get(column))
    if column == MODEL and column not in job["inputs"]:
        value = job.get(MODEL)
    elif column not in job["inputs"] and get_model(job[MODEL]).raw_key(column) is None:
        return "-"  # a field this job's model does not have (seed, on a model without one)
    elif isinstance(value, dict) or column not in job["inputs"]:
        return escape(objects.label(value))  # a LoRA as my-style@0.5; one left out as none
    return escape(str(short(value, 32)))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
