"""The ``comfysweep`` command: arguments in, library calls, one-line errors and exit codes out.

No SQL and no HTTP here: every command calls the public library. Only ``ComfysweepError`` is
caught, so a mistake of the user's is one line on stderr and exit 1, while a bug of ours still shows
its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.__main__ import interrupted
from orchestrator.errors import ComfysweepError

if TYPE_CHECKING:
    from orchestrator.settings import Flag


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ComfysweepError as exc:
            click.echo(f"Error: {one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:  # click would say "Aborted!" after a blank line, and exit 1
            interrupted()
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            _disk_full(exc)


# A full disk (or quota) is the machine's state, never a bug of ours: wherever it strikes, even
# on stdout (`plan > file` on a full disk), it is one line.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _disk_full(exc: OSError) -> None:
    # What stdout still buffers would fail again, with a traceback, as Python exits: drop it.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    where = exc.filename or "cannot write"
    sys.stderr.write(f"Error: {where}: {exc.strerror or exc}\n")
    sys.exit(1)


def one_line(exc: BaseException) -> str:
    """An exception and its chained causes that add something, in one line.

    A cause gives its first line only, without a driver's ``(sqlite3.OperationalError)`` prefix:
    SQLAlchemy's next lines are the statement, its parameters and a link to its documentation.
    """
    parts = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None:
        text = str(cause).strip().split("\n", 1)[0] or type(cause).__name__
        text = _DRIVER.sub("", text)
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return ": ".join(p.replace("\n", " ") for p in parts)


_DRIVER = re.compile(r"^\([\w.]+\) ")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="comfysweep")
def cli() -> None:
    """Resumable parameter sweeps on RunComfy's Model API (or its embedded emulator)."""


