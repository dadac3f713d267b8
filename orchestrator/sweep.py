"""What the CLI's run, status, retry, cancel and plan --online do, as library calls."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shlex
import socket
import stat
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio

from orchestrator import budget, drift, estimate, prices
from orchestrator.catalogsync import refresh_unseen, sourced
from orchestrator.client import ModelApiClient, ModelInfo, env_http_transport, env_token
from orchestrator.deadline import Deadline, parse_until
from orchestrator.errors import ComfysweepError, StoreError
from orchestrator.grid import count_jobs, iter_jobs
from orchestrator.locate import load_recorded, no_store_file, require_store
from orchestrator.models import get_model
from orchestrator.notify import Notifier
from orchestrator.pacing import Pacer
from orchestrator.progress import make_progress
from orchestrator.results import LOG_FILE, STORE_FILE, ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.runner import CancelReport, Runner, RunOptions, RunReport, cancel_queued
from orchestrator.settings import emulated_poll
from orchestrator.spec import Spec
from orchestrator.store import RETRYABLE, JobState, Store
from orchestrator.summary import Invocation, RunAccount
from orchestrator.where import select

if TYPE_CHECKING:
    from orchestrator.emulator import EmulatorConfig

__all__ = [
    "EMULATOR_SPEED",
    "RETRYABLE",
    "CancelReport",
    "cancel_sweep",
    "refresh_price",
    "retry_jobs",
    "run_sweep",
    "store_path",
    "sweep_left",
    "sweep_status",
]

log = logging.getLogger("comfysweep")

# The store's meta entry holding the price a run's estimates use (so a resume without a catalog
# answer still has one).
PRICE_META = "price"
# The quickstart's emulator: a demo in seconds, with a render time that still shows in progress.
EMULATOR_SPEED = 40.0


@dataclass(frozen=True)
class Overrides:
    """Run settings given as flags (``RunSettings`` declares each); None keeps the spec's value."""

    concurrency: int | None = None
    downloads: int | None = None
    poll_interval: float | None = None
    max_cost: float | None = None
    timeout: float | None = None
    confirm_above: float | None = None
    notify: str | None = None
    order: str | None = None
    stall_after: float | None = None
    max_failures: str | None = None
    retries: int | None = None
    rate: float | None = None
    http_transport: str | None = None


def store_path(spec: Spec, store: str | Path | None = None) -> str | Path:
    """The store a sweep uses: ``--store`` if given, else a file inside its results folder."""
    return store if store is not None else spec.results_dir / STORE_FILE


@sourced  # the catalog cache and prices of the API this run uses (models/catalog.py)
def run_sweep(
    spec: Spec | str | Path,
    *,
    emulator: bool | EmulatorConfig = False,
    store: str | Path | None = None,
    overrides: Overrides | None = None,
    force: bool = False,
    abort_on_stop: bool = False,
    handle_signals: bool = False,
    stream: IO[str] | None = None,
    base_url: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    out: IO[str] | None = None,
    until: str | Deadline | None = None,
    price: str | budget.Price | None = None,
) -> RunReport:
    """Run (or resume) a sweep to the end: submit, poll, download; returns how it ended.

    Jobs that differ from submitted ones only in a changed schema default are rendered again only
    with ``yes`` or when ``confirm(question)`` agrees; otherwise DefaultsChanged, nothing paid.
    Before the first submit the estimate of what is left is printed on ``out`` (the CLI's stdout;
    ``stream`` shows the progress); above ``run.confirm_above`` it needs ``yes`` or ``confirm``'s
    agreement (no ``confirm``: no question). When the runner ends, for any reason, its account is
    printed on ``out`` and written to summary.md.
    ``price`` (``--price``: "0.05/second", "0.25/output") beats the catalog's for the estimates
    the budget reserves.
    """
    given = budget.parse_price(price) if isinstance(price, str) else price
    if not isinstance(spec, Spec):  # a model the cache has never seen: read its entry first
        refresh_unseen(spec, emulator=emulator, base_url=base_url, token=token)
    given_run = asdict(overrides or Overrides())
    given_run["http_transport"] = given_run["http_transport"] or env_http_transport()
    spec = _loaded(spec).with_run(**given_run)
    deadline = parse_until(until) if isinstance(until, str) else until  # before anything is paid
    options = _options(spec, emulator, abort_on_stop=abort_on_stop, handle_signals=handle_signals)
    # Malformed: said before any cost. Never given the token (held to scrub it from notices).
    notifier = Notifier.parse(spec.run.notify, token=token or _env_token())
    options = options.model_copy(update={"deadline": deadline})
    if emulator is False:
        ModelApiClient.check_token(token)  # no token: say so before touching the store
    _make_folder(spec.results_dir)
    path = store_path(spec, store)
    with (
        _run_log(spec.results_dir / LOG_FILE),
        _notice_of_failure(notifier, spec),
        Store.open(path) as db,
        db.lock(owner=f"comfysweep run {spec.name}"),
        _backend(emulator, spec, base_url, token) as (url, key),
    ):
        client = ModelApiClient(
            url,
            key,
            retry=retry,
            timeout=options.timeout,
            pacer=Pacer(options.rate),
            http_transport=options.http_transport,
        )
        if notifier is not None:
            notifier.token = key or _env_token()
        _check_owner(spec, db, db.bind_sweep(spec.name))
        agree = (lambda _: True) if yes else confirm
        _sync(db, spec, agree)
        if force:
            renewed = _renew_done(db)
            log.info("--force: %d finished job(s) will render again", renewed)
        how = Invocation(
            _typed(spec.path),
            emulator is not False,
            _shown_store(store),
            _given(overrides, secret=key or _env_token()),
        )
        morning = RunAccount(db, how, spec.name, spec.results_dir, spec.run.max_cost, notifier, out)
        command = _command(spec, emulator, _shown_store(store))
        start = _Start(morning, agree, stream)
        return anyio.run(_run, db, spec, options, client, start, given, command)


