"""The job store: every write to a sweep's state, in short transactions.

The per-job path (transition, claim, update, sync) is SQLAlchemy Core with statements built once
(orchestrator/store/sql.py), never the ORM: a transition with its event costs ~120 us on SQLite,
~45 us of it the commit, so the runner calls it inline from the event loop, and commits the
writes of many jobs together (``apply``, through store/batch.py's group commit) and claims a
batch of jobs at once (``claim_batch``). A Store is one connection, used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from orchestrator import budget
from orchestrator.canonical import canonical_json
from orchestrator.errors import StoreBusyError, StoreError, TransitionError
from orchestrator.store import books, schema, sql
from orchestrator.store.batch import Write
from orchestrator.store.blobs import BlobCache, Splitter, blob_shas
from orchestrator.store.lock import FileLock, is_held
from orchestrator.store.rows import (
    Control,
    Event,
    JobLike,
    JobRow,
    RunInfo,
    RunRecord,
    SyncGuard,
    SyncResult,
    encode_fields,
)
from orchestrator.store.states import TRANSITIONS, JobState, allowed_from

__all__ = ["RATING_VALUES", "Claim", "Claims", "RunRecord", "Store"]

_S = JobState
# Committed with an fsync on SQLite (synchronous=FULL): losing `submitting` to a power cut would
# resubmit a job that may have been sent; losing `queued` would forget the request id of a paid job.
DURABLE = frozenset({_S.SUBMITTING, _S.QUEUED})
PAGE = 500
OUTPUTS_BATCH = 5000  # rows of (key, outputs) fetched at once: a few hundred bytes each
_STREAMED = {"yield_per": OUTPUTS_BATCH}
MODELS_META = "models"  # the spec's model ids, as the last sync_jobs recorded them
# A digest of each batch of jobs the last sync_jobs recorded (key, index, sources, rank): a batch
# whose digest is the same is known already, every job of it in the spec at the same place.
SYNCED_META = "synced_batches"
SYNC_BATCH = 1000
# Streaming reads this many distinct uncached blobs at a time, not a whole page's worth at once.
BLOB_WINDOW = 8


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(batch: Sequence[JobLike]) -> str:
    """What sync_jobs writes of these jobs, in this order, as 32 hex digits."""
    h = hashlib.blake2b(digest_size=16)
    for job in batch:
        src = sql.sources_text(job)
        h.update(f"{job.key}\0{job.index}\0{sql.rank_of(job)}\0{src}\1".encode())
    return h.hexdigest()


def _at(recorded: Sequence[str] | None, i: int) -> str | None:
    return recorded[i] if recorded is not None and i < len(recorded) else None


def _pg_insert() -> Any:
    """PostgreSQL's INSERT (with ON CONFLICT), imported only for a PostgreSQL store: `status`
    on an SQLite store never loads that dialect."""
    from sqlalchemy.dialects import postgresql

    return postgresql.insert


@dataclass(frozen=True)
class Claim:
    """What claim_within() did: a job now submitting with its reservation, or why none.

    ``refused`` is "budget" (the next job's estimate does not fit under the cap), "price" (a cap
    but no estimate for the next job), "busy" (the store-wide concurrency is reached), or None
    with ``row`` None when no job of the spec is pending.
    """

    row: JobRow | None
    refused: str | None
    estimate: float | None
    ledger: books.Ledger


@dataclass(frozen=True)
class Claims:
    """What claim_batch() did: the jobs now submitting, in rank order, and why it took no more.

    ``refused`` and ``estimate`` are Claim's, for the job after the last one taken (None with
    ``refused`` None: the batch is full, or no more job of the spec is pending).
    """

    rows: list[JobRow]
    refused: str | None
    estimate: float | None
    ledger: books.Ledger


def _fitting(
    found: Sequence[Any],
    guesses: Sequence[float | None],
    ledger: books.Ledger,
    cap: float | None,
    concurrency: int | None,
) -> tuple[dict[str, float], str | None, float | None]:
    """The picked jobs that fit, in order ({key: reservation}), the refusal that ended the run
    of them, and the estimate of the last job looked at. The same sums, in the same order, as the
    ledger's conditional UPDATE would make one job at a time."""
    taken: dict[str, float] = {}
    reserved = ledger.reserved_usd
    guess: float | None = None
    for job, guess in zip(found, guesses, strict=True):
        if cap is not None and guess is None:
            return taken, "price", None
        e = guess or 0.0
        # The budget first: a slot freeing up would not make this job fit.
        if cap is not None and not ledger.spent_usd + reserved + e <= cap + budget.EPSILON:
            return taken, "budget", guess
        if concurrency is not None and ledger.in_flight + len(taken) >= concurrency:
            return taken, "busy", guess
        taken[job.key] = e
        reserved += e
    return taken, None, guess