class _Finite(click.FloatRange):
    """A float in a range, never NaN (which every comparison lets through) nor infinite."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _flag(flag: Flag, help: str | None = None) -> click.Option:
    """A run setting as an option: same bounds as the spec's ``run:``, no default (the spec's)."""
    kind: click.ParamType[Any] = _Finite(flag.low, flag.high, min_open=flag.low_open)
    if flag.kind is str:
        kind = click.Choice(flag.choices) if flag.choices else click.STRING
    elif flag.kind is int:
        low, high = (None if b is None else int(b) for b in (flag.low, flag.high))
        kind = click.IntRange(low, high, min_open=flag.low_open)
    return click.Option([flag.option], type=kind, metavar=flag.metavar, help=help or flag.help)


class _WithSettings(click.Command):
    """A command that takes run settings as flags (``settings.flags()``), after its parameter
    ``after``: every flag, or those ``chosen`` (name -> help, None: the setting's own).

    The options are built the first time click asks for the parameters: the settings are a
    pydantic model, which the read-only commands (status, show, failures, runs) never import.
    """

    def __init__(
        self,
        *args: Any,
        after: str,
        chosen: Mapping[str, str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._after = after
        self._chosen = chosen
        self._built = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._built:
            from orchestrator.settings import flags

            self._built = True
            known = {flag.name: flag for flag in flags()}
            chosen = self._chosen or dict.fromkeys(known)
            at = 1 + next(i for i, p in enumerate(self.params) if p.name == self._after)
            self.params[at:at] = [_flag(known[name], help) for name, help in chosen.items()]
        return super().get_params(ctx)


_SPEC = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
_STORE = click.option(
    "--store",
    metavar="PATH|URL",
    help="Store file or postgresql+psycopg:// URL (default: in the results folder).",
)


@cli.command(cls=_WithSettings, after="store")
@_SPEC
@click.option(
    "--emulator", is_flag=True, help="Run against the embedded emulator (no token, no cost)."
)
@_STORE
@click.option(
    "--until",
    metavar="TIME",
    help="Stop submitting in time for jobs in flight to finish by then: HH:MM (local), a "
    "duration (90m, 8h, 1h30m) or a date and time.",
)
@click.option("--force", is_flag=True, help="Render again jobs that are already done (pays again).")
@click.option(
    "--abort", is_flag=True, help="On Ctrl-C also cancel queued jobs (running ones are billed)."
)
@click.option(
    "--yes",
    is_flag=True,
    help="Ask nothing: pay above --confirm-above, and render jobs that only a changed schema "
    "default makes new (pays).",
)
@click.option(
    "--price",
    metavar="USD[/UNIT]",
    help="The price the budget estimates with, over the catalog's: 0.05/second or 0.25/output.",
)
def run(
    spec: Path,
    emulator: bool,
    store: str | None,
    force: bool,
    abort: bool,
    yes: bool,
    until: str | None,
    price: str | None,
    **flags: Any,
) -> None:
    """Run or resume a sweep: submit, poll, download; never pay twice."""
    from orchestrator import sweep

    report = sweep.run_sweep(
        spec,
        emulator=emulator,
        store=store,
        overrides=sweep.Overrides(**flags),
        force=force,
        abort_on_stop=abort,
        handle_signals=True,
        stream=sys.stderr,
        yes=yes,
        confirm=_ask if _terminal() else None,
        out=sys.stdout,
        until=until,
        price=price,
    )
    states = ", ".join(f"{n} {s}" for s, n in report.counts.items() if n)
    click.echo(f"{states}; spent ${report.spent_usd:.2f} in {report.elapsed:.1f}s")
    click.echo(f"results: {report.results_dir} (summary.md, manifest.jsonl, run.log)")
    for state, hint in _HINTS.items():
        if state == "pending" and report.stop_kind == "budget" and report.stop_reason:
            hint = report.stop_reason  # "run again" would stop at the same cap
        if report.counts.get(state):
            click.echo(f"{report.counts[state]} {state}: {hint}")
    if report.orphaned:
        click.echo(f"{report.orphaned} orphaned: {_ORPHANED}")
    _go_on(report, spec, emulator, store)
    if report.fatal:
        raise ComfysweepError(report.stop_reason or "the run stopped")
    if not report.complete:
        sys.exit(3)


def _go_on(report: Any, spec: Path, emulator: bool, store: str | None) -> None:
    """The run's last line, when it stopped short: the command that brings the rest back."""
    from orchestrator.steer import go_on

    where = [str(spec), *(["--store", store] if store else [])]
    again = [*where[:1], *(["--emulator"] if emulator else []), *where[1:]]
    line = go_on(
        report,
        shlex.join(["comfysweep", "run", *again]),
        shlex.join(["comfysweep", "retry", *where]),
    )
    if line is not None:
        click.echo(line)


_HINTS = {
    "unknown": "the submit's answer was lost, the job may exist and be billed; "
    "`comfysweep retry SPEC --unknown` submits again on purpose",
    "failed": "`comfysweep failures SPEC` lists them; `comfysweep retry SPEC --failed`",
    "expired": "outputs expired before download; `comfysweep retry SPEC --expired` renders again",
    "lost": "the API forgot these requests; `comfysweep retry SPEC --lost`",
    "pending": "not submitted yet; run again to continue",
    "succeeded": "paid but not downloaded yet; run again to download",
}
_ORPHANED = "no longer in the spec; kept in the store and the manifest, never submitted again"


def _ask(question: str) -> bool:
    return click.confirm(question, default=False, err=True)


def _terminal() -> bool:
    """Someone to ask: stdin and stdout are a terminal (never asks a script or a pipe)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


# -- watching a sweep: read-only, from any shell, while a run is live or after it ---------------

_ANY_SPEC = click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
_WHICH = (
    "\n\nSPEC is optional: without it, --store names the store, or the current directory is the "
    "sweep's results folder. Read-only: never takes the running sweep's lock."
)


class _Every(_Finite):
    """``--watch``'s optional SECONDS: a word that is no number is the SPEC put after it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            float(value)
        except (TypeError, ValueError):
            self.fail(
                f"{value!r} is not a number of seconds (put SPEC before --watch, "
                "or give --watch its seconds)",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)


@cli.command(
    help="Where a sweep stands: jobs per state, spent / reserved / cap, the live run, rate and "
    "ETA, the oldest job in flight, failures grouped by message. Works from another shell while "
    "a run is live." + _WHICH
)
@_ANY_SPEC
@_STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON object (stable keys).")
@click.option(
    "--watch",
    type=_Every(0, min_open=True),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh in place every SECONDS (2 if not given) until Ctrl-C.",
)
@click.option("--max-refresh", type=click.IntRange(1), hidden=True)
def status(
    spec: Path | None,
    store: str | None,
    as_json: bool,
    watch: float | None,
    max_refresh: int | None,
) -> None:
    from orchestrator import views  # not sweep: status imports only what it reads with
    from orchestrator.viewtext import status_lines

    def render() -> str:
        info = views.sweep_status(spec, store=store)
        return json.dumps(info) if as_json else "\n".join(status_lines(info))

    if watch is None:
        click.echo(render())
        return
    _watch(render, watch, max_refresh)


def _watch(render: Callable[[], str], every: float, most: int | None) -> None:
    """Show ``render()`` again every ``every`` seconds until Ctrl-C (exit 0) or ``most`` times:
    in place on a terminal, else one block per refresh, a blank line between."""
    import time

    shown = 0
    try:
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            with Live(console=Console(), auto_refresh=False) as live:
                while most is None or shown < most:
                    live.update(Text(render()), refresh=True)
                    shown += 1
                    if most is None or shown < most:
                        time.sleep(every)
            return
        while most is None or shown < most:
            click.echo(("\n" if shown else "") + render())
            sys.stdout.flush()
            shown += 1
            if most is None or shown < most:
                time.sleep(every)
    except KeyboardInterrupt:
        return


@cli.command(
    help="One job whole: its inputs, each submit attempt (request id, estimate, cost, charge, "
    "outcome), every state change with its time, its files on disk, its error and rating. JOB is "
    "a job key or a unique prefix of one (at least 4 characters)." + _WHICH
)
@click.argument("job")
@_ANY_SPEC
@_STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show(job: str, spec: Path | None, store: str | None, as_json: bool) -> None:
    from orchestrator import views
    from orchestrator.viewtext import job_lines

    view = views.show_job(job, spec, store=store)
    click.echo(json.dumps(view, ensure_ascii=False) if as_json else "\n".join(job_lines(view)))


@cli.command(
    help="The jobs that ended without their files (failed, expired, lost, unknown), one line "
    "each: key prefix, state, the inputs that vary, the error." + _WHICH
)
@_ANY_SPEC
@_STORE
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["failed", "expired", "lost", "unknown", "cancelled"]),
    help="Only jobs in this state (repeatable; cancelled jobs only when asked).",
)
@click.option(
    "--sort",
    type=click.Choice(["grid", "error", "state"]),
    default="grid",
    show_default=True,
    help="Grid order, or alike errors together (commonest first), or by state.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job (JSON lines).")