@contextlib.contextmanager
def _notice_of_failure(notifier: Notifier | None, spec: Spec) -> Iterator[None]:
    """A run that fails before its account exists (a store another run holds, the store of
    another sweep, ...) still tells the notifier: an overnight run that never started is news.
    Not a question the user declined: they are there."""
    try:
        yield
    except ComfysweepError as exc:
        declined = isinstance(exc, estimate.Declined)
        if notifier is not None and not notifier.told_end and not declined:
            notifier.send(
                {
                    "event": "end",
                    "sweep": spec.name,
                    "results": str(spec.results_dir),
                    "outcome": "stopped by an error",
                    "stop_reason": str(exc),
                    "stop_kind": "error",
                    "complete": False,
                }
            )
        raise


def _sync(db: Store, spec: Spec, confirm: Callable[[str], bool] | None) -> None:
    """Record the spec's jobs; re-renders that only a changed default asks for need ``confirm``."""
    meta = db.get_meta(drift.META)
    sample = next(iter(db.jobs()), None) if meta is None else None
    guard = drift.DefaultsDrift.between(spec, drift.recorded(meta, sample, spec), confirm)
    synced = db.sync_jobs(iter_jobs(spec), spec.models, guard=guard)
    db.set_meta(drift.META, drift.current_defaults(spec))
    log.info("sweep %s: %d jobs in the spec, %d new", spec.name, synced.total, synced.new)
    if guard is not None and guard.jobs:
        log.info("%d job(s) render again after a schema default changed (confirmed)", guard.jobs)


def _check_owner(spec: Spec, db: Store, owner: Any = None) -> None:
    """Refuse the store of another sweep, before anything is synced, submitted or paid.

    ``owner`` is what the store records (``Store.bind_sweep``); None reads it. A store older than
    the record belongs to whoever runs it first.
    """
    if owner is None:
        owner = db.get_meta("sweep")
    if owner is not None and owner != spec.name:
        raise StoreError(
            f"store {db.name} belongs to sweep {owner!r}, not {spec.name!r} ({spec.path}): "
            f"give {spec.name!r} its own --store, or name the spec {owner!r} if it was renamed"
        )


@dataclass(frozen=True)
class _Start:
    """What a run needs around the runner: the account, the question, the user's stream."""

    account: RunAccount
    confirm: Callable[[str], bool] | None
    stream: IO[str] | None