class Store:
    """A sweep's jobs, their states and history, in an SQLite file or a PostgreSQL database."""

    def __init__(
        self, engine: Engine, conn: Connection, *, name: str, path: Path | None, readonly: bool
    ) -> None:
        self._engine = engine
        self._conn: Connection | None = conn
        self.name = name
        self.path = path
        self.readonly = readonly
        self.is_sqlite = path is not None
        # The file itself, whatever spelling opened it (symlink, `..`): the runner lock and the
        # files kept beside the store hang off this, so two spellings never make two locks.
        self.real_path = None if path is None else Path(os.path.realpath(path))
        self._insert = sqlite.insert if self.is_sqlite else _pg_insert()
        self._synchronous = "NORMAL"
        self._run_id: int | None = None
        self._lock_held = False
        self._blobs = BlobCache()
        self._rated = True  # the ratings table exists (see open)
        # The one connection, used by one thread at a time. The runner's group commit commits on
        # the event loop; the guard holds for any caller that opens a transaction from a worker
        # thread (benchmarks/store_path.py's threaded side does) while the loop wants a read.
        self._guard = threading.RLock()

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, target: str | os.PathLike[str], *, readonly: bool = False) -> Store:
        """Open an SQLite file or a postgresql+psycopg URL; migrates it unless ``readonly``."""
        url, path = schema.resolve(target)
        name = str(path) if path is not None else url.render_as_string(hide_password=True)
        engine, conn = schema.connect(url, path, readonly=readonly)
        try:
            revision = schema.migrate(conn, name, readonly=readonly, is_sqlite=path is not None)
        except sa.exc.DBAPIError as exc:
            conn.close()
            engine.dispose()
            raise StoreError(f"store {name} cannot be opened: {schema.reason(exc)}") from exc
        except BaseException:
            conn.close()
            engine.dispose()
            raise
        store = cls(engine, conn, name=name, path=path, readonly=readonly)
        # A read-only store one revision old has no ratings table yet: no job is rated.
        store._rated = revision not in schema.READABLE_OLDER
        return store

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.name!r}{', readonly' if self.readonly else ''})"

    @contextlib.contextmanager
    def _tx(self, *, write: bool = False, durable: bool = False) -> Iterator[Connection]:
        """One transaction; SQLite writes take the write lock up front (BEGIN IMMEDIATE)."""
        if self._conn is None:
            raise StoreError(f"store {self.name} is closed")
        if write and self.readonly:
            raise StoreError(f"store {self.name} is open read-only")
        with self._guard:
            conn = self._conn
            tx = conn.begin()
            try:
                if self.is_sqlite and write:
                    self._begin_immediate(conn, durable)
                yield conn
                tx.commit()
            except (sa.exc.DBAPIError, sqlite3.Error) as exc:
                tx.rollback()
                kind = StoreBusyError if schema.busy(exc) else StoreError
                raise kind(f"store {self.name}: {schema.reason(exc)}") from exc
            except BaseException:
                tx.rollback()
                raise

    def _begin_immediate(self, conn: Connection, durable: bool) -> None:
        # Straight to the driver: these two carry no parameters and run on every write.
        raw = conn.connection.driver_connection
        assert raw is not None
        wanted = "FULL" if durable else "NORMAL"
        if wanted != self._synchronous:
            raw.execute(f"PRAGMA synchronous = {wanted}")
            self._synchronous = wanted
        raw.execute("BEGIN IMMEDIATE")

    # -- the runner lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, owner: str) -> Iterator[int]:
        """Hold the store for one run; yields the run id stamped on every job the run touches.

        SQLite: exclusive (flock on ``<store>.lock``; StoreLockedError names the holder's pid and
        host). PostgreSQL: several runners may share a store, so this only records the run; claim()
        keeps them apart with FOR UPDATE SKIP LOCKED. Readers never need the lock.
        """
        if self._lock_held:
            raise StoreError(f"store {self.name} is already locked by this process")
        real = self.real_path
        flock = FileLock(Path(f"{real}.lock"), self.name) if real is not None else None
        if flock is not None:
            flock.acquire(owner)
        self._lock_held = True
        run_id: int | None = None
        try:
            with self._tx(write=True) as conn:
                run_id = conn.execute(
                    sa.insert(sql.RUNS).returning(sql.RUNS.c.id),
                    {
                        "owner": owner,
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "version": _version(),
                        "started_at": _now(),
                    },
                ).scalar_one()
            if not self.is_sqlite:
                # Held by this session until it ends: how other runners tell this run is alive.
                with self._tx() as conn:
                    conn.execute(sql.RUN_ALIVE_LOCK, {"p_run": run_id})
            self._run_id = run_id
            yield run_id
        finally:
            self._run_id = None
            self._lock_held = False
            try:
                # Only a record: a store that refuses it (held by another program, full) must not
                # hide why the run ended, nor fail a run that finished.
                with contextlib.suppress(StoreError):
                    if run_id is not None and self._conn is not None and not self.is_sqlite:
                        with self._tx() as conn:
                            conn.execute(sql.RUN_ALIVE_UNLOCK, {"p_run": run_id})
                    if run_id is not None and self._conn is not None:
                        with self._tx(write=True) as conn:
                            finish = sql.RUNS.update().where(sql.RUNS.c.id == run_id)
                            conn.execute(finish.values(finished_at=_now()))
            finally:
                if flock is not None:
                    flock.release()

    def adopt(
        self, states: Iterable[JobState], *, where: Callable[[JobRow], bool] | None = None
    ) -> Iterator[JobRow]:
        """Jobs in ``states`` (and matching ``where``) that no live run holds, now this run's.

        A job belongs to the run that touched it last. On SQLite the runner lock makes this run
        the only one, so every such job is an orphan of a finished or killed run. On PostgreSQL a
        run is alive while its session holds the advisory lock lock() took, and a compare-and-set
        on the job's run id hands each orphan to exactly one runner: resuming never steals a job
        that another runner is still submitting, polling or downloading.
        """
        alive: dict[int, bool] = {}
        for row in self.jobs(states):
            if where is not None and not where(row):
                continue
            if self.is_sqlite:
                yield row
                continue
            owner = row.run_id
            if owner is not None and owner == self._run_id:
                continue  # already this run's
            if owner is not None:
                if owner not in alive:
                    alive[owner] = self._run_alive(owner)
                if alive[owner]:
                    continue
            params = {"p_key": row.key, "p_state": row.state.value, "p_old": owner}
            with self._tx(write=True) as conn:
                taken = conn.execute(sql.ADOPT, params | {"p_run": self._run_id}).rowcount
            if taken:
                yield dataclasses.replace(row, run_id=self._run_id)

    def run_alive(self, run_id: int) -> bool:
        """Whether run ``run_id`` is still going: this one, or another live PostgreSQL runner."""
        if run_id == self._run_id:
            return True
        return not self.is_sqlite and self._run_alive(run_id)

    def _run_alive(self, run_id: int) -> bool:
        with self._tx() as conn:
            if not conn.execute(sql.RUN_ALIVE_TRY, {"p_run": run_id}).scalar_one():
                return True
            conn.execute(sql.RUN_ALIVE_UNLOCK, {"p_run": run_id})
        return False

    def spent(self) -> float:
        """The sweep's spend so far: every settled attempt's charge (the ledger's running total)."""
        return self.ledger().spent_usd

    def ledger(self) -> books.Ledger:
        """The budget's totals: spent, reserved, the cap last set, jobs in flight (all runners)."""
        with self._tx() as conn:
            return books.read_ledger(conn)

    def set_budget(self, cap: float | None, concurrency: int | None = None) -> None:
        """Record the running cap and concurrency, for status, summaries and other runners."""
        with self._tx(write=True) as conn:
            conn.execute(sql.LEDGER_SETTINGS, {"p_cap": cap, "p_conc": concurrency})

    def attempts(self, key: str | None = None) -> list[books.Attempt]:
        """Every submit attempt (of job ``key``), oldest first."""
        stmt = sa.select(sql.ATTEMPTS).order_by(sql.ATTEMPTS.c.id)
        if key is not None:
            stmt = stmt.where(sql.ATTEMPTS.c.job_key == key)
        with self._tx() as conn:
            return [books.Attempt.from_row(m) for m in conn.execute(stmt).mappings()]

    @property
    def run_id(self) -> int | None:
        """The run holding the lock through this Store, if any."""
        return self._run_id

    # -- jobs in --------------------------------------------------------------------------------

    def sync_jobs(
        self,
        jobs: Iterable[JobLike],
        model_id: str | Collection[str],
        *,
        guard: SyncGuard | None = None,
    ) -> SyncResult:
        """Record the spec's jobs: insert new keys, renumber known ones, mark which are in the spec.

        A job's ``rank`` (the order claim follows; its index when it has none) is written with it,
        and rewritten when the spec's order changed, so pending jobs follow the new order.

        Streams ``jobs`` in batches inside one transaction (a killed sync changes nothing), so
        memory stays flat for a million jobs. Large data: URIs go to the blobs table, once each.
        A known job takes the spec's current ``sources`` (a renamed image names its outputs).
        Jobs that leave the spec stay, orphaned (``in_spec`` false): listed, never claimed.
        ``guard`` sees each new job's twin found in the store, and may refuse the whole sync.
        """
        count = sa.select(sa.func.count()).select_from(sql.JOBS)
        total = 0
        split = Splitter()
        models = {model_id} if isinstance(model_id, str) else set(model_id)  # several: a list
        with self._tx(write=True) as conn:
            before = conn.execute(count).scalar_one()
            # This sync's keys, on the side (a temp table: no WAL, private to the connection).
            conn.exec_driver_sql("CREATE TEMPORARY TABLE IF NOT EXISTS sync_keys (key TEXT)")
            conn.exec_driver_sql("DELETE FROM sync_keys")
            recorded = self._get_meta(conn, SYNCED_META)  # None: synced before digests were
            digests: list[str] = []
            iterator = iter(jobs)
            while batch := list(itertools.islice(iterator, SYNC_BATCH)):
                by_key = {job.key: job for job in batch}
                for job in by_key.values():
                    if job.model_id not in models:
                        raise ValueError(f"job {job.key} is for {job.model_id}, not {model_id}")
                digests.append(_digest(batch))
                total += len(batch)
                # The last sync wrote these very jobs at these places: all known, only noted.
                same = digests[-1] == _at(recorded, len(digests) - 1)
                self._sync_batch(conn, by_key, split, guard, lookup=not same)
            if digests != recorded:  # else the spec's jobs are the last sync's: no orphan is new
                # Stamped: the manifest's fingerprint sees jobs leave the spec.
                if self.is_sqlite:
                    conn.execute(sql.ORPHAN, {"p_now": _now()})
                else:
                    # The planner's row count of the keys, so the orphan UPDATE hashes them.
                    conn.exec_driver_sql("ANALYZE sync_keys")
                    conn.execute(sql.ORPHAN_PG, {"p_now": _now()})
                self._set_meta(conn, SYNCED_META, digests)
            conn.exec_driver_sql("DELETE FROM sync_keys")
            new = conn.execute(count).scalar_one() - before
            first = model_id if isinstance(model_id, str) else next(iter(model_id), "")
            self._set_meta(conn, "model_id", first)  # several models: the first
            self._set_meta(conn, MODELS_META, sorted(models))  # one or several, read in O(1)
            if guard is not None:
                guard.check()
        return SyncResult(total=total, new=new)

    def _sync_batch(
        self,
        conn: Connection,
        by_key: Mapping[str, JobLike],
        split: Splitter,
        guard: SyncGuard | None,
        *,
        lookup: bool = True,
    ) -> None:
        """One batch of sync_jobs: insert its new keys, renumber its moved ones, note its keys
        (only that, without ``lookup``: a batch the last sync wrote as it is)."""
        keys = list(by_key)
        if not lookup:
            self._note_keys(conn, keys)
            return
        known_stmt = sql.KNOWN if self.is_sqlite else sql.KNOWN_PG
        known = {
            key: (index, in_spec, sources, rank)
            for key, index, in_spec, sources, rank in conn.execute(known_stmt, {"p_keys": keys})
        }
        now = _now()
        fresh = [job for key, job in by_key.items() if key not in known]
        if guard is not None and fresh:
            self._find_twins(conn, guard, fresh)
        new_rows = [sql.new_job(job, split, now, self._run_id) for job in fresh]
        moved = []
        for key, job in by_key.items():
            src, rank = sql.sources_text(job), sql.rank_of(job)
            if key in known and known[key] != (job.index, True, src, rank):
                moved.append({"p_key": key, "p_index": job.index, "p_src": src, "p_rank": rank})
        # Each moved job is stamped: the manifest's fingerprint sees the move.
        # Known keys in place are not written: re-running a spec costs reads, not writes.
        if blob_rows := split.take():
            conn.execute(self._insert(sql.BLOBS).on_conflict_do_nothing(), blob_rows)
        if new_rows:
            conn.execute(self._insert(sql.JOBS).on_conflict_do_nothing(), new_rows)
        if moved and self.is_sqlite:
            conn.execute(sql.MOVE, [m | {"p_now": now} for m in moved])
        elif moved:
            columns = {name: [m[name] for m in moved] for name in moved[0]}
            conn.execute(sql.MOVE_PG, columns | {"p_keys": columns.pop("p_key"), "p_now": now})
        self._note_keys(conn, keys)

    def _note_keys(self, conn: Connection, keys: list[str]) -> None:
        """This sync's keys into ``sync_keys`` (the orphan UPDATE keeps every job they name)."""
        if self.is_sqlite:
            conn.exec_driver_sql("INSERT INTO sync_keys (key) VALUES (?)", [(k,) for k in keys])
        else:
            conn.execute(sql.SYNC_KEYS_ADD_PG, {"p_keys": keys})

    @staticmethod
    def _find_twins(conn: Connection, guard: SyncGuard, fresh: Sequence[JobLike]) -> None:
        """Tell ``guard`` which new jobs have a twin in the store: one read per batch."""
        twins: dict[str, list[JobLike]] = {}
        for job in fresh:
            twin = guard.twin(job)
            if twin is not None:
                twins.setdefault(twin, []).append(job)
        if not twins:
            return
        for key, state in conn.execute(sql.TWINS, {"p_keys": list(twins)}):
            for job in twins[key]:
                guard.found(job, JobState(state))

    # -- state changes --------------------------------------------------------------------------

    def transition(
        self,
        key: str,
        to: JobState,
        *,
        expect: Iterable[JobState] | None = None,
        detail: str | None = None,
        **fields: Any,
    ) -> JobRow:
        """Move one job to ``to`` if TRANSITIONS (narrowed by ``expect``) allows it from its state.

        The legality check is the UPDATE's WHERE clause, so it holds with several runners; the
        event is appended in the same transaction. Raises TransitionError when no row matched.
        """
        expected = None if expect is None else frozenset(JobState(s) for s in expect)
        (outcome,) = self.apply([Write(key, JobState(to), fields, detail, expected)])
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    def apply(self, writes: Sequence[Write]) -> list[JobRow | StoreError | None]:
        """Several jobs' writes (transitions and field updates) in one transaction, in order.

        Each outcome is the job's row after a transition, None after an update, or the error of
        that write alone (TransitionError: refused by the state machine; StoreError: no such job),
        which wrote nothing; the others commit. A refused transaction raises StoreError for all.
        Durable (fsync'd on SQLite) when any write moves a job to ``submitting`` or ``queued``.
        """
        if not writes:
            return []
        now = _now()
        durable = any(w.to in DURABLE for w in writes)
        outcomes: list[Mapping[Any, Any] | StoreError | None] = []
        events: list[dict[str, Any]] = []
        money = books.Money()  # the ledger moved once for the whole batch
        with self._tx(write=True, durable=durable) as conn:
            for w in writes:
                if w.to is None:
                    outcomes.append(self._update_in(conn, w, now))
                else:
                    outcomes.append(self._transition_in(conn, w, now, events, money))
            if events:
                conn.execute(sql.EVENT_INSERT, events)
            money.move(conn)
        rows = iter(self._rows([o for o in outcomes if isinstance(o, Mapping)]))
        return [next(rows) if isinstance(o, Mapping) else o for o in outcomes]

    def _transition_in(
        self,
        conn: Connection,
        w: Write,
        now: datetime,
        events: list[dict[str, Any]],
        money: books.Money,
    ) -> Mapping[Any, Any] | StoreError:
        """One transition inside ``apply``'s transaction: the row after it, or its refusal."""
        assert w.to is not None
        sources = allowed_from(w.to, w.expect)
        values = encode_fields(w.fields)
        if not sources:
            return self._refusal(conn, w.key, w.to, w.expect)
        params = {"p_key": w.key, "p_now": now, "p_run": self._run_id}
        params.update({f"v_{name}": value for name, value in values.items()})
        stmt = sql.transition(w.to, sources, frozenset(values))
        row = conn.execute(stmt, params).mappings().first()
        if row is None:
            return self._refusal(conn, w.key, w.to, w.expect)
        events.append(sql.event_row(row, now, w.detail))
        money.add(books.book(conn, row, w.fields, now))
        return row

    def _update_in(self, conn: Connection, w: Write, now: datetime) -> StoreError | None:
        values = encode_fields(w.fields)
        if not values:
            return None
        params = {"p_key": w.key, "p_now": now}
        params.update({f"v_{name}": value for name, value in values.items()})
        if not conn.execute(sql.update_fields(frozenset(values)), params).rowcount:
            return StoreError(f"store {self.name} has no job {w.key}")
        return None

    def claim(self, limit: int) -> list[JobRow]:
        """Take up to ``limit`` pending jobs of the spec, oldest index first: pending -> submitting.

        Committed durably before returning, so the caller may send the POSTs. On PostgreSQL the
        rows are picked FOR UPDATE SKIP LOCKED: several runners never take the same job.
        """
        if limit <= 0:
            return []
        now = _now()
        params: dict[str, Any] = {"p_limit": limit, "p_now": now, "p_run": self._run_id}
        with self._tx(write=True, durable=True) as conn:
            if self.is_sqlite:
                # One statement: BEGIN IMMEDIATE already excludes every other writer.
                rows = conn.execute(sql.CLAIM_SQLITE, params).mappings().all()
            else:
                # Pick first, then update: PostgreSQL may re-run a LIMIT subquery inside an
                # UPDATE (taking more than `limit` rows), and SKIP LOCKED belongs on the pick.
                params["p_keys"] = list(conn.execute(sql.PICK_PG, params).scalars())
                if not params["p_keys"]:
                    return []
                rows = conn.execute(sql.CLAIM_PG, params).mappings().all()
            if rows:
                conn.execute(sql.EVENT_INSERT, [sql.event_row(row, now, "claimed") for row in rows])
                conn.execute(sql.ATTEMPT_INSERT, [books.attempt_row(r, now, 0.0) for r in rows])
                moved = {"p_spent": 0.0, "p_reserved": 0.0, "p_flight": len(rows)}
                conn.execute(sql.LEDGER_MOVE, moved)
        return sorted(self._rows(rows), key=lambda r: (r.rank, r.key))

    def claim_within(
        self,
        estimate: Callable[[Mapping[str, Any]], float | None],
        *,
        cap: float | None,
        concurrency: int | None = None,
    ) -> Claim:
        """Take the next pending job of the spec if its estimate fits (``claim_batch`` of one)."""
        got = self.claim_batch(estimate, cap=cap, concurrency=concurrency, limit=1)
        return Claim(got.rows[0] if got.rows else None, got.refused, got.estimate, got.ledger)

    def claim_batch(
        self,
        estimate: Callable[[Mapping[str, Any]], float | None],
        *,
        cap: float | None,
        concurrency: int | None = None,
        limit: int = 1,
    ) -> Claims:
        """Take up to ``limit`` pending jobs of the spec, in rank order, while each one fits.

        One transaction picks them (FOR UPDATE SKIP LOCKED on PostgreSQL), reads the ledger
        (under its row lock on PostgreSQL: other runners' claims wait for this commit), and
        takes each job in order only if spent + reserved + its estimate <= ``cap`` (and, given
        ``concurrency``, fewer jobs than that are in flight store-wide), stopping at the first
        that does not fit: later ones never jump the queue. The jobs taken move to submitting
        with their attempts opened and their estimates reserved; the rest stay pending. Committed
        durably before returning, so the caller may send the POSTs.
        """
        now = _now()
        if limit <= 1 and not self.is_sqlite:  # a runner's usual claim: one slot just freed
            return self._claim_one_pg(estimate, cap, concurrency, now)
        with self._tx(write=True, durable=True) as conn:
            pick = sql.PICK_ONE if self.is_sqlite else sql.PICK_ONE_PG
            found = conn.execute(pick, {"p_limit": max(1, limit)}).all()
            # Priced before the ledger's row lock is taken: other runners wait less for it.
            guesses = [estimate(budget.job_inputs(j.inputs, j.model_id)) for j in found]
            ledger = books.read_ledger(conn, lock=not self.is_sqlite)
            if not found:
                return Claims([], None, None, ledger)
            taken, refused, guess = _fitting(found, guesses, ledger, cap, concurrency)
            if not taken:
                return Claims([], refused, guess, ledger)
            claim = {"p_keys": list(taken), "p_now": now, "p_run": self._run_id}
            rows = conn.execute(sql.CLAIM_PG, claim).mappings().all()
            reserved = ledger.reserved_usd
            for key in taken:  # added one by one, as each job's reservation was checked
                reserved += taken[key]
            conn.execute(sql.LEDGER_RESERVE, {"p_reserved": reserved, "p_flight": len(rows)})
            conn.execute(sql.EVENT_INSERT, [sql.event_row(row, now, "claimed") for row in rows])
            attempts = [books.attempt_row(r, now, taken[r["key"]]) for r in rows]
            conn.execute(sql.ATTEMPT_INSERT, attempts)
        # What the ledger row now holds (no other writer could move it meanwhile): not read again.
        flight = ledger.in_flight + len(rows)
        ledger = dataclasses.replace(ledger, reserved_usd=reserved, in_flight=flight)
        claimed = sorted(self._rows(rows), key=lambda r: (r.rank, r.key))
        return Claims(claimed, refused, guess, ledger)

    def _claim_one_pg(
        self,
        estimate: Callable[[Mapping[str, Any]], float | None],
        cap: float | None,
        concurrency: int | None,
        now: datetime,
    ) -> Claims:
        """claim_batch of one on PostgreSQL in two statements: the pick, then the reservation
        under the cap, the move to submitting, its event and its attempt in one (sql.claim_one_pg):
        the ledger row stays locked from that statement to the COMMIT right after it."""
        with self._tx(write=True, durable=True) as conn:
            found = conn.execute(sql.PICK_ONE_PG, {"p_limit": 1}).first()
            if found is None:
                return Claims([], None, None, books.read_ledger(conn))
            guess = estimate(budget.job_inputs(found.inputs, found.model_id))
            if cap is not None and guess is None:
                return Claims([], "price", None, books.read_ledger(conn))
            params: dict[str, Any] = {"p_e": guess or 0.0, "p_cap": cap, "p_conc": concurrency}
            params |= {"p_eps": budget.EPSILON, "p_key": found.key, "p_now": now}
            stmt = sql.claim_one_pg(cap is not None, concurrency is not None)
            row = conn.execute(stmt, params | {"p_run": self._run_id}).mappings().first()
            if row is None:  # refused: nothing written
                ledger = books.read_ledger(conn)
                # The budget first: a slot freeing up would not make this job fit.
                over = (
                    cap is not None and ledger.committed_usd + (guess or 0.0) > cap + budget.EPSILON
                )
                return Claims([], "budget" if over else "busy", guess, ledger)
            if row["key"] is None:  # reserved, yet the job locked by the pick did not move
                raise StoreError(f"store {self.name}: job {found.key} left pending mid-claim")
            ledger = books.ledger_of({n: row[label] for label, n in sql.LEDGER_OUT.items()})
        return Claims(self._rows([row]), None, guess, ledger)

    def unpriced(
        self, estimate: Callable[[Mapping[str, Any]], float | None]
    ) -> tuple[float, float]:
        """What reserve_unpriced() would add, read only: (to reserved, to spent)."""
        out = [0.0, 0.0]
        with self._tx() as conn:
            for i, query in enumerate((sql.ATTEMPTS_UNPRICED, sql.ATTEMPTS_UNCHARGED)):
                for _, inputs, model_id in conn.execute(query):
                    guess = estimate(budget.job_inputs(inputs, model_id))
                    out[i] += guess if guess is not None and guess > 0 else 0.0
        return out[0], out[1]

    def reserve_unpriced(self, estimate: Callable[[Mapping[str, Any]], float | None]) -> float:
        """Count every attempt that may be billed but is held at $0 at its job's estimate.

        Jobs in flight or unknown from a store older than the ledger, or claimed by a run that
        knew no price, were reserved at $0 (and charged $0 if `retry` put them back, or if their
        result had no valid cost) although they may be billed: once a price is known, they count
        at their estimate, so a capped run does not spend their share again. Returns the sum.
        """
        reserved = spent = 0.0
        with self._tx(write=True, durable=True) as conn:
            for query, update in (
                (sql.ATTEMPTS_UNPRICED, sql.ATTEMPT_REPRICE),
                (sql.ATTEMPTS_UNCHARGED, sql.ATTEMPT_RECHARGE),
            ):
                for attempt_id, inputs, model_id in conn.execute(query).all():
                    guess = estimate(budget.job_inputs(inputs, model_id))
                    if guess is None or guess <= 0:
                        continue
                    if conn.execute(update, {"p_id": attempt_id, "p_e": guess}).rowcount:
                        if update is sql.ATTEMPT_REPRICE:
                            reserved += guess
                        else:
                            spent += guess
            if reserved or spent:
                moved = {"p_spent": spent, "p_reserved": reserved, "p_flight": 0}
                conn.execute(sql.LEDGER_MOVE, moved)
        return reserved + spent

    def undone(
        self, estimate: Callable[[Mapping[str, Any]], float | None]
    ) -> tuple[int, float, int]:
        """The spec's pending jobs: how many, their estimated total, how many have no estimate."""
        count = unpriced = 0
        total = 0.0
        stmt = sa.select(sql.JOBS.c.inputs, sql.JOBS.c.model_id).where(
            sql.JOBS.c.state == JobState.PENDING.value, sql.JOBS.c.in_spec
        )
        with self._tx() as conn:
            for inputs, model_id in conn.execute(stmt):
                guess = estimate(budget.job_inputs(inputs, model_id))
                count += 1
                if guess is None:
                    unpriced += 1
                else:
                    total += guess
        return count, total, unpriced

    def pending_inputs(self) -> Iterator[dict[str, Any]]:
        """The spec's pending jobs' inputs in the order claims take them (rank, key), streamed a
        page at a time; large data: URIs stay as the store's references (never priced on); each
        with its model id as ``budget.job_inputs`` hands it to an estimator."""
        c = sql.JOBS.c
        after = sa.tuple_(c.rank, c.key) > sa.tuple_(
            sa.bindparam("p_rank", type_=sa.BigInteger), sa.bindparam("p_key", type_=sa.Text)
        )
        stmt = (
            sa.select(c.rank, c.key, c.inputs, c.model_id)
            .where(c.state == JobState.PENDING.value, c.in_spec, after)
            .order_by(c.rank, c.key)
            .limit(PAGE)
        )
        position: dict[str, Any] = {"p_rank": -1, "p_key": ""}
        while True:
            with self._tx() as conn:
                page = conn.execute(stmt, position).all()
            for _, _, inputs, model_id in page:
                yield budget.job_inputs(inputs, model_id)
            if len(page) < PAGE:
                return
            position = {"p_rank": page[-1].rank, "p_key": page[-1].key}

    def recorded_outputs(self, state: JobState) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Each job in ``state``: its key and recorded outputs, and nothing else (no inputs, no
        blobs), in one read along the state's index, fetched a few thousand rows at a time: a
        resume checks the files of 50,000 done jobs in a tenth of a second."""
        params = {"p_state": JobState(state)}
        with self._tx() as conn:
            # This statement's option only: Connection.execution_options() would change the
            # store's one connection for good (on PostgreSQL, server-side cursors for every
            # statement after it).
            rows = conn.execute(sql.OUTPUTS_OF, params, execution_options=_STREAMED)
            for key, outputs in rows:
                yield key, json.loads(outputs)

    def update(self, key: str, **fields: Any) -> None:
        """Set non-state fields (e.g. outputs as they land); no event."""
        (outcome,) = self.apply([Write(key, None, fields)])
        if isinstance(outcome, Exception):
            raise outcome

    def _refusal(
        self, conn: Connection, key: str, to: JobState, expect: Iterable[JobState] | None
    ) -> TransitionError:
        state = conn.execute(sa.select(sql.JOBS.c.state).where(sql.JOBS.c.key == key)).scalar()
        if state is None:
            return TransitionError(f"store {self.name} has no job {key}", key=key, to=to)
        current = JobState(state)
        why = "expected " + "/".join(sorted(expect)) if expect is not None else "not allowed"
        if to not in TRANSITIONS[current]:
            why = "not allowed"
        return TransitionError(
            f"job {key[:12]} is {current}: {current} -> {to} {why}", key=key, state=current, to=to
        )

    # -- reading --------------------------------------------------------------------------------

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the store holds, in any state (read in batches)."""
        out: set[str] = set()
        with self._tx() as conn:
            for i in range(0, len(keys), 500):
                batch = list(keys[i : i + 500])
                out.update(conn.execute(sql.KEYS_KNOWN, {"p_keys": batch}).scalars())
        return out

    def get(self, key: str) -> JobRow | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(sql.JOBS).where(sql.JOBS.c.key == key)).mappings().first()
        return None if row is None else self._rows([row])[0]

    def jobs(
        self, states: Iterable[JobState] | None = None, *, in_spec: bool | None = None
    ) -> Iterator[JobRow]:
        """Jobs in index order, streamed a page at a time (each page its own short read)."""
        stmt = sa.select(sql.JOBS).order_by(sql.JOBS.c["index"], sql.JOBS.c.key).limit(PAGE)
        if states is not None:
            stmt = stmt.where(sql.JOBS.c.state.in_([JobState(s).value for s in states]))
        if in_spec is not None:
            stmt = stmt.where(sql.JOBS.c.in_spec == in_spec)
        after = sa.tuple_(sql.JOBS.c["index"], sql.JOBS.c.key) > sa.tuple_(
            sa.bindparam("p_index", type_=sa.Integer), sa.bindparam("p_key", type_=sa.Text)
        )
        stmt = stmt.where(after)
        position: dict[str, Any] = {"p_index": -1, "p_key": ""}
        blobs: dict[str, str] = {}
        while True:
            with self._tx() as conn:
                page = conn.execute(stmt, position).mappings().all()
            for i, m in enumerate(page):
                if any(sha not in blobs for sha in blob_shas(m["blob_refs"])):
                    # This row's blobs and the next rows', a few at a time: a page of rows that
                    # each have their own 6 MiB image is never all in memory at once.
                    ahead: dict[str, None] = {}
                    for n in page[i:]:
                        if len(ahead) >= BLOB_WINDOW:
                            break
                        ahead.update(dict.fromkeys(blob_shas(n["blob_refs"])))
                    blobs = self._fetch_blobs(ahead)
                yield JobRow.from_row(m, blobs)
            if len(page) < PAGE:
                return
            position = {"p_index": page[-1]["index"], "p_key": page[-1]["key"]}

    def counts_by_model(self, *, in_spec: bool | None = None) -> dict[str, dict[str, int]]:
        """Jobs per model id, then per state name (every state present), models in job order."""
        jobs = sql.JOBS.c
        stmt = (
            sa.select(jobs.model_id, jobs.state, sa.func.count(), sa.func.min(jobs.index))
            .group_by(jobs.model_id, jobs.state)
            .order_by(sa.func.min(jobs.index))
        )
        if in_spec is not None:
            stmt = stmt.where(jobs.in_spec == in_spec)
        out: dict[str, dict[str, int]] = {}
        with self._tx() as conn:
            for model_id, state, n, _ in conn.execute(stmt):
                out.setdefault(model_id, dict.fromkeys((s.value for s in JobState), 0))[state] = n
        return out

    def several_models(self) -> bool:
        """Whether the spec's jobs are of more than one model: from the models the last sync
        recorded (one read), else (a store synced before they were) from a GROUP BY of them."""
        recorded = self.get_meta(MODELS_META)
        if isinstance(recorded, list):
            return len(recorded) > 1
        return len(self.counts_by_model(in_spec=True)) > 1

    def counts(self, *, in_spec: bool | None = None) -> dict[str, int]:
        """Jobs per state name, every state present (zeros included)."""
        stmt = sa.select(sql.JOBS.c.state, sa.func.count()).group_by(sql.JOBS.c.state)
        if in_spec is not None:
            stmt = stmt.where(sql.JOBS.c.in_spec == in_spec)
        out = dict.fromkeys((s.value for s in JobState), 0)
        with self._tx() as conn:
            for state, n in conn.execute(stmt):
                out[state] = n
        return out

    def events(self, key: str) -> list[Event]:
        stmt = sa.select(sql.EVENTS).where(sql.EVENTS.c.job_key == key).order_by(sql.EVENTS.c.id)
        with self._tx() as conn:
            return [Event.from_row(m) for m in conn.execute(stmt).mappings()]

    # -- the live manifest (orchestrator/manifest.py) ------------------------------------------

    def last_event_id(self) -> int:
        """The newest event's id (0 for none): a mark to ask ``changed_since`` from."""
        with self._tx() as conn:
            return int(conn.execute(sql.EVENTS_LAST).scalar_one())

    def changed_since(self, after: int) -> tuple[int, list[str]]:
        """The jobs that moved since event ``after`` (on PostgreSQL, this run's moves only: other
        runners write their own), in the order they moved; and the new mark."""
        mine = not self.is_sqlite and self._run_id is not None
        stmt = sql.CHANGED_AFTER_RUN if mine else sql.CHANGED_AFTER
        with self._tx() as conn:
            found = conn.execute(stmt, {"p_after": after, "p_run": self._run_id}).all()
        if not found:
            return after, []
        return int(found[-1][0]), list(dict.fromkeys(str(key) for _, key in found))

    def jobs_of(self, keys: Sequence[str]) -> list[JobRow]:
        """The jobs ``keys`` name (unknown keys skipped), read 500 at a time."""
        rows: list[Mapping[Any, Any]] = []
        with self._tx() as conn:
            for i in range(0, len(keys), 500):
                rows += conn.execute(sql.JOBS_OF, {"p_keys": list(keys[i : i + 500])}).mappings()
        return self._rows(rows)

    def fingerprint(self) -> str:
        """Changes when any job or rating changes (count, last update, last event, ratings): the
        manifest written whole with one fingerprint is still the store's while it holds."""
        with self._tx() as conn:
            count, updated = conn.execute(sql.JOBS_FINGERPRINT).one()
            last = conn.execute(sql.EVENTS_LAST).scalar_one()
        ratings = canonical_json(sorted(self.ratings().items()))
        return f"{count}:{updated}:{last}:{ratings}"

    # -- views: what status, show, failures and runs read (never the runner's lock) -------------

    def finish_times(self, *, scan: int = 20_000) -> tuple[list[datetime], datetime | None]:
        """When jobs ended (moved to a final state, a cancel aside), among the latest ``scan``
        events, newest first: a walk back along the events' primary key, never a whole-table
        read. With the time of the oldest event read when there are more (older finishes are not
        in the list), else None."""
        with self._tx() as conn:
            times = list(conn.execute(sql.RECENT_FINISHES, {"p_scan": scan}).scalars())
            horizon = conn.execute(sql.SCAN_HORIZON, {"p_back": scan - 1}).scalar()
        return sorted(times, reverse=True), horizon

    def oldest_in_flight(self) -> tuple[str, JobState, datetime] | None:
        """The job in flight the longest: its key, state and when it was submitted (or claimed)."""
        with self._tx() as conn:
            row = conn.execute(sql.OLDEST_FLYING).first()
        if row is None:
            return None
        since = row.since
        if isinstance(since, str):  # SQLite hands a coalesce() back as text
            since = datetime.fromisoformat(since)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return str(row.key), JobState(row.state), since

    def error_counts(self, states: Iterable[JobState]) -> list[tuple[JobState, Any, int]]:
        """The spec's jobs in ``states`` counted per (state, error), errors decoded (GROUP BY)."""
        params = {"p_states": [JobState(s).value for s in states]}
        with self._tx() as conn:
            rows = conn.execute(sql.ERROR_GROUPS, params).all()
        return [
            (JobState(state), None if error is None else json.loads(error), int(n))
            for state, error, n in rows
        ]

    def mean_estimate(self, *, last: int = 500) -> float | None:
        """The mean reservation of the latest ``last`` priced attempts: what one more job costs."""
        with self._tx() as conn:
            mean = conn.execute(sql.MEAN_ESTIMATE, {"p_limit": last}).scalar()
        return None if mean is None else float(mean)

    def keys_starting(self, prefix: str) -> tuple[int, list[str]]:
        """How many job keys start with ``prefix``, and the first two of them."""
        if not prefix:
            raise ValueError("an empty prefix")
        params = {"p_low": prefix, "p_high": prefix[:-1] + chr(ord(prefix[-1]) + 1)}
        with self._tx() as conn:
            count = int(conn.execute(sql.PREFIX_COUNT, params).scalar_one())
            first = list(conn.execute(sql.PREFIX_KEYS, params).scalars()) if count else []
        return count, first

    def input_samples(self, n: int = 50) -> list[dict[str, Any]]:
        """The inputs of the grid's first ``n`` and last ``n`` jobs (large data: URIs left out):
        enough to tell which inputs vary without reading every job."""
        with self._tx() as conn:
            first = list(conn.execute(sql.FIRST_INPUTS, {"p_limit": n}).scalars())
            last = list(conn.execute(sql.LAST_INPUTS, {"p_limit": n}).scalars())
        return [json.loads(text) for text in first + last]

    def rating(self, key: str) -> str | None:
        """The user's verdict on job ``key`` ("up", "down", "pick"), or None."""
        if not self._rated:
            return None
        with self._tx() as conn:
            found = conn.execute(sql.RATING_OF, {"p_key": key}).scalar()
        return None if found is None else str(found)

    def runs(self, *, unfinished: bool = False, tally: bool = True) -> list[RunRecord]:
        """The runs this store has seen, oldest first (``unfinished``: no finish recorded, newest
        first), each with the attempts it submitted, the jobs it finished and its spend (zeros
        without ``tally``: those are GROUP BYs over every attempt and event)."""
        attempts: dict[int, tuple[int, float]] = {}
        ended: dict[int, int] = {}
        with self._tx() as conn:
            rows = conn.execute(sql.OPEN_RUNS if unfinished else sql.RUN_ROWS).mappings().all()
            if rows and tally:
                attempts = {r: (int(n), float(v)) for r, n, v in conn.execute(sql.RUN_ATTEMPTS)}
                ended = {r: int(n) for r, n in conn.execute(sql.RUN_FINISHES)}
        return [
            RunRecord(
                id=m["id"],
                owner=m["owner"],
                pid=m["pid"],
                host=m["host"],
                version=m["version"],
                started_at=m["started_at"],
                finished_at=m["finished_at"],
                submitted=attempts.get(m["id"], (0, 0.0))[0],
                finished=ended.get(m["id"], 0),
                spent_usd=attempts.get(m["id"], (0, 0.0))[1],
            )
            for m in rows
        ]

    def _rows(self, rows: Sequence[Mapping[Any, Any]]) -> list[JobRow]:
        """JobRows of table rows read in a finished transaction, their blobs put back."""
        shas = {sha for m in rows for sha in blob_shas(m["blob_refs"])}
        blobs = self._fetch_blobs(shas) if shas else {}
        return [JobRow.from_row(m, blobs) for m in rows]

    def _fetch_blobs(self, shas: Iterable[str]) -> dict[str, str]:
        """The blobs named, from the cache or else in one read (a blob never changes)."""
        out: dict[str, str] = {}
        missing: list[str] = []
        for sha in shas:
            data = self._blobs.get(sha)
            if data is None:
                missing.append(sha)
            else:
                out[sha] = data
        if missing:
            with self._tx() as conn:
                for sha, data in conn.execute(sql.BLOBS_GET, {"p_shas": missing}):
                    out[sha] = data
                    self._blobs.put(sha, data)
            lost = [sha for sha in missing if sha not in out]
            if lost:
                raise StoreError(f"store {self.name} is damaged: input blob {lost[0]} is missing")
        return out

    # -- the controls mailbox (stop and cancel from another shell) -----------------------------

    def controls_last(self) -> int:
        """The newest request's id (0: none): what a live run asks every tick and before each
        POST, in O(1); on SQLite straight through the driver (a tenth of SQLAlchemy's cost)."""
        if self.is_sqlite:
            return int(self._driver_scalar(sql.CONTROLS_LAST_SQLITE))
        with self._tx() as conn:
            return int(conn.execute(sql.CONTROLS_LAST).scalar_one())

    def _driver_scalar(self, text: str) -> Any:
        """One read of one value by the SQLite driver, in a transaction of its own (autocommit)."""
        if self._conn is None:
            raise StoreError(f"store {self.name} is closed")
        with self._guard:
            raw = self._conn.connection.driver_connection
            assert raw is not None
            try:
                return raw.execute(text).fetchone()[0]
            except sqlite3.Error as exc:
                kind = StoreBusyError if schema.busy(exc) else StoreError
                raise kind(f"store {self.name}: {schema.reason(exc)}") from exc

    def controls_after(self, after: int) -> list[Control]:
        """The requests newer than ``after``, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(sql.CONTROLS_AFTER, {"p_after": after}).mappings().all()
        return [Control.from_row(m) for m in rows]

    def control(self, control_id: int) -> Control | None:
        with self._tx() as conn:
            row = conn.execute(sql.CONTROL_GET, {"p_id": control_id}).mappings().first()
        return None if row is None else Control.from_row(row)

    def request_control(
        self, kind: str, *, keys: Iterable[str] | None = None, where: str | None = None
    ) -> int:
        """Post a request to the live run (``kind`` "stop" or "cancel"); returns its id."""
        with self._tx(write=True) as conn:
            inserted = conn.execute(sql.CONTROL_INSERT, _control_row(kind, keys, where))
            return int(inserted.scalar_one())

    def see_control(self, control_id: int, outcome: str | None = None) -> bool:
        """Mark a request taken by this run (and its outcome); False if another took it first."""
        with self._tx(write=True) as conn:
            params = {"p_id": control_id, "p_now": _now(), "p_run": self._run_id}
            taken = bool(conn.execute(sql.CONTROL_SEEN, params).rowcount)
            if outcome is not None:
                conn.execute(sql.CONTROL_ANSWER, {"p_id": control_id, "p_text": outcome})
        return taken

    def answer_control(self, control_id: int, outcome: str) -> None:
        """Record what the run did about a request, in one line."""
        with self._tx(write=True) as conn:
            conn.execute(sql.CONTROL_ANSWER, {"p_id": control_id, "p_text": outcome})

    def withdraw_control(self, control_id: int) -> bool:
        """Delete a request no run has taken yet (True); a taken one stays (False)."""
        with self._tx(write=True) as conn:
            return bool(conn.execute(sql.CONTROL_WITHDRAW, {"p_id": control_id}).rowcount)

    def live_runs(self) -> list[RunRecord]:
        """The runs going on now (``comfysweep run``, not a retry's or a cancel's lock), newest
        first."""
        live = self.live_run_ids()
        runs = self.runs(unfinished=True, tally=False) if live else []
        return [r for r in runs if r.id in live and r.owner.startswith("comfysweep run ")]

    def live_run_ids(self) -> set[int]:
        """The runs without a recorded finish that still go, never taking their lock: SQLite's
        newest one while a process holds the lock file; PostgreSQL's whose session holds its
        advisory lock. Any other unfinished run died."""
        with self._tx() as conn:
            ids = [int(i) for i in conn.execute(sql.OPEN_RUN_IDS).scalars()]
        if self.is_sqlite:
            held = self.real_path is not None and is_held(Path(f"{self.real_path}.lock"))
            return set(ids[:1]) if held else set()
        return {i for i in ids if self.run_alive(i)}

    def run_info(self, run_id: int) -> RunInfo | None:
        """The record of run ``run_id`` (who, where, since when)."""
        with self._tx() as conn:
            row = conn.execute(sql.RUN_GET, {"p_id": run_id}).mappings().first()
        return None if row is None else RunInfo(**row)

    def cancel_pending(
        self, keys: Sequence[str], *, request: bool, where: str | None = None
    ) -> tuple[list[str], dict[str, JobState], int | None]:
        """Cancel ``keys`` that are pending, in one transaction; name the rest's states.

        Each move is the conditional UPDATE of a transition, so a runner's claim and this never
        both take a job: a job claimed first stays claimed and is reported with its state. With
        ``request``, the jobs found in flight go to the live run in a cancel request (its id is
        returned), written in the same transaction, so no job falls between the two.
        """
        stmt = sql.transition(JobState.CANCELLED, frozenset({_S.PENDING}), frozenset())
        cancelled: list[str] = []
        states: dict[str, JobState] = {}
        control_id: int | None = None
        now = _now()
        with self._tx(write=True, durable=True) as conn:
            for key in keys:
                params = {"p_key": key, "p_now": now, "p_run": self._run_id}
                row = conn.execute(stmt, params).mappings().first()
                if row is not None:
                    # the canceller's run (none for a shell), not the run that last held the job
                    event = sql.event_row(row, now, _CANCELLED) | {"run_id": self._run_id}
                    conn.execute(sql.EVENT_INSERT, [event])
                    cancelled.append(key)
            done = set(cancelled)
            rest = [key for key in keys if key not in done]
            for start in range(0, len(rest), SYNC_BATCH):
                batch = rest[start : start + SYNC_BATCH]
                for key, state in conn.execute(sql.JOB_STATES, {"p_keys": batch}):
                    states[key] = JobState(state)
            flying = [k for k, s in states.items() if s in books.REMOTE]
            if request and flying:
                row_values = _control_row("cancel", flying, where)
                control_id = int(conn.execute(sql.CONTROL_INSERT, row_values).scalar_one())
        return cancelled, states, control_id

    # -- ratings --------------------------------------------------------------------------------

    def rate(self, key: str, rating: str | None, *, clear: Iterable[str] = ()) -> None:
        """Record a user's verdict on a job ("up", "down" or "pick"); None takes it back.

        ``clear``: other jobs whose "pick" this one replaces (the rest of its row), in the same
        transaction. An unknown job key is a StoreError naming it.
        """
        if rating is not None and rating not in RATING_VALUES:
            raise StoreError(f"rating {rating!r} is not one of {', '.join(RATING_VALUES)}")
        with self._tx(write=True) as conn:
            known = conn.execute(sa.select(sql.JOBS.c.key).where(sql.JOBS.c.key == key)).first()
            if known is None:
                raise StoreError(f"no job {key!r} in store {self.name}")
            others = [k for k in clear if k != key]
            if others:
                conn.execute(
                    sql.RATINGS.delete().where(
                        sql.RATINGS.c.job_key.in_(others), sql.RATINGS.c.rating == "pick"
                    )
                )
            conn.execute(sql.RATINGS.delete().where(sql.RATINGS.c.job_key == key))
            if rating is not None:
                row = {"job_key": key, "rating": rating, "rated_at": _now()}
                conn.execute(sa.insert(sql.RATINGS).values(row))

    def ratings(self) -> dict[str, str]:
        """Every rated job's verdict, by job key."""
        if not self._rated:
            return {}
        stmt = sa.select(sql.RATINGS.c.job_key, sql.RATINGS.c.rating)
        with self._tx() as conn:
            return {str(key): str(rating) for key, rating in conn.execute(stmt)}

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, name: str) -> Any:
        """The JSON value stored under ``name``, or None."""
        with self._tx() as conn:
            return self._get_meta(conn, name)

    @staticmethod
    def _get_meta(conn: Connection, name: str) -> Any:
        raw = conn.execute(sa.select(sql.META.c.value).where(sql.META.c.name == name)).scalar()
        return None if raw is None else json.loads(raw)

    def set_meta(self, name: str, value: Any) -> None:
        with self._tx(write=True) as conn:
            self._set_meta(conn, name, value)

    def bind_sweep(self, name: str) -> str:
        """The sweep this store belongs to: ``name`` when the store had none yet (now recorded).

        One transaction, insert-if-absent then read: two sweeps opening a fresh shared database at
        once cannot both take it.
        """
        with self._tx(write=True) as conn:
            row = {"name": "sweep", "value": canonical_json(name)}
            conn.execute(self._insert(sql.META).values(row).on_conflict_do_nothing())
            raw = conn.execute(sa.select(sql.META.c.value).where(sql.META.c.name == "sweep"))
            owner = json.loads(raw.scalar_one())
        return str(owner)

    def identity(self) -> str:
        """A random id given to this store once: every copy of it has it, no other store does.

        What the request journal names its entries by: a moved or copied folder keeps replaying
        them, and a new store created where an old one was never takes the old one's.
        """
        known = self.get_meta("store_id")
        if known is not None:
            return str(known)
        with self._tx(write=True) as conn:
            row = {"name": "store_id", "value": canonical_json(uuid.uuid4().hex)}
            conn.execute(self._insert(sql.META).values(row).on_conflict_do_nothing())
            raw = conn.execute(sa.select(sql.META.c.value).where(sql.META.c.name == "store_id"))
            return str(json.loads(raw.scalar_one()))

    def _set_meta(self, conn: Connection, name: str, value: Any) -> None:
        ins = self._insert(sql.META).values(name=name, value=canonical_json(value))
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[sql.META.c.name], set_={"value": ins.excluded.value}
            )
        )


_CANCELLED = "cancelled on request"


def _control_row(kind: str, keys: Iterable[str] | None, where: str | None) -> dict[str, Any]:
    return {
        "kind": kind,
        "keys": None if keys is None else canonical_json(list(keys)),
        "where_text": where,
        "requested_at": _now(),
        "requested_by": f"{socket.gethostname()}:{os.getpid()}",
    }


# A user's verdicts on a job: thumbs up or down, or the pick (the best) of its row in a report.
RATING_VALUES = ("up", "down", "pick")


def _version() -> str:
    try:
        return importlib_metadata.version("comfysweep")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"
