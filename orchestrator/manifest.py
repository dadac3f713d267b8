"""manifest.jsonl and metadata.jsonl during a run: appended to as jobs change, compacted at its end.

A live run appends, every tick, the lines of the jobs that moved since its last write (found by the
store's events, so O(changes), never O(jobs)): one write and one fsync per file, under a lock on the
results folder that a whole rewrite takes too (runners sharing a PostgreSQL store share the folder).
In manifest.jsonl **a job's last line wins**: while a run is live, or after a kill, a job may have
several lines. metadata.jsonl (read as is by `datasets`) gains a job's output lines once, when it is
done: it never holds a row twice. A run writes both files whole (one line per job) when it ends,
and at its first tick when the files are not what the last whole write left of this very store (a
killed run's appends, a spec edit, a `retry` between runs).

A kill can cut only the last line short (mid-write): the next append cuts that fragment off before
writing, a whole rewrite replaces it, and ``read_lines`` skips a last line without its newline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ResultsError

if TYPE_CHECKING:
    from orchestrator.results import ResultsFolder
    from orchestrator.store import Store

__all__ = ["LiveManifest", "append_text", "folder_lock", "read_lines", "read_manifest"]

log = logging.getLogger("comfysweep.results")

# The store's meta entry: what the last whole write saw of the store, and the files it left.
RECORD = "manifest_written"
_TAIL_CHUNK = 64 * 1024


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Each line of a JSON-lines file the tool writes, as an object, in file order.

    A last line without its newline (a write a kill cut short) is skipped; any other line that is
    not a JSON object is a ResultsError naming the file and the line.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # a torn tail: the write it began never finished
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise ResultsError(f"{path}:{number}: not a JSON object line")
            yield value


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """manifest.jsonl as {job key: its entry}: a job's last line wins (in its first one's place)."""
    return {str(entry.get("key")): entry for entry in read_lines(path)}


@contextlib.contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Exclusive while held: a whole rewrite of the folder's files and another runner's appends
    never interleave (a flock on the folder itself, dropped by the kernel if its holder dies)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_text(path: Path, text: str) -> int:
    """Append ``text`` (whole lines) to ``path`` in one write, fsynced; returns bytes written.

    A torn last line a kill left is cut off first, so the file stays whole lines. Never through a
    symlink, into a FIFO or a device (OSError: the caller writes the file whole instead).
    """
    data = text.encode("utf-8")
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        _cut_torn_tail(fd, info.st_size)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def _cut_torn_tail(fd: int, size: int) -> None:
    """Truncate the file after its last newline, if it does not end with one."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """Which file is at ``path`` and how it stands (device, inode, size, mtime); None if absent."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class LiveManifest:
    """The runner's side: which jobs moved since the files were last written, and when to write
    them whole. ``bytes_written`` counts every byte written to both files (tests, benchmarks)."""

    def __init__(self, folder: ResultsFolder, store: Store) -> None:
        self.folder = folder
        self.store = store
        self._mark = 0  # the store's events up to this id are in the files
        self._whole = True  # the next write rewrites both files whole
        self._appended = False  # this run appended lines: its end writes the files whole

    @property
    def bytes_written(self) -> int:
        return self.folder.bytes_written

    def start(self) -> None:
        """At the run's start, before any job moves: where the store's events stand, and whether
        the files on disk are the ones the last whole write left of the store as it is now."""
        self._mark = self.store.last_event_id()
        self._whole = self.store.get_meta(RECORD) != self._record(self.store.fingerprint())

    def write(self) -> None:
        """Each tick: append the jobs that moved since the last write (or write whole if due)."""
        if self._whole:
            self.compact()
            return
        mark, keys = self.store.changed_since(self._mark)
        if keys:
            try:
                self.folder.append_manifest(self.store.jobs_of(keys))
            except OSError as exc:  # a symlink or a special file there: replaced by a whole write
                log.warning("appending to the manifest: %s; writing it whole", exc)
                self.compact()
                return
            self._appended = True
        self._mark = mark

    def finish(self) -> None:
        """At the run's end: both files whole, one line per job, unless nothing changed."""
        if self._whole or self._appended or self.store.changed_since(self._mark)[1]:
            self.compact()

    def compact(self) -> None:
        """Rewrite both files whole from the store, and record what they describe."""
        fingerprint = self.store.fingerprint()  # before the read: a change after it shows later
        mark = self.store.last_event_id()
        self.folder.write_manifest(self.store.jobs())
        self._mark, self._whole, self._appended = mark, False, False
        self.store.set_meta(RECORD, self._record(fingerprint))

    def _record(self, fingerprint: str) -> dict[str, Any]:
        files = [file_identity(self.folder.root / name) for name in self.folder.manifest_files]
        return {"store": fingerprint, "files": [list(f) if f else None for f in files]}
