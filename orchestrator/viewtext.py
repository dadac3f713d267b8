"""The lines a user reads for ``status``, ``show``, ``failures`` and ``runs`` (orchestrator/views.py
gathers the figures; this only words them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator import objects
from orchestrator.canonical import canonical_json
from orchestrator.responses import error_message

if TYPE_CHECKING:
    from orchestrator.models import Model
    from orchestrator.store import JobRow

__all__ = [
    "ORPHANED",
    "duration",
    "failure_line",
    "job_lines",
    "run_lines",
    "status_lines",
]

_RUN_HEADER: tuple[str, ...] = (
    *("run", "owner", "pid", "host", "version"),
    *("started (UTC)", "finished", "sent", "ended"),
)
ORPHANED = "no longer in the spec; kept in the store and the manifest, never submitted again"
KEY_SHOWN = 12
_REASONS = ("no run live", "no job ended yet")  # why no ETA, said in the line's own words


def status_lines(info: Mapping[str, Any]) -> list[str]:
    """``status`` as text: the money line, counts, the run, the pace, the oldest job, failures."""
    money = f"spent ${info['spent_usd']:.2f}"
    if round(info["reserved_usd"], 2):  # float sums leave a -0.00 behind when all settled
        money += f", ${info['reserved_usd']:.2f} reserved"
    if info["cap_usd"] is not None:
        money += f" of the ${info['cap_usd']:.2f} cap"
    lines = [f"{info['sweep']}: {info['jobs']} jobs, {money}"]
    lines += [f"  {state:<11} {n}" for state, n in info["counts"].items() if n]
    if info["orphaned"]:
        lines.append(f"  {info['orphaned']} orphaned: {ORPHANED}")
    for model, counts in (info.get("models") or {}).items():  # a sweep of several models
        states = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        lines.append(f"  {model}: {states}")
    lines.append(_run_line(info))
    if pace := _pace_line(info):
        lines.append(pace)
    oldest = info["oldest_in_flight"]
    if oldest is not None:
        lines.append(
            f"oldest in flight: {oldest['key'][:KEY_SHOWN]} {oldest['state']} for "
            f"{duration(oldest['age_seconds'])}"
        )
    lines += _failure_lines(info)
    return lines


def _run_line(info: Mapping[str, Any]) -> str:
    run = info["run"]
    if run is not None:
        return (
            f"run {run['id']} live: {run['owner']}, pid {run['pid']} on {run['host']}, "
            f"started {_ago(run['started_at'], info['as_of'])}"
        )
    line = "no run live"
    for other in info["runs_unfinished"][:1]:
        line += (
            f"; run {other['id']} died without finishing (pid {other['pid']} on "
            f"{other['host']}, started {_ago(other['started_at'], info['as_of'])})"
        )
    return line


def _pace_line(info: Mapping[str, Any]) -> str | None:
    rate, eta, note = info["rate_per_minute"], info["eta_seconds"], info["eta_note"]
    if info["left"] == 0:
        return None
    parts = []
    if rate is not None:
        window = duration(info["rate_window_seconds"])
        said = "rate" if info["live"] else "rate when it last ran"
        parts.append(f"{said}: {rate:.1f} jobs/min over {window}")
    reason = note in _REASONS
    if eta is not None:
        parts.append(f"ETA {duration(eta)} for {info['left']} job(s) left")
    elif info["live"]:
        why = f" ({note})" if reason else ""
        parts.append(f"ETA unknown for {info['left']} job(s) left{why}")
    if note is not None and not reason:
        parts.append(note)
    return "; ".join(parts) or None


def _failure_lines(info: Mapping[str, Any]) -> list[str]:
    groups = info["failures"]
    if not groups:
        return []
    kinds = info["failure_kinds"]
    lines = [f"failures: {info['failed_jobs']} job(s), {kinds} kind(s) of error"]
    for group in groups:
        states = group["states"]
        if len(states) == 1:
            (state,) = states
            said = f"{group['count']} {state}"
        else:
            said = f"{group['count']} (" + ", ".join(f"{n} {s}" for s, n in states.items()) + ")"
        lines.append(f"  {said}: {group['message']}")
    if kinds > len(groups):
        lines.append(f"  and {kinds - len(groups)} more; `comfysweep failures` lists every job")
    return lines


def job_lines(view: Mapping[str, Any]) -> list[str]:
    """``show JOB`` as text: the job, its inputs, attempts, transitions and files."""
    head = f"{view['state']}, {view['attempts_made']} attempt(s), grid index {view['index']}"
    if view["orphaned"]:
        head += ", orphaned (no longer in the spec)"
    lines = [f"job {view['key']}", f"  state      {head}"]
    if view.get("several_models"):  # which of the sweep's models made it
        lines.append(f"  model      {view['model']}")
    if view["request_id"]:
        lines.append(f"  request    {view['request_id']}")
    if view["cost_usd"] is not None:
        lines.append(f"  cost       {_usd(view['cost_usd'])}")
    if view.get("model"):  # which model made it (a sweep may have several)
        lines.append(f"  model      {view['model']}")
    if view["rating"]:
        lines.append(f"  rating     {view['rating']}")
    if view["error_text"]:
        lines.append(f"  error      {' '.join(view['error_text'].split())}")
    lines.append("inputs")
    width = max((len(name) for name in view["inputs"]), default=0)
    files = view.get("sources") or {}
    for name, v in view["inputs"].items():
        value = _value(v, None)
        if name in files:  # a local file the spec names, sent as a data: URI
            value = f"{_value(files[name], None)}, sent as {value}"
        lines.append(f"  {name:<{width}}  {value}")
    lines.append("attempts" if view["attempts"] else "attempts: none yet")
    for a in view["attempts"]:
        money = ", ".join(
            f"{word} {_usd(a[field])}"
            for word, field in (("estimate", "estimate_usd"), ("cost", "cost_usd"))
            if a[field] is not None
        )
        charge = "open" if a["charge_usd"] is None else f"charged {_usd(a['charge_usd'])}"
        run = f"run {a['run_id']}" if a["run_id"] is not None else "no run"
        lines.append(
            f"  #{a['attempt']} {run}, request {a['request_id'] or '-'}: {money}, {charge}; "
            f"{a['outcome'] or 'in flight'}"
        )
    lines.append("events (UTC)" if view["events"] else "events: none yet")
    for e in view["events"]:
        move = f"{e['from']} -> {e['to']}" if e["from"] else f"-> {e['to']}"
        detail = f"  {' '.join(e['detail'].split())}" if e["detail"] else ""
        lines.append(f"  {_clock(e['at'])}  {move}{detail}")
    lines.append("files" if view["files"] else "files: none")
    for f in view["files"]:
        size = f["size_on_disk"] if f["exists"] else f["size"]
        said = "on disk" if f["exists"] else "MISSING"
        lines.append(f"  {f['path']}  {_bytes(size)}  {said}")
    return lines


def failure_line(row: JobRow, varying: Sequence[str], model: Model) -> str:
    """One failed job: key prefix, state, its varying inputs, its error."""
    inputs = " ".join(
        f"{model.display_name(k)}={_value(_input(row, k), 24)}" for k in varying if k in row.inputs
    )
    error = " ".join((error_message(row.error) or "no error recorded").split())
    return f"{row.key[:KEY_SHOWN]}  {row.state:<9} {inputs + '  ' if inputs else ''}{error}"


def failure_record(row: JobRow, varying: Sequence[str], model: Model) -> dict[str, Any]:
    """One failed job for ``failures --json``: every varying input by its friendly name."""
    return {
        "key": row.key,
        "index": row.index,
        "state": str(row.state),
        "inputs": {model.display_name(k): _input(row, k) for k in varying if k in row.inputs},
        "error": row.error,
        "error_text": error_message(row.error),
        "request_id": row.request_id,
        "attempts": row.attempts,
    }


def _input(row: JobRow, key: str) -> Any:
    """A job's input as the spec wrote it: a local file by its name, not its data: URI."""
    return row.sources.get(key, row.inputs[key])