def failures(
    spec: Path | None, store: str | None, states: tuple[str, ...], sort: str, as_json: bool
) -> None:
    from collections import Counter

    from orchestrator import views
    from orchestrator.viewtext import failure_line, failure_record, failures_footer

    chosen = states or tuple(str(s) for s in views.TROUBLE)
    seen: Counter[str] = Counter()
    with views.list_failures(spec, store=store, states=chosen, sort=sort) as listed:
        for row in listed.rows:
            seen[str(row.state)] += 1
            if as_json:
                record = failure_record(row, listed.varying, listed.model)
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                click.echo(failure_line(row, listed.varying, listed.model))
    if not as_json:
        click.echo(failures_footer(dict(sorted(seen.items())), states))


@cli.command(
    help="The runs a store has seen: id, who, pid and host, version, when it started, when it "
    "finished (or live, or died: no finish and no longer holding its lock), how many jobs it sent "
    "and ended, and what its attempts were charged." + _WHICH
)
@_ANY_SPEC
@_STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
def runs(spec: Path | None, store: str | None, as_json: bool) -> None:
    from orchestrator import views
    from orchestrator.viewtext import run_lines

    listed = views.list_runs(spec, store=store)
    click.echo(json.dumps(listed) if as_json else "\n".join(run_lines(listed)))


