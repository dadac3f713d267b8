"""Request ids the store could not take yet: an append-only file beside it, replayed at start-up.

A submit answered 2xx is a job that exists and is billed. When the store refuses to record its
request id (another program holds the SQLite file past the busy timeout, the disk is full), the
runner appends the answer here, fsync'd, keeps retrying the store and submits nothing new. The next
start replays what is left before jobs still ``submitting`` are declared unknown, so the paid job is
tracked and downloaded instead. Replaying twice changes nothing: an entry only moves a job that is
still in the very attempt it answered.

The file is ``<store>.requests`` beside an SQLite store (its real path), or
``comfysweep-requests.jsonl`` in the results folder for PostgreSQL; it exists only while an entry
is unrecorded. Entries name the store by the random id it was given once (``Store.identity``).
Every read-modify-write holds a flock on the folder, so runners sharing it never drop each other's
lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.errors import StoreError
from orchestrator.responses import valid_request_id  # pure, imports nothing of ours
from orchestrator.store.lock import open_own
from orchestrator.store.states import JobState
from orchestrator.store.store import Store

__all__ = ["Entry", "RequestJournal"]

log = logging.getLogger("comfysweep.store")

PG_FILE = "comfysweep-requests.jsonl"
# The journal's files are only ever ours: a symlink put at their name is refused, never followed.
_NEVER_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One answered submit: the job, its attempt, the request id, and who wrote it."""

    key: str
    request_id: str
    model: str
    attempt: int
    store: str
    run: int | None
    at: str


class RequestJournal:
    """The append-only file of request ids a store has not recorded yet."""

    def __init__(self, path: Path, store: str) -> None:
        self.path = path
        self.store = store  # the store's identity: entries of any other store are left alone

    @classmethod
    def beside(cls, store: Store, folder: Path) -> RequestJournal:
        """The journal of ``store``: beside its real file, or in ``folder`` for PostgreSQL.

        Entries carry the store's identity, not its path: a folder moved or copied after a kill
        still replays them, and a store created anew at the same path never takes them.
        """
        if store.real_path is not None:
            return cls(Path(f"{store.real_path}.requests"), store.identity())
        return cls(Path(os.path.realpath(folder)) / PG_FILE, store.identity())

    def append(
        self, key: str, request_id: str, *, model: str, attempt: int, run: int | None
    ) -> None:
        """Add one answer, on disk (fsync'd) when this returns; raises OSError (e.g. disk full)."""
        entry = Entry(
            key, request_id, model, attempt, self.store, run, datetime.now(UTC).isoformat()
        )
        line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode()
        with self._locked():
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NEVER_FOLLOW, 0o644)
            try:
                # A torn line from a killed writer before us is skipped by entries(); a newline
                # first keeps ours whole.
                os.write(fd, line if _ends_clean(self.path) else b"\n" + line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)

    def entries(self) -> list[Entry]:
        """This store's entries, in order; a line torn by a kill or foreign to us is skipped."""
        return [e for e in self._read() if e.store == self.store]

    def answer(self, key: str, attempt: int) -> str | None:
        """The request id journaled for this attempt of job ``key``, if any."""
        found = [e.request_id for e in self.entries() if (e.key, e.attempt) == (key, attempt)]
        return found[-1] if found else None

    def forget(self, done: Iterable[tuple[str, str]]) -> None:
        """Drop the entries of these (key, request id) pairs, now in the store; raises OSError."""
        gone = set(done)
        with self._locked():
            self._rewrite([e for e in self._read() if (e.key, e.request_id) not in gone])

    def replay(self, store: Store) -> list[str]:
        """Record the answers still missing from ``store``; returns one line per job moved.

        Run at start-up, before jobs left ``submitting`` become unknown. A job still in the
        attempt an entry answered goes to ``queued`` with that request id (the runner then tracks
        it); any other entry is already recorded or outdated, and is dropped. Entries of a run
        still alive (PostgreSQL runners sharing the folder) stay for that run to record. Each move
        is its own commit and the file shrinks only afterwards: a kill mid-way replays the rest.
        """
        if not os.path.lexists(self.path):
            return []
        moved: list[str] = []
        try:
            with self._locked():
                keep: list[Entry] = []
                mine: list[Entry] = []
                for e in self._read():
                    theirs = e.store != self.store or (e.run is not None and store.run_alive(e.run))
                    (keep if theirs else mine).append(e)
                for entry in mine:
                    if _apply(store, entry):
                        moved.append(
                            f"job {entry.key[:10]}: request id {entry.request_id} recovered "
                            f"from {self.path}"
                        )
                self._rewrite(keep)
        except OSError as exc:
            raise StoreError(f"journal {self.path}: {exc.strerror or exc}") from exc
        return moved

    def _read(self) -> list[Entry]:
        """Every entry; StoreError when the file cannot be read or is not a plain file of ours."""
        try:
            fd = open_own(self.path, os.O_RDONLY, "journal", "read")
        except FileNotFoundError:
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"journal {self.path} is not a file: move it away")
            with os.fdopen(os.dup(fd), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise StoreError(f"journal {self.path} cannot be read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        out = []
        for line in text.splitlines():
            try:
                entry = Entry(**json.loads(line))
            except (ValueError, TypeError):
                entry = None
            if entry is None or not _sound(entry):
                log.warning("journal %s: skipping a damaged line: %.80r", self.path, line)
                continue
            out.append(entry)
        return out

    def _rewrite(self, keep: list[Entry]) -> None:
        """Replace the file at once (rename): a kill leaves the old lines or the new, never half."""
        if not keep:
            self.path.unlink(missing_ok=True)
            _fsync_dir(self.path.parent)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in keep).encode()
        tmp.unlink(missing_ok=True)  # a killed rewrite's, or a link someone put there: never opened
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NEVER_FOLLOW, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A flock on the folder: held for a few file operations, by whoever changes the file."""
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _apply(store: Store, entry: Entry) -> bool:
    row = store.get(entry.key)
    if row is None or row.state is not JobState.SUBMITTING or row.attempts != entry.attempt:
        if row is not None and row.request_id != entry.request_id:
            log.warning(
                "journal: job %s is %s (attempt %d), not waiting for request %s of attempt %d",
                entry.key[:10],
                row.state,
                row.attempts,
                entry.request_id,
                entry.attempt,
            )
        return False
    store.transition(
        entry.key,
        JobState.QUEUED,
        expect=[JobState.SUBMITTING],
        request_id=entry.request_id,
        detail="request id recovered from the journal: the store could not record it in time",
    )
    return True


def _sound(entry: Entry) -> bool:
    """Fields of the types written, and a request id the client would have let through."""
    texts = (entry.key, entry.request_id, entry.model, entry.store, entry.at)
    return (
        all(isinstance(t, str) for t in texts)
        and type(entry.attempt) is int
        and (entry.run is None or type(entry.run) is int)
        and valid_request_id(entry.request_id) == entry.request_id
    )


def _ends_clean(path: Path) -> bool:
    """The file is empty or ends with a newline (a killed append may have left half a line)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NEVER_FOLLOW)
    except FileNotFoundError:
        return True
    with os.fdopen(fd, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