async def _run(
    db: Store,
    spec: Spec,
    options: RunOptions,
    client: ModelApiClient,
    start: _Start,
    given: budget.Price | None = None,
    command: str = "comfysweep run SPEC",
) -> RunReport:
    model = get_model(spec.model)
    folder = ResultsFolder(spec.results_dir, model, spec.filename)
    folder.models = {part.model: (part.definition, part.label) for part in spec.each()}
    morning = start.account
    async with client:
        info = given or await _catalog(client, spec.model)
        price = _price(info, db, spec, client.base_url)
        each = await _several_prices(client, spec, given, price) if spec.parts else None
        _before_paying(db, spec, client, price, start, each)
        morning.balance_before = await client.balance()
        morning.started = time.monotonic()
        progress = make_progress(start.stream) if start.stream is not None else None
        estimate = each or budget.estimator(model, price)
        runner = Runner(
            db, client, folder, options, progress=progress, estimate=estimate, command=command
        )
        runner.on_event = morning.event
        runner.price_given = given is not None
        runner.polls.remember(prices.last_duration(spec.model, api_base=client.base_url))
        try:
            report = await runner.run()
        except BaseException as exc:
            if progress is not None:
                progress.close()
            _account_of_failure(morning, exc, client)
            raise
        if progress is not None:
            progress.close()
        report.account = await _account_of_end(db, spec, client, price, report, morning, each)
    if runner.durations:
        median = statistics.median(runner.durations)
        prices.remember_duration(spec.model, median, api_base=client.base_url)
    return report


async def _several_prices(
    client: ModelApiClient, spec: Spec, given: budget.Price | None, first: budget.Price | None
) -> budget.Estimator:
    """The estimator of a sweep of several models: ``--price`` for every model, else each
    model's catalog price (the first model's is ``first``)."""
    priced = [(spec.parts[0].definition, first)]
    for part in spec.parts[1:]:
        price = given
        if price is None:
            info = await _catalog(client, part.model)
            found = None if info is None else budget.checked(info.base_price_usd, info.price_unit)
            price = None if found is None else _honest(found, spec)
        priced.append((part.definition, price))
    return budget.several_estimator(priced)


def _forecast(
    db: Store,
    spec: Spec,
    client: ModelApiClient,
    price: budget.Price | None,
    each: budget.Estimator | None = None,
) -> estimate.Forecast:
    """What is left, priced as the budget reserves it (``--price``, the catalog, the store's)."""
    return estimate.forecast(
        db,
        get_model(spec.model),
        price,
        concurrency=spec.run.concurrency,
        cap_usd=spec.run.max_cost,
        job_seconds=prices.last_duration(spec.model, api_base=client.base_url),
        price_note=f"no price known for {spec.model} (give one: --price 0.05/second)",
        each=each,
    )


def _before_paying(
    db: Store,
    spec: Spec,
    client: ModelApiClient,
    price: budget.Price | None,
    start: _Start,
    each: budget.Estimator | None = None,
) -> None:
    """Say what is left and what it costs; above ``run.confirm_above``, ask (on a terminal)."""
    ahead = _forecast(db, spec, client, price, each)
    for line in estimate.forecast_lines(ahead):
        start.account.say(line)
    payable = ahead.payable_usd
    if start.confirm is None or ahead.pending == 0 or payable is None:
        return
    if payable > spec.run.confirm_above and not start.confirm(estimate.question(ahead)):
        raise estimate.Declined(
            "not confirmed: nothing submitted, nothing paid (`--yes` skips the question; "
            f"`--confirm-above USD` raises its threshold, now ${spec.run.confirm_above:.2f})"
        )


async def _account_of_end(
    db: Store,
    spec: Spec,
    client: ModelApiClient,
    price: budget.Price | None,
    report: RunReport,
    morning: RunAccount,
    each: budget.Estimator | None = None,
) -> dict[str, Any]:
    """The account of a run that ended (done, budget, Ctrl-C, a fatal stop): said and written."""
    after = await client.balance()
    left = None
    if report.stop_kind == "budget":  # the --max-cost that would go on: priced like the start
        ahead = _forecast(db, spec, client, price, each)  # beyond spent, as the claim counts it
        finish = ahead.finishing_cap_usd
        left = None if finish is None else finish - ahead.spent_usd
    data = morning.data(
        stop_reason=report.stop_reason,
        stop_kind=report.stop_kind,
        fatal=report.fatal,
        elapsed=report.elapsed,
        requests=client.requests_sent,
        balance_after=after,
        left_usd=left,
    )
    morning.end(data)
    return data