def failures_footer(counts: Mapping[str, int], states: Sequence[str] = ()) -> str:
    """The last line of ``failures``: how many of each state it listed; none of ``states``."""
    if not counts:
        looked = list(states) or ["failed", "expired", "lost", "unknown"]
        said = looked[0] if len(looked) == 1 else f"{', '.join(looked[:-1])} or {looked[-1]}"
        return f"no {said} jobs"
    total = sum(counts.values())
    return f"{total} job(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())


def run_lines(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """``runs`` as an aligned table, one line a run: ``sent`` counts its submits that got a
    request id, ``ended`` the jobs it brought to a final state, ``spent`` its attempts' charges."""
    rows: list[tuple[str, ...]] = [_RUN_HEADER]
    spend = ["spent"]
    for r in runs:
        ended = {"finished": _stamp(r["finished_at"]), "live": "live", "died": "died"}
        rows.append(
            (
                str(r["id"]),
                r["owner"],
                str(r["pid"]),
                r["host"],
                r["version"],
                _stamp(r["started_at"]),
                ended.get(r["state"], "live? (other host)"),
                str(r["submitted"]),
                str(r["finished"]),
            )
        )
        spend.append(f"${r['spent_usd']:.2f}")
    if len(rows) == 1:
        return ["no runs yet: `comfysweep run` starts one"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_RUN_HEADER))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + money
        for row, money in zip(rows, spend, strict=True)
    ]


def duration(seconds: float | None) -> str:
    """``45s``, ``3m 05s``, ``2h 10m``, ``3d 4h``."""
    if seconds is None:
        return "unknown"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _ago(then: str, now: str) -> str:
    seconds = (datetime.fromisoformat(now) - datetime.fromisoformat(then)).total_seconds()
    return f"{duration(seconds)} ago"


def _stamp(value: str | None) -> str:
    return "-" if value is None else datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _clock(value: str) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _usd(value: float) -> str:
    return f"${value:.4f}" if 0 < abs(value) < 0.01 else f"${value:.3f}"


def _bytes(size: Any) -> str:
    return "size unknown" if size is None else f"{int(size):,} bytes"


def _value(value: Any, width: int | None) -> str:
    """A value on one line, cut to ``width`` characters (None: whole); a data: URI shortened."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 64:
        return f"{value.split(',', 1)[0]},… ({len(value):,} chars)"
    if isinstance(value, list):  # a list input: each item on the line, data: URIs shortened
        text = ", ".join(_value(item, None) for item in value)
        return _value(f"[{text}]", width)
    if isinstance(value, dict):  # an object input (a LoRA): its label, then (whole) its JSON
        shown = objects.label(value)
        text = shown if width is not None else f"{shown} {canonical_json(value)}"
    else:
        text = value if isinstance(value, str) else repr(value) if value is None else str(value)
    text = " ".join(text.split())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"
