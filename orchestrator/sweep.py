"""What the CLI's run, status, retry, cancel and plan --online do, as library calls."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import socket
import stat
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio

from orchestrator import drift, prices
from orchestrator.client import ModelApiClient, ModelInfo
from orchestrator.errors import ComfysweepError, StoreError
from orchestrator.grid import iter_jobs
from orchestrator.models import get_model
from orchestrator.pacing import Pacer
from orchestrator.progress import make_progress
from orchestrator.results import LOG_FILE, STORE_FILE, ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.runner import CancelReport, Runner, RunOptions, RunReport, cancel_queued
from orchestrator.settings import emulated_poll
from orchestrator.spec import Spec, load_spec
from orchestrator.store import RETRYABLE, JobState, Store

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
    "sweep_status",
]

log = logging.getLogger("comfysweep")

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
    rate: float | None = None


def store_path(spec: Spec, store: str | Path | None = None) -> str | Path:
    """The store a sweep uses: ``--store`` if given, else a file inside its results folder."""
    return store if store is not None else spec.results_dir / STORE_FILE


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
) -> RunReport:
    """Run (or resume) a sweep to the end: submit, poll, download; returns how it ended.

    Jobs that differ from submitted ones only in a changed schema default are rendered again only
    with ``yes`` or when ``confirm(question)`` agrees; otherwise DefaultsChanged, nothing paid.
    """
    spec = _loaded(spec).with_run(**asdict(overrides or Overrides()))
    options = _options(spec, emulator, abort_on_stop=abort_on_stop, handle_signals=handle_signals)
    if emulator is False:
        ModelApiClient.check_token(token)  # no token: say so before touching the store
    _make_folder(spec.results_dir)
    path = store_path(spec, store)
    with (
        _run_log(spec.results_dir / LOG_FILE),
        Store.open(path) as db,
        db.lock(owner=f"comfysweep run {spec.name}"),
        _backend(emulator, spec, base_url, token) as (url, key),
    ):
        client = ModelApiClient(
            url, key, retry=retry, timeout=options.timeout, pacer=Pacer(options.rate)
        )
        _check_owner(spec, db, db.bind_sweep(spec.name))
        _sync(db, spec, (lambda _: True) if yes else confirm)
        if force:
            renewed = _renew_done(db)
            log.info("--force: %d finished job(s) will render again", renewed)
        progress = make_progress(stream) if stream is not None else None
        try:
            return anyio.run(_run, db, spec, options, client, progress)
        finally:
            if progress is not None:
                progress.close()


def _sync(db: Store, spec: Spec, confirm: Callable[[str], bool] | None) -> None:
    """Record the spec's jobs; re-renders that only a changed default asks for need ``confirm``."""
    meta = db.get_meta(drift.META)
    sample = next(iter(db.jobs()), None) if meta is None else None
    guard = drift.DefaultsDrift.between(spec, drift.recorded(meta, sample, spec), confirm)
    synced = db.sync_jobs(iter_jobs(spec), spec.model, guard=guard)
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


async def _run(
    db: Store,
    spec: Spec,
    options: RunOptions,
    client: ModelApiClient,
    progress: Any,
) -> RunReport:
    model = get_model(spec.model)
    folder = ResultsFolder(spec.results_dir, model, spec.filename)
    async with client:
        info = await _catalog(client, spec.model)
        sample = next(iter(db.jobs([JobState.PENDING], in_spec=True)), None)
        price = prices.job_cost(model, info, sample.inputs) if info and sample else None
        runner = Runner(db, client, folder, options, progress=progress, price_per_job=price)
        runner.polls.remember(prices.last_duration(spec.model, api_base=client.base_url))
        report = await runner.run()
    if runner.durations:
        median = statistics.median(runner.durations)
        prices.remember_duration(spec.model, median, api_base=client.base_url)
    return report


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
    """Read the model's price from the live catalog and remember it for later estimates."""
    spec = _loaded(spec)

    async def fetch() -> ModelInfo:
        async with ModelApiClient(base_url, token) as client:
            info = await client.model(spec.model)
            prices.remember_price(spec.model, info, api_base=client.base_url)
            return info

    return anyio.run(fetch)


def sweep_status(spec: Spec | str | Path, *, store: str | Path | None = None) -> dict[str, Any]:
    """Counts of the sweep's jobs per state, readable while a run writes.

    ``counts`` and ``jobs`` are the spec's jobs; ``orphaned`` counts the jobs a spec edit left
    behind, kept in the store and the manifest but never submitted again.
    """
    spec = _loaded(spec)
    path = store_path(spec, store)
    _require_store(path)
    with Store.open(path, readonly=True) as db:
        _check_owner(spec, db)
        counts = db.counts(in_spec=True)
        return {
            "sweep": spec.name,
            "store": str(path),
            "results": str(spec.results_dir),
            "jobs": sum(counts.values()),
            "counts": counts,
            "orphaned": sum(db.counts(in_spec=False).values()),
            "spent_usd": db.spent(),
        }


def retry_jobs(
    spec: Spec | str | Path, states: Iterable[JobState | str], *, store: str | Path | None = None
) -> int:
    """Put the sweep's jobs in ``states`` back to pending, on purpose; returns how many."""
    spec = _loaded(spec)
    chosen = {JobState(s) for s in states}
    wrong = chosen - RETRYABLE
    if wrong:
        raise StoreError(f"cannot retry jobs that are {', '.join(sorted(wrong))}")
    path = store_path(spec, store)
    _require_store(path)
    with Store.open(path) as db, db.lock(owner=f"comfysweep retry {spec.name}"):
        _check_owner(spec, db)
        keys = [row.key for row in db.jobs(chosen, in_spec=True)]
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
    _require_store(path)
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
        settings["rate"] = spec.run.rate * speed
    return RunOptions(**settings, abort_on_stop=abort_on_stop, handle_signals=handle_signals)


def _loaded(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def _require_store(path: str | Path) -> None:
    if isinstance(path, Path) and not path.exists():
        raise StoreError(f"{path}: no store yet; `comfysweep run` creates it")


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
