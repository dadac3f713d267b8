"""The results folder: output file names, atomic writes, the manifest and metadata.jsonl.

Everything about one sweep lives in ``<output>/<name>/``: the outputs, the store, ``manifest.jsonl``
(one line per job, always describing files that exist), ``metadata.jsonl`` (Hugging Face
``datasets`` folder-loader form: a ``file_name`` column) and ``run.log``. Downloads land in
``.partial/`` first and are renamed into place only once complete and verified, so a partial file
never carries a final name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import socket
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from orchestrator.grid import Job
from orchestrator.models import Model
from orchestrator.naming import render_output_name
from orchestrator.store import JobRow

__all__ = ["MANIFEST", "METADATA", "ResultsFolder", "atomic_file", "extension_of"]

MANIFEST = "manifest.jsonl"
METADATA = "metadata.jsonl"
PARTIAL = ".partial"
_DATA_URI_SHOWN = 64
_HOST = socket.gethostname().replace("~", "_").replace("/", "_") or "host"


class ResultsFolder:
    """One sweep's folder on disk."""

    def __init__(self, root: Path, model: Model, template: str) -> None:
        self.root = root
        self.model = model
        self.template = template
        self.partial_dir = root / PARTIAL

    def prepare(self) -> int:
        """Create the folder and remove partial downloads killed runs left; returns how many.

        A partial file is named after the process writing it, so runners sharing one folder (a
        shared PostgreSQL store) never delete each other's downloads in progress.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(exist_ok=True)
        removed = 0
        for leftover in self.partial_dir.iterdir():
            parts = leftover.name.removesuffix(".part").split("~")  # <key>-<n>~<host>~<pid>
            if len(parts) != 3 or _abandoned(parts[1], parts[2]):
                leftover.unlink(missing_ok=True)
                removed += 1
        # A kill inside atomic_file leaves its temporary file: .<file>.<host>~<pid>~<random>.tmp
        for name in (MANIFEST, METADATA):
            for leftover in self.root.glob(f".{name}.*.tmp"):
                host, _, rest = leftover.name[len(name) + 2 :].partition("~")
                if _abandoned(host, rest.partition("~")[0]):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed

    def temp_path(self, key: str, n: int) -> Path:
        """Where output ``n`` of job ``key`` is downloaded before it is verified."""
        return self.partial_dir / f"{key[:16]}-{n}~{_HOST}~{os.getpid()}.part"

    def output_name(self, row: JobRow, n: int, count: int, url: str) -> str:
        """The relative final name of output ``n`` of ``count`` of a job."""
        job = Job(
            key=row.key,
            index=row.index,
            model_id=row.model_id,
            inputs=row.inputs,
            repeat=row.repeat,
            sources=row.sources,
        )
        return render_output_name(self.template, job, n=n + 1, count=count, ext=extension_of(url))

    def final_name(self, name: str, key: str, own: Collection[str] = ()) -> str:
        """``name``, or ``name`` with the key added when a file not in ``own`` holds it."""
        if (self.root / name).exists() and name not in own:
            stem, dot, ext = name.rpartition(".")
            return f"{stem}_{key[:10]}.{ext}" if dot else f"{name}_{key[:10]}"
        return name

    def place(self, tmp: Path, name: str, key: str, own: Collection[str] = ()) -> str:
        """Rename a verified download into place; a name another job holds gets the key added."""
        name = self.final_name(name, key, own)
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return name

    def has(self, output: Mapping[str, Any]) -> bool:
        """Whether a recorded output is on disk with its recorded size."""
        path = self.root / str(output.get("path", ""))
        try:
            return path.is_file() and path.stat().st_size == output.get("size")
        except OSError:
            return False

    def write_manifest(self, rows: Iterable[JobRow]) -> int:
        """Rewrite manifest.jsonl and metadata.jsonl atomically from the store; returns lines.

        One pass over the rows writes both files, so memory stays flat however many jobs there are.
        """
        count = 0
        with (
            atomic_file(self.root / MANIFEST) as manifest,
            atomic_file(self.root / METADATA) as metadata,
        ):
            for row in rows:
                count += 1
                on_disk = [o for o in row.outputs if self.has(o)] if row.state == "done" else []
                inputs = self.friendly_inputs(row.inputs)
                manifest.write(_line(self._manifest_entry(row, inputs, on_disk)))
                for output in on_disk:
                    entry = {"file_name": output["path"], "job_key": row.key} | inputs
                    metadata.write(_line(entry))
        return count

    def _manifest_entry(
        self, row: JobRow, inputs: dict[str, Any], outputs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "key": row.key,
            "index": row.index,
            "state": str(row.state),
            "request_id": row.request_id,
            "model": row.model_id,
            "inputs": inputs,
            "repeat": row.repeat,
            "attempts": row.attempts,
            "created_at": _iso(row.created_at),
            "submitted_at": _iso(row.submitted_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
            "downloaded_at": _iso(row.downloaded_at),
            "cost_usd": row.cost,
            "error": row.error,
            "outputs": [{k: o.get(k) for k in ("path", "size", "sha256", "url")} for o in outputs],
            "orphaned": not row.in_spec,  # no longer in the spec: kept, never submitted again
        }

    def friendly_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs by friendly name, with data: URIs shortened to a readable reference."""
        return {self.model.display_name(k): _shorten(v) for k, v in inputs.items()}


def extension_of(url: str, default: str = "mp4") -> str:
    """The file extension an output URL names, or ``default``."""
    _, ext = posixpath.splitext(urlsplit(url).path)
    ext = ext.lstrip(".").lower()
    return ext if ext.isalnum() and 0 < len(ext) <= 5 else default


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces ``path`` (fsynced) only if the block ends without an error."""
    prefix = f".{path.name}.{_HOST}~{os.getpid()}~"  # whose it is, for prepare() after a kill
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the folder is meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _abandoned(host: str, pid: str) -> bool:
    """Whether a leftover written by ``pid`` on ``host`` belongs to nobody any more.

    Another machine's leftovers are its own runner's to clean up; ours are abandoned once their
    writer is gone.
    """
    return host == _HOST and not (pid.isdigit() and _alive(int(pid)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > _DATA_URI_SHOWN:
        return _data_uri_label(value)
    return value


@functools.lru_cache(maxsize=64)
def _data_uri_label(value: str) -> str:
    """A readable stand-in for a data: URI; cached, since every job of a sweep repeats the same
    few images and hashing a 6 MiB image again for each manifest line would dominate a rewrite."""
    head = value.split(",", 1)[0]
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{head},<{len(value)} chars, sha256 {digest}>"


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