def _account_of_failure(morning: RunAccount, exc: BaseException, client: ModelApiClient) -> None:
    """The account of a run an error (or a second Ctrl-C) ended; never hides that error."""
    reason = str(exc) or type(exc).__name__
    stopped = isinstance(exc, KeyboardInterrupt | anyio.get_cancelled_exc_class())
    kind = "interrupted" if stopped else "error"
    try:
        morning.end(
            morning.data(
                stop_reason=reason, stop_kind=kind, fatal=True, requests=client.requests_sent
            )
        )
    except (ComfysweepError, OSError) as failure:  # the store itself may be what failed
        log.warning("the run's account could not be made: %s", failure)


def _env_token() -> str | None:
    found = env_token()
    return None if found is None else found[0]


def _typed(path: Path) -> str:
    """The spec's path as the user would type it here: relative when under this folder."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _given(overrides: Overrides | None, *, secret: str | None) -> tuple[str, ...]:
    """The setting flags a run was given, as words the resume command repeats (--until and
    --force never: a deadline passes, and --force would render the done jobs once more; nor a
    --notify URL: a webhook's URL is its secret). The API token, if a value holds it (a --notify
    command), is masked: the summary never has it."""
    words: list[str] = []
    for name, value in asdict(overrides or Overrides()).items():
        if name == "notify" and str(value).lower().startswith(("http://", "https://")):
            continue
        if value is not None:
            text = str(value)
            if secret:
                text = text.replace(secret, "***")
            words += ["--" + name.replace("_", "-"), text]
    return tuple(words)


_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def _shown_store(store: str | Path | None) -> str | None:
    """``--store`` as the summary repeats it: a URL's password masked."""
    if store is None:
        return None
    text = str(store)
    if "://" not in text:
        return text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except ArgumentError:
        return "URL"
    # libpq takes a password in the query too (?password=, ?sslpassword=): masked as well.
    hidden = {k: "***" for k in url.query if _SECRET_PARAM.search(k)}
    shown = url.update_query_dict(hidden).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")


def _price(
    info: budget.Price | ModelInfo | None, db: Store, spec: Spec, api_base: str
) -> budget.Price | None:
    """``--price`` or the catalog's (kept in the store), else the one an earlier run kept there,
    else the catalog's price this machine last read for the model at this API host.

    Under a cap, a price of $0 that the user did not give (``--price 0``) is no price: it would
    reserve nothing, and let every job in flight be billed past the cap."""
    fresh = info if isinstance(info, budget.Price) or info is None else None
    if isinstance(info, ModelInfo):
        fresh = budget.checked(info.base_price_usd, info.price_unit)
    if fresh is not None:
        db.set_meta(PRICE_META, fresh.to_meta() | {"model": spec.model})
        return _honest(fresh, spec)
    kept = _kept(db, spec.model)
    if kept is not None:
        return _honest(kept, spec)
    seen = prices.last_price(spec.model, api_base=api_base)
    found = None if seen is None else budget.checked(seen.base_price_usd, seen.price_unit)
    return None if found is None else _honest(found, spec)


def _kept(db: Store, model_id: str) -> budget.Price | None:
    """The price an earlier run kept in the store, if it was ``model_id``'s: a sweep whose
    first model changed (a model list reordered, a model replaced) must not price its jobs at
    another model's price (an older store's price names no model: it was its one model's)."""
    meta = db.get_meta(PRICE_META)
    if isinstance(meta, dict) and meta.get("model", model_id) != model_id:
        return None
    return budget.Price.from_meta(meta)


def _honest(price: budget.Price, spec: Spec) -> budget.Price | None:
    if price.usd > 0 or price.source == "--price" or spec.run.max_cost is None:
        return price
    log.warning("%s gives %s for %s: no price the budget can keep", price.source, price, spec.model)
    return None


def _command(spec: Spec, emulator: bool | EmulatorConfig, store: str | Path | None) -> str:
    """How the user runs this sweep again (for the messages that say how to go on)."""
    words = ["comfysweep", "run", str(spec.path)]
    if emulator is not False:
        words.append("--emulator")
    if store is not None:
        words += ["--store", str(store)]
    return shlex.join(words)


async def _catalog(client: ModelApiClient, model_id: str) -> ModelInfo | None:
    try:
        info = await client.model(model_id)
    except ComfysweepError as exc:
        log.warning("the model catalog did not answer (%s): cost estimates are unknown", exc)
        return None
    prices.remember_price(model_id, info, api_base=client.base_url)
    return info