@cli.command()
@_SPEC
@_STORE
@click.option("--failed", is_flag=True, help="Jobs the API reported as failed.")
@click.option("--expired", is_flag=True, help="Jobs whose outputs expired before download.")
@click.option("--lost", is_flag=True, help="Jobs the API no longer knows.")
@click.option("--cancelled", is_flag=True, help="Jobs that were cancelled.")
@click.option("--unknown", is_flag=True, help="Jobs whose submit answer was lost (may pay twice).")
@click.option("--yes", is_flag=True, help="Do not ask before resubmitting unknown jobs.")
@click.option("--where", metavar="EXPR", help="Only the jobs whose inputs match: 'cfg >= 5'.")
def retry(
    spec: Path,
    store: str | None,
    failed: bool,
    expired: bool,
    lost: bool,
    cancelled: bool,
    unknown: bool,
    yes: bool,
    where: str | None,
) -> None:
    """Put jobs back to pending on purpose; the next `run` submits them."""
    from orchestrator import sweep

    chosen = {
        "failed": failed,
        "expired": expired,
        "lost": lost,
        "cancelled": cancelled,
        "unknown": unknown,
    }
    states = [s for s, on in chosen.items() if on]
    if not states:
        raise click.UsageError(
            "say which jobs: --failed, --expired, --lost, --cancelled or --unknown"
        )
    if unknown and not yes:
        click.confirm(
            "Unknown jobs may already exist remotely and be billed; submitting them again may pay "
            "twice. Continue?",
            abort=True,
        )
    from orchestrator.locate import locate
    from orchestrator.steer import run_command

    n = sweep.retry_jobs(spec, states, store=store, where=where)
    again = run_command(locate(spec, store), spec=spec, store=store)
    click.echo(f"{n} job(s) back to pending; `{again}` submits them")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8188,
    show_default=True,
    help="Port (0 picks a free one).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=3,
    show_default=True,
    help="Simulated GPU workers.",
)
@click.option(
    "--speed",
    type=_Finite(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Divides every simulated job duration.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault dice.")
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="T",
    help="Accepted API token, one account each (default: emulator-token).",
)
@click.option(
    "--balance",
    type=_Finite(0),
    default=100.0,
    show_default=True,
    help="Each account's starting balance in USD.",
)
@click.option(
    "--output-ttl",
    type=_Finite(0),
    default=3600.0,
    show_default=True,
    help="Seconds an output URL lives.",
)
@click.option(
    "--faults",
    "profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML fault profile.",
)
@click.option(
    "--fault",
    "fault_flags",
    multiple=True,
    metavar="NAME=RATE[@EP,...]",
    help="A fault, e.g. rate_limit=0.1@submit (repeatable; adds to --faults).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Journal file: jobs and the ledger survive a restart.",
)
def emulator(
    host: str,
    port: int,
    workers: int,
    speed: float,
    seed: int,
    tokens: tuple[str, ...],
    balance: float,
    output_ttl: float,
    profile: Path | None,
    fault_flags: tuple[str, ...],
    state_path: Path | None,
) -> None:
    """Serve the RunComfy Model API emulator; prints its base URL (ends in /v1) first."""
    from orchestrator import emulator as emu

    faults = emu.load_fault_profile(profile) if profile else emu.FaultProfile()
    flags = {spec.name: spec for spec in map(emu.parse_fault_flag, fault_flags)}
    faults = faults.merged(emu.FaultProfile(faults=flags))
    config = emu.EmulatorConfig(
        workers=workers,
        speed=speed,
        seed=seed,
        tokens=tokens or ("emulator-token",),
        balance_usd=balance,
        output_ttl=output_ttl,
        faults=faults,
        state_path=state_path,
        host=host,
        port=port,
    )
    emu.serve(config)


@cli.command(
    cls=_WithSettings, after="as_jobs", chosen={"concurrency": "Estimate at this concurrency."}
)
@click.argument("spec", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@click.option("--jobs", "as_jobs", is_flag=True, help="Stream every job as JSONL (key, inputs).")
@click.option("--online", is_flag=True, help="Read the model's price from the live catalog first.")
@_STORE
@click.option(
    "--emulator", is_flag=True, help="Validate and price with the emulator's cached catalog."
)
def plan(
    spec: Path,
    as_json: bool,
    as_jobs: bool,
    concurrency: int | None,
    online: bool,
    store: str | None,
    emulator: bool,
) -> None:
    """Show, offline, what a sweep will submit and roughly what it will cost (what is left of
    it, once it ran)."""
    from rich.console import Console

    from orchestrator import load_spec
    from orchestrator import plan as planning
    from orchestrator.models import catalog

    if as_json and as_jobs:
        raise click.UsageError("give --json or --jobs, not both")
    with catalog.using(catalog.EMULATOR if emulator else catalog.in_force()):
        loaded = load_spec(spec).with_run(concurrency=concurrency)
        if online:
            from orchestrator.sweep import refresh_price

            refresh_price(loaded)
        if as_jobs:
            for record in planning.stream_jobs(loaded):
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        from orchestrator.sweep import sweep_left

        summary = planning.plan_summary(loaded, left=sweep_left(loaded, store=store))
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        planning.render_plan(summary, Console(soft_wrap=True))


_SOME_SPEC = click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))


