"""The exclusive runner lock of an SQLite store: flock on a side file naming its holder.

The kernel drops a flock when its holder dies, SIGKILL included, so a killed run never leaves a
stale lock behind; the pid and host in the file only serve the error message. The side file is
never deleted (deleting a lock file under flock races with the next locker).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from orchestrator.errors import StoreError, StoreLockedError

__all__ = ["FileLock", "is_held", "open_own"]


class FileLock:
    """An exclusive, non-blocking flock on ``path``; ``acquire`` raises StoreLockedError if held."""

    def __init__(self, path: Path, store_name: str) -> None:
        self.path = path
        self._store_name = store_name
        self._fd: int | None = None

    def acquire(self, owner: str) -> None:
        # Never through a symlink nor over a hard link: the holder is written into this file and
        # erased on release, which would wipe whatever file a copied folder's link names.
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, "lock file", "opened")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise StoreError(
                f"lock file {self.path} is not a plain file (a FIFO, a device or a hard link to "
                "another file): comfysweep writes its holder there; move it away and run again"
            )
        os.set_blocking(fd, True)
        if not _take(fd):
            holder = _describe(fd)
            os.close(fd)
            raise StoreLockedError(
                f"store {self._store_name} is in use: locked by {holder} ({self.path})"
            ) from None
        # One pwrite then a truncate: a concurrent reader sees the old or the new holder, never
        # an empty file in between.
        record = json.dumps({"owner": owner, "pid": os.getpid(), "host": socket.gethostname()})
        data = record.encode() + b"\n"
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the flock


def _take(fd: int) -> bool:
    """The exclusive flock on ``fd``; False when a runner holds it.

    A reader (``is_held``: status, runs, stop, cancel) holds a shared flock for an instant: a run
    that starts then waits it out, and only an exclusive holder makes it fail.
    """
    for _ in range(_READER_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        try:  # granted only while no one holds the lock exclusively: readers, then
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        _pause(_READER_PAUSE)
    return False


# A reader's look lasts microseconds: a second of tries outlasts any number of them in a row.
_READER_TRIES = 1000
_READER_PAUSE = 0.001


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _describe(fd: int) -> str:
    """The holder recorded in the lock file, as 'owner (pid N on host H)'."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    owner = f"{info['owner']} " if info.get("owner") else ""
    return f"{owner}(held by pid {info['pid']} on host {info.get('host', '?')})"


def open_own(path: Path, flags: int, what: str, verb: str) -> int:
    """``os.open`` of a file only comfysweep writes: never through a symlink someone put there.

    A results folder copied from elsewhere may hold a link at one of our names; following it
    would write over (or read from) whatever file it names. StoreError names ``what`` and why.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise  # the caller knows what a missing file means
    except OSError as exc:
        if os.path.islink(path):
            raise StoreError(
                f"{what} {path} is a symbolic link, which comfysweep never makes: "
                "not followed; move it away"
            ) from None  # the message says it all; the errno would only repeat it
        raise StoreError(f"{what} {path} cannot be {verb}: {exc.strerror}") from exc


def is_held(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (a runner, right now).

    Tested with a shared lock taken and dropped at once: never writes the file, and a runner
    holding it exclusively makes the test fail without waiting.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False  # no lock file: no run ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False