def refresh_price(
    spec: Spec | str | Path, *, base_url: str | None = None, token: str | None = None
) -> ModelInfo:
    """Read the model's price from the live catalog and remember it for later estimates (every
    model's, in a sweep of several; the first's is returned)."""
    spec = _loaded(spec)

    async def fetch() -> ModelInfo:
        async with ModelApiClient(base_url, token) as client:
            found = []
            for model_id in spec.models:
                info = await client.model(model_id)
                prices.remember_price(model_id, info, api_base=client.base_url)
                found.append(info)
            return found[0]

    return anyio.run(fetch)


def sweep_status(
    spec: Spec | str | Path | None = None, *, store: str | Path | None = None
) -> dict[str, Any]:
    """What ``status`` says, readable while a run writes: counts per state, money, the live run,
    rate and ETA, the oldest job in flight, failures grouped (orchestrator.views.status_figures).

    ``counts`` and ``jobs`` are the spec's jobs; ``orphaned`` counts the jobs a spec edit left
    behind, kept in the store and the manifest but never submitted again. No ``spec``: the store
    ``store`` names, or the results folder the current directory is.
    """
    from orchestrator import views

    return views.sweep_status(spec, store=store)


def sweep_left(
    spec: Spec | str | Path, *, store: str | Path | None = None, concurrency: int | None = None
) -> estimate.Forecast | None:
    """What is left of a sweep that ran already (None before its store exists), offline:
    priced as its runs reserve (the price kept in the store: ``--price`` or the catalog's), else
    by the last catalog price seen; under the spec's cap, else the last run's (as ``status``);
    timed by the last observed job duration."""
    spec = _loaded(spec)
    path = store_path(spec, store)
    if no_store_file(path):
        return None
    with Store.open(path, readonly=True) as db:
        _check_owner(spec, db)
        kept = _kept(db, spec.model)
        cap = spec.run.max_cost if spec.run.max_cost is not None else db.ledger().cap_usd
        each = None
        if spec.parts:  # each model at its price: the first's kept one, else the last seen
            each = budget.several_estimator(
                [
                    (p.definition, (kept if i == 0 else None) or _seen(p.model))
                    for i, p in enumerate(spec.parts)
                ]
            )
        return estimate.forecast(
            db,
            get_model(spec.model),
            kept or prices.last_price(spec.model),
            concurrency=concurrency or spec.run.concurrency,
            cap_usd=cap,
            job_seconds=prices.last_duration(spec.model),
            price_note=f"no catalog price seen yet for {spec.model}",
            each=each,
            new=_new_jobs(spec, db),
        )


PLAN_NEW_LIMIT = 100_000  # a larger grid is not walked by plan to find the jobs a change adds


def _new_jobs(spec: Spec, db: Store) -> list[dict[str, Any]]:
    """The inputs (as the store hands them to an estimator) of the spec's jobs the store does not
    hold: an axis or a model added since the last run (``plan`` says what is left of it)."""
    if count_jobs(spec).jobs > PLAN_NEW_LIMIT:
        return []
    jobs = list(iter_jobs(spec))
    known = db.known_keys([job.key for job in jobs])
    return [{**job.inputs, budget.JOB_MODEL: job.model_id} for job in jobs if job.key not in known]


def _seen(model_id: str) -> budget.Price | None:
    seen = prices.last_price(model_id)
    return None if seen is None else budget.checked(seen.base_price_usd, seen.price_unit)


def retry_jobs(
    spec: Spec | str | Path,
    states: Iterable[JobState | str],
    *,
    store: str | Path | None = None,
    where: str | None = None,
) -> int:
    """Put the sweep's jobs in ``states`` (that ``where`` matches) back to pending, on purpose;
    returns how many. A ``where`` that matches none of them is an error: nothing changes."""
    spec = spec if isinstance(spec, Spec) else load_recorded(spec)
    chosen = {JobState(s) for s in states}
    wrong = chosen - RETRYABLE
    if wrong:
        raise StoreError(f"cannot retry jobs that are {', '.join(sorted(wrong))}")
    path = store_path(spec, store)
    require_store(path)
    with Store.open(path) as db, db.lock(owner=f"comfysweep retry {spec.name}"):
        _check_owner(spec, db)
        if where is None:
            keys = [row.key for row in db.jobs(chosen, in_spec=True)]
        else:
            picked = select(where, db.jobs(in_spec=True), lambda row: row.state in chosen)
            keys = [row.key for row in picked]
            if not keys:
                raise ComfysweepError(
                    f"--where {where!r} matches none of the {'/'.join(sorted(chosen))} jobs "
                    "of the sweep: nothing put back"
                )
        for key in keys:
            db.transition(key, JobState.PENDING, detail="retry requested")
        return len(keys)