@cli.command()
@_SOME_SPEC
@_STORE
@click.option("--no-wait", is_flag=True, help="Return at once; the run drains at its next tick.")
def stop(spec: Path | None, store: str | None, no_wait: bool) -> None:
    """Ask the live run to drain, like a first Ctrl-C: no new submits; jobs in flight finish and
    are downloaded. Exit 1 when no run is live."""
    from orchestrator.locate import locate
    from orchestrator.steer import run_command, stop_run

    located = locate(spec, store)
    command = run_command(located, spec=spec, store=store)
    click.echo(stop_run(located, wait=not no_wait, command=command))


@cli.command()
@_SOME_SPEC
@click.option("--emulator", is_flag=True, help="The sweep ran on the embedded emulator.")
@_STORE
@click.option("--where", metavar="EXPR", help="Only the jobs whose inputs match: 'cfg >= 5'.")
def cancel(spec: Path | None, emulator: bool, store: str | None, where: str | None) -> None:
    """Cancel pending jobs and those in flight, a run live or not: pending ones are never sent,
    queued ones are cancelled remotely, running ones finish and are billed."""
    from orchestrator.locate import locate
    from orchestrator.steer import cancel_jobs

    report = cancel_jobs(locate(spec, store), where=where, emulator=emulator)
    click.echo(report.line)
    for line in report.failed:
        click.echo(f"could not cancel {line}", err=True)
    if report.failed:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, metavar="[SPEC] DEST", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf", "parquet", "csv", "webdataset"]),
    default="hf",
    show_default=True,
    help="hf: a folder `datasets.load_dataset` reads (metadata.jsonl); parquet, csv: the same "
    "folder with metadata.parquet or metadata.csv; webdataset: tar shards.",
)
@_STORE
@click.option(
    "--include-failed",
    is_flag=True,
    help="Also every job that is not done, as a row without a file (its state and error).",
)
@click.option(
    "--rated",
    type=click.Choice(["up", "down", "pick"]),
    help="Only the jobs rated so (up includes picks).",
)
@click.option(
    "--skip-missing",
    is_flag=True,
    help="Skip done jobs whose file is gone from disk (else the export refuses).",
)
@click.option(
    "--shard-size",
    default="1GB",
    show_default=True,
    metavar="N|SIZE",
    help="webdataset: samples per shard (1000) or bytes (500MB, 1GB).",
)
@click.option(
    "--copy",
    is_flag=True,
    help="Copy the outputs; by default they are hard-linked when DEST is on the same disk.",
)
def export(
    paths: tuple[Path, ...],
    fmt: str,
    store: str | None,
    include_failed: bool,
    rated: str | None,
    skip_missing: bool,
    shard_size: str,
    copy: bool,
) -> None:
    """Export a sweep's outputs as a dataset in the new folder DEST (done jobs; SPEC optional
    inside the results folder)."""
    from orchestrator.export import ExportOptions, export_sweep
    from orchestrator.locate import locate

    if len(paths) not in (1, 2):
        raise click.UsageError("give DEST, or SPEC and DEST")
    *spec, dest = paths
    options = ExportOptions(fmt, include_failed, rated, skip_missing, shard_size, copy)
    report = export_sweep(locate(spec[0] if spec else None, store), dest, options)
    files = f"{report.linked + report.copied} file(s)"
    if report.format != "webdataset":
        files += f" ({report.linked} hard-linked, {report.copied} copied)"
    else:
        files += f" in {report.shards} shard(s)"
    click.echo(
        f"exported {report.rows} row(s) to {report.dest} ({report.format}): {files}, "
        f"{report.media} conditioning file(s)"
    )
    if report.skipped:
        click.echo(f"{report.skipped} missing output(s) skipped (--skip-missing)")
    if report.cleaned:
        click.echo(f"removed {report.cleaned} staging folder(s) a killed export left beside it")


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_STORE
@click.option("--x", "x", metavar="INPUT", help="Input across (default: the one with most values).")
@click.option("--y", "y", metavar="INPUT", help="Input down (default: the next largest).")
@click.option("--z", "z", metavar="INPUT", help="Input as tabs (default: the next largest).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="INPUT=VALUE",
    help="Show only jobs with this value (repeatable); on the Z input, the tab shown.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write, .html (with --video: .mp4); default report.html (report.mp4) in the "
    "results folder. Never the store, a job's output or an input.",
)
@click.option(
    "--video", is_flag=True, help="Write the X/Y view as one labelled mosaic MP4 instead."
)
@click.option(
    "--serve", is_flag=True, help="Serve the page locally, where cells can be rated; Ctrl-C stops."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address --serve listens on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port --serve listens on (0 picks a free one).",
)
def report(
    spec: Path | None,
    store: str | None,
    x: str | None,
    y: str | None,
    z: str | None,
    filters: tuple[str, ...],
    out: Path | None,
    video: bool,
    serve: bool,
    host: str,
    port: int,
) -> None:
    """Write report.html: the sweep's videos on an X/Y grid (Z as tabs), played in sync.

    Opens from file:// offline; --serve also takes ratings, --video writes a mosaic MP4.
    """
    from orchestrator.locate import locate
    from orchestrator.report import build

    if serve and (video or out is not None):
        raise click.UsageError("--serve writes no file: give it without --video and --out")
    wanted = {}
    for item in filters:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--filter {item!r}: give INPUT=VALUE, such as seed=1")
        if name.strip() in wanted:
            raise click.UsageError(f"--filter {name.strip()} is given twice: give one value")
        wanted[name.strip()] = value.strip()
    located = locate(spec, store)
    axes = build.Axes(x, y, z, wanted)
    if serve:
        from orchestrator.report.serve import serve_report

        serve_report(located, axes, host=host, port=port, echo=click.echo)
        return
    if video:
        made = build.write_video(located, axes, out=out)
        click.echo(f"{made.path}: {made.cells} cells")
        return
    made = build.write_report(located, axes, out=out)
    click.echo(
        f"{made.path}: {made.cells} cells ({made.posters_made} posters made, "
        f"{made.posters_reused} reused)"
    )
    click.echo(f"open {made.path.as_uri()}")