def cancel_sweep(
    spec: Spec | str | Path,
    *,
    emulator: bool | EmulatorConfig = False,
    store: str | Path | None = None,
    base_url: str | None = None,
    token: str | None = None,
) -> CancelReport:
    """Cancel the sweep's jobs still queued remotely; running jobs cannot be and are billed."""
    spec = _loaded(spec)
    path = store_path(spec, store)
    require_store(path)
    with (
        Store.open(path) as db,
        db.lock(owner=f"comfysweep cancel {spec.name}"),
        _backend(emulator, spec, base_url, token) as (url, key),
    ):
        _check_owner(spec, db)
        return anyio.run(_cancel, db, ModelApiClient(url, key))


async def _cancel(db: Store, client: ModelApiClient) -> CancelReport:
    async with client:
        report = await cancel_queued(client, list(db.jobs([JobState.QUEUED, JobState.RUNNING])))
    for key in report.keys:
        db.transition(key, JobState.CANCELLED, detail="cancelled on request")
    return report


def _renew_done(db: Store) -> int:
    keys = [row.key for row in db.jobs([JobState.DONE], in_spec=True)]
    for key in keys:
        db.transition(key, JobState.PENDING, detail="--force: render again")
    return len(keys)


def _options(
    spec: Spec, emulator: bool | EmulatorConfig, *, abort_on_stop: bool, handle_signals: bool
) -> RunOptions:
    """The runner's options: the spec's settings (flags applied), and the emulator's time scale.

    The emulator runs every job ``speed`` times faster than the API, so a poll interval chosen
    for the API is divided by the same speed: the run polls as often per job as it would there.
    """
    settings = spec.run.model_dump()
    if emulator is not False:
        speed = EMULATOR_SPEED if emulator is True else emulator.speed
        settings["poll_interval"] = emulated_poll(spec.run.poll_interval, speed)
        settings["stall_after"] = spec.run.stall_after / speed
        settings["rate"] = spec.run.rate * speed
    return RunOptions(**settings, abort_on_stop=abort_on_stop, handle_signals=handle_signals)


def _loaded(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_recorded(spec)


@contextlib.contextmanager
def _backend(
    emulator: bool | EmulatorConfig, spec: Spec, base_url: str | None, token: str | None
) -> Iterator[tuple[str | None, str | None]]:
    if emulator is False:
        yield base_url, token
        return
    from orchestrator.emulator import Emulator, EmulatorConfig

    config = (
        emulator
        if isinstance(emulator, EmulatorConfig)
        else EmulatorConfig(speed=EMULATOR_SPEED, state_path=spec.results_dir / ".emulator")
    )
    with Emulator(config) as emu:
        log.info("embedded emulator at %s", emu.base_url)
        yield emu.base_url, emu.token


def _make_folder(folder: Path) -> None:
    """Create the results folder; one that cannot be created is one line, not a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ComfysweepError(f"{folder}: cannot create the folder: {why}") from None


class _RunLogHandler(logging.FileHandler):
    """run.log; a line the disk refuses is dropped, not a traceback on stderr for each line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the store has every job; the run says itself when the disk stops it
        super().handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the last lines' flush, on a full disk
            super().close()

    def _open(self) -> io.TextIOWrapper:
        """Never through a symlink, nor into a FIFO: a results folder from elsewhere may hold
        one, and a log line (a server's error text) must not land in, say, ~/.bashrc."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(self.baseFilename, flags | os.O_CLOEXEC, 0o666)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    try:
        handler = _RunLogHandler(path, encoding="utf-8")
    except OSError as exc:  # a read-only or full folder: say so before anything is paid
        why = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EINVAL):
            why = "it is a symlink or not a regular file; comfysweep never writes through one"
        raise ComfysweepError(f"{path.parent}: cannot write {path.name}: {why}") from None
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {socket.gethostname()}:{os.getpid()} %(levelname)s %(name)s: %(message)s"
        )
    )
    root = logging.getLogger("comfysweep")
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