_EMULATED = click.option(
    "--emulator", is_flag=True, help="The embedded emulator's catalog (no token, no cost)."
)


@cli.group(invoke_without_command=True)
@click.option("--search", metavar="TEXT", help="Only the models whose id or name holds TEXT.")
@click.option(
    "--output", type=click.Choice(["video", "image", "audio"]), help="Only the models that make it."
)
@_EMULATED
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def models(
    ctx: click.Context, search: str | None, output: str | None, emulator: bool, as_json: bool
) -> None:
    """The model catalog: list the shipped and cached models with their price (`models sync`
    reads the catalog, `models show ID` prints one model's inputs)."""
    ctx.obj = {"emulator": emulator}
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator import catalogview
    from orchestrator.models import catalog

    with catalog.using(catalog.EMULATOR if emulator else catalog.in_force()):
        if as_json:
            click.echo(json.dumps(catalogview.model_rows(search, output), indent=2))
        else:
            click.echo("\n".join(catalogview.models_lines(search, output)))


@models.command("sync")
@_EMULATED
@click.pass_context
def models_sync(ctx: click.Context, emulator: bool) -> None:
    """Read every page of the catalog, with schemas and prices, into the cache (the home
    folder): `plan` and `run` validate against it offline."""
    from orchestrator.catalogsync import sync_catalog

    synced = sync_catalog(emulator=emulator or ctx.obj["emulator"])
    click.echo(synced.line())


@models.command("show")
@click.argument("model_id", metavar="ID")
@_EMULATED
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def models_show(ctx: click.Context, model_id: str, emulator: bool, as_json: bool) -> None:
    """One model's inputs (type, range, enum, default, required, media), output kind and price."""
    from orchestrator import catalogview
    from orchestrator.models import catalog

    emulated = emulator or ctx.obj["emulator"]
    with catalog.using(catalog.EMULATOR if emulated else catalog.in_force()):
        if as_json:
            click.echo(json.dumps(catalogview.show_data(model_id), indent=2))
        else:
            click.echo("\n".join(catalogview.show_lines(model_id)))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="comfysweep")


if __name__ == "__main__":  # pragma: no cover
    main()
