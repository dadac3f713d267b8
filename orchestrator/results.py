"""The results folder: output file names, atomic writes, the manifest and metadata.jsonl.

Everything about one sweep lives in ``<output>/<name>/``: the outputs, the store, ``manifest.jsonl``
(a line per job, always describing files that exist; during a run appended to, a job's last line
winning: orchestrator/manifest.py), ``metadata.jsonl`` (Hugging Face ``datasets`` folder-loader
form: a ``file_name`` column) and ``run.log``. Downloads land in
``.partial/`` first and are renamed into place only once complete and verified, so a partial file
never carries a final name.

Output names are the user's files. A name belongs to the job the store recorded it for, whether or
not the file is on disk at the moment; a job never writes over a name another job owns, a file
nobody recorded, or the tool's own files, and never writes through a symlinked folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import re
import secrets
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from orchestrator.conditioning import (
    INPUTS_DIR,
    LEFTOVER,
    MediaFolder,
    input_column,
    media_inputs,
    output_kind,
)
from orchestrator.errors import OutputInvalid, ResultsError
from orchestrator.leftovers import HOST, abandoned, owner_prefix
from orchestrator.magic import MIME_TYPES
from orchestrator.manifest import append_text, folder_lock, read_lines
from orchestrator.models import Model, get_model
from orchestrator.naming import (
    SHORT_KEY,
    TemplateError,
    fit_part,
    render_output_name,
    with_tag,
)
from orchestrator.store import STORE_FILE, JobLike, JobRow, Store
from orchestrator.verify import expected_shape, kind_of_extension, verify_output

__all__ = [
    "LOG_FILE",
    "MANIFEST",
    "METADATA",
    "STORE_FILE",
    "TOOL_FILES",
    "ResultsFolder",
    "atomic_file",
    "extension_of",
]

log = logging.getLogger("comfysweep.results")

MANIFEST = "manifest.jsonl"
METADATA = "metadata.jsonl"
CARD = "README.md"  # the results folder's dataset card: which files `datasets` loads
_CARD_MARK = "<!-- comfysweep rewrites this card with metadata.jsonl -->"
LOG_FILE = "run.log"
PARTIAL = ".partial"
# The report's posters folder and its mosaic video (orchestrator/report): no output takes them.
REPORT_FILES = ("report_assets", "report.mp4")
# Every name the tool writes at the top of a results folder; no output may take one. The store's
# name is a prefix: its -wal, -shm, -journal and .lock files, and any journal beside it, are its.
TOOL_FILES = (
    MANIFEST,
    METADATA,
    LOG_FILE,
    "summary.md",
    "summary.json",
    "report.html",
    PARTIAL,
    INPUTS_DIR,  # the conditioning images the jobs sent, one file each (orchestrator.conditioning)
    CARD,
)
# The extension a model's output is expected to take, to check the template before a submit.
KIND_EXTENSIONS = {"video": "mp4", "image": "png", "audio": "wav"}
_FALLBACKS = 100  # numbered fallback names tried before a folder is declared unusable
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
# <key>-<n>~<host>~<pid>.part (and the older <key>-<n>.part): the only files prepare() removes.
_PARTIAL_FILE = re.compile(r"[0-9a-f]{16}-\d+(?:~(?P<host>[^~/]+)~(?P<pid>\d+))?\.part")


class ResultsFolder:
    """One sweep's folder on disk."""

    def __init__(self, root: Path, model: Model, template: str) -> None:
        self.root = root
        self.model = model
        self.template = template
        self.partial_dir = root / PARTIAL
        self._store: Store | None = None
        self._owners: dict[str, str] | None = None  # _fold(path) -> the job key that owns it
        self._replace: dict[str, bool] = {}  # chosen name -> its job's own file was there
        self._reserved = {_fold(name) for name in (*TOOL_FILES, *REPORT_FILES)}
        self._reserved_prefixes = _store_prefixes(STORE_FILE)
        self._media = MediaFolder(root)
        self._card: str | None = None  # the dataset card as last written
        self._patterns: set[str] = set()  # the card's patterns of the outputs listed so far
        self._listed: set[str] | None = None  # jobs metadata.jsonl holds lines of (if known)
        self._listed_in: tuple[int, int] | None = None  # ... in this file (device, inode)
        self.bytes_written = 0  # bytes written to manifest.jsonl and metadata.jsonl in all
        self.manifest_files = (MANIFEST, METADATA)
        self._models: dict[str, Model] = {}  # the sweep's other models, by id
        # Model id -> (its Model as the spec has it, its short label): names by the spec's
        # common names and ``{model}`` in a sweep of several models (orchestrator.spec).
        self.models: dict[str, tuple[Model, str]] = {}

    def attach(self, store: Store) -> None:
        """Take output ownership from ``store``'s recorded outputs, and keep off its files."""
        self._store = store
        self._owners = None
        if store.path is not None and _inside(store.path, self.root):
            self._reserved_prefixes |= _store_prefixes(store.path.name)

    def prepare(self, warn: Callable[[str], None] = log.warning) -> int:
        """Create the folder and remove partial downloads killed runs left; returns how many.

        A partial file is named after the process writing it, so runners sharing one folder (a
        shared PostgreSQL store) never delete each other's downloads in progress. Only regular
        files named as comfysweep names them are removed; anything else gets one line from
        ``warn`` and is left alone. A ``.partial`` that is not a real folder stops the run.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_partial()
        inputs = self.root / INPUTS_DIR
        if not _folder_or_absent(inputs):  # else the run pays its jobs, then cannot name them
            kind = "a symlink" if inputs.is_symlink() else "not a folder"
            raise ResultsError(
                f"{inputs} is {kind}: comfysweep writes the conditioning images into a real "
                "folder there and never follows a link out of the results folder; move it away "
                "and run again"
            )
        for name in (MANIFEST, METADATA):
            if not _file_or_absent(self.root / name):  # else every job is paid, then the run stops
                raise ResultsError(
                    f"{self.root / name} is a folder or not a regular file: comfysweep rewrites "
                    "it from the store; move it away and run again"
                )
        removed = 0
        for leftover in sorted(self.partial_dir.iterdir()):
            match = _PARTIAL_FILE.fullmatch(leftover.name)
            if not _is_file(leftover):
                warn(f"{leftover}: not a file comfysweep wrote; left alone")
            elif match is None:
                warn(f"{leftover}: not a partial download comfysweep wrote; left alone")
            elif match["host"] is None or abandoned(match["host"], match["pid"]):
                leftover.unlink(missing_ok=True)
                removed += 1
        # A kill inside atomic_file leaves its temporary file: .<file>.<host>~<pid>~<random>.tmp
        # (the manifest, metadata, summary.md and summary.json: every file the tool writes)
        for name in TOOL_FILES:
            for leftover in self.root.glob(f".{name}.*.tmp"):
                host, _, rest = leftover.name[len(name) + 2 :].partition("~")
                if _is_file(leftover) and abandoned(host, rest.partition("~")[0]):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed + self._clean_inputs()

    def _clean_inputs(self) -> int:
        """Remove the conditioning images killed runs left half written in ``inputs/``."""
        folder = self.root / INPUTS_DIR
        if not folder.exists() or not _folder_or_absent(folder):  # never through a symlink
            return 0
        removed = 0
        for leftover in folder.glob(".*.tmp"):
            match = LEFTOVER.fullmatch(leftover.name)
            if match and _is_file(leftover) and abandoned(match["host"], match["pid"]):
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def _check_partial(self) -> None:
        with contextlib.suppress(FileExistsError):  # or a runner starting beside us made it
            self.partial_dir.mkdir()
        mode = self.partial_dir.lstat().st_mode
        if not stat.S_ISDIR(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a folder"
            raise ResultsError(
                f"{self.partial_dir} is {kind}: comfysweep downloads into a real folder there "
                "and never follows a link out of the results folder; move it away and run again"
            )

    def temp_path(self, key: str, n: int) -> Path:
        """Where output ``n`` of job ``key`` is downloaded before it is verified."""
        return self.partial_dir / f"{key[:16]}-{n}~{HOST}~{os.getpid()}.part"

    def output_name(
        self, row: JobLike, n: int, count: int, url: str, *, ext: str | None = None
    ) -> str:
        """The relative final name of output ``n`` of ``count`` of a job, with extension ``ext``
        (from verify) or else its URL's.

        Never raises: a job whose values the template cannot format (it failed before its submit
        unless the template changed since) is named by its key, so a paid output is still kept.
        """
        ext = ext or extension_of(url)
        try:
            return render_output_name(
                self.template, row, n=n + 1, count=count, ext=ext, **self._naming(row.model_id)
            )
        except TemplateError as exc:
            log.warning("job %s: output name: %s; named by its key", row.key[:SHORT_KEY], exc)
            return render_output_name("{key}", row, n=n + 1, count=count, ext=ext)

    def name_problem(self, job: JobLike) -> str | None:
        """Why the template cannot name ``job``'s outputs, or None; checked before its submit."""
        ext = KIND_EXTENSIONS.get(self.model_of(job.model_id).output_kind, "bin")
        try:
            render_output_name(self.template, job, ext=ext, **self._naming(job.model_id))
        except TemplateError as exc:
            return f"run.filename cannot name this job's output: {exc}"
        return None

    def model_of(self, model_id: str | None) -> Model:
        """The model a job of ``model_id`` ran on: the folder's own, another of the sweep's as
        the spec has it (its map among its names), else the registry's."""
        if model_id is None or model_id == self.model.model_id:
            return self.model
        if model_id in self.models:
            return self.models[model_id][0]
        if model_id not in self._models:  # looked up once: a catalog entry may be read from disk
            self._models[model_id] = get_model(model_id)
        return self._models[model_id]

    def _naming(self, model_id: str) -> dict[str, Any]:
        known = self.models.get(model_id)
        return {} if known is None else {"model": known[0], "label": known[1]}

    def verify(
        self,
        tmp: Path,
        inputs: Mapping[str, Any],
        url: str,
        what: str,
        *,
        content_type: str | None = None,
        model: Model | None = None,
    ) -> str:
        """Raise OutputInvalid, removing ``tmp``, unless the download is whole, of the kind
        ``model`` (default: the folder's) makes and of the shape the job's inputs fixed; ``what``
        starts the message. Returns the extension the file's content gives it (else its URL's,
        else its ``content_type``'s; never one a URL chose, such as ``.exe``)."""
        model = model or self.model
        kind = model.output_kind if model.has_schema else None  # a schema-less model: any kind
        try:
            return verify_output(
                tmp,
                extension_of(url, ""),
                expected_shape(model, inputs),
                kind=kind,
                content_type=content_type,
            )
        except OutputInvalid as exc:
            tmp.unlink(missing_ok=True)
            raise OutputInvalid(f"{what} {exc}") from None

    def final_name(self, name: str, key: str) -> str:
        """The name job ``key`` takes for ``name``; it is the job's from now on.

        ``name`` itself if free: not the tool's, not another job's, no file nobody recorded there,
        no symlink or file where a folder goes. Otherwise ``name`` with the key added, then
        numbered, then with a random tag; folders in the way get a ``_`` added (the same for
        every job).
        """
        parts = self._usable_folders(name.split("/"))
        name = "/".join(parts)
        candidates = [name, *(with_tag(name, _tag(key, i)) for i in range(1, _FALLBACKS))]
        # The numbered names can be foreseen from the key, and all taken in advance; these not.
        candidates += [with_tag(name, f"{key[:SHORT_KEY]}-{secrets.token_hex(4)}") for _ in "ab"]
        for candidate in candidates:
            free = self._free(candidate, key)
            if free is not None:
                self._own(candidate, key)
                # Only a file of the job's own, there already, is ever replaced.
                self._replace[_fold(candidate)] = free == "replace"
                return candidate
        raise ResultsError(f"no free name for an output of job {key[:SHORT_KEY]} near {name}")

    def place(
        self, tmp: Path, name: str, key: str, record: Callable[[str], None] = lambda _: None
    ) -> str:
        """Rename a verified download into place under ``name`` (from final_name); returns the
        name it took, another free one if something took ``name`` meanwhile.

        ``record`` is called with that other name before the file takes it, as the caller
        recorded ``name``: a kill between the two must not leave the job owning ``name``, where a
        file that is not its own now sits, and so replace that file on the next run.
        """
        for _ in range(_FALLBACKS):
            try:
                replace = self._owner(name) == key and self._replace.get(_fold(name), False)
                self._put(tmp, name, replace=replace)
                self._replace.pop(_fold(name), None)
            except _Taken:
                self._owners_map()[_fold(name)] = ""  # nobody's: never ours to overwrite
                name = self.final_name(name, key)
                record(name)
                continue
            return name
        raise ResultsError(f"no free name for an output of job {key[:SHORT_KEY]} near {name}")

    def _usable_folders(self, parts: list[str]) -> list[str]:
        """``parts`` with a first part that is the tool's given a leading ``_``, and each folder
        that is a symlink or a file given a trailing one (the same for every job)."""
        for i in range(len(parts)):
            for _ in range(_FALLBACKS):
                last = i == len(parts) - 1
                # fit_part keeps a name of 255 bytes legal: a longer one could never be had.
                if i == 0 and self._is_reserved(parts[0]):
                    parts[0] = fit_part("_" + parts[0], "")  # no tool file starts with "_"
                elif not last and not _folder_or_absent(self.root.joinpath(*parts[: i + 1])):
                    parts[i] = fit_part(parts[i], "_")
                else:
                    break
        return parts

    def _is_reserved(self, part: str) -> bool:
        folded = _fold(part)
        return folded in self._reserved or folded.startswith(tuple(self._reserved_prefixes))

    def _free(self, name: str, key: str) -> str | None:
        """ "new" if job ``key`` may create ``name``, "replace" if it may replace its own file
        there, None if the name is not the job's to take."""
        owner = self._owner(name)
        if owner is not None and owner != key:
            return None
        parts = name.split("/")
        if self._is_reserved(parts[0]) or not all(
            _folder_or_absent(self.root.joinpath(*parts[:i])) for i in range(1, len(parts))
        ):
            return None
        try:
            mode = (self.root / name).lstat().st_mode
        except FileNotFoundError:
            return "new"
        except OSError:
            return None
        return "replace" if owner == key and not stat.S_ISDIR(mode) else None

    def _owner(self, name: str) -> str | None:
        return self._owners_map().get(_fold(name))

    def _own(self, name: str, key: str) -> None:
        self._owners_map()[_fold(name)] = key

    def _owners_map(self) -> dict[str, str]:
        """Every recorded output name's job, read from the store once (on the first download).

        A name two jobs recorded (runners sharing a store each read it once, so one may take a
        name whose file was deleted after it read) is nobody's: neither replaces the other's file.
        """
        if self._owners is None:
            owners: dict[str, str] = {}
            for row in self._store.jobs() if self._store is not None else ():
                for output in row.outputs:
                    name = _fold(str(output.get("path", "")))
                    owners[name] = row.key if owners.get(name, row.key) == row.key else ""
            self._owners = owners
        return self._owners

    def _put(self, tmp: Path, name: str, *, replace: bool) -> None:
        """Move ``tmp`` to ``name``, through real folders only (opened without following links).

        ``replace`` only for the job's own name; otherwise a hard link, which fails rather than
        overwrite a file that appeared meanwhile. Raises _Taken when the name cannot be had.
        """
        *folders, last = name.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in folders:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _Taken from exc
                    raise
                os.close(fd)
                fd = child
            if replace:
                os.replace(tmp, last, dst_dir_fd=fd)
            else:
                _link(tmp, last, fd)
            os.fsync(fd)
        finally:
            os.close(fd)

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
        Conditioning images (data: URIs) are written once each under ``inputs/`` and named by that
        path; each job's rating (the attached store's) is its ``rating``, null when unrated. Under
        the folder's lock: a runner beside this one (a shared store) never appends meanwhile.
        """
        count = 0
        ratings = self._store.ratings() if self._store is not None else {}
        patterns: set[str] = set()
        listed: set[str] = set()
        with folder_lock(self.root):
            with (
                atomic_file(self.root / MANIFEST) as manifest,
                atomic_file(self.root / METADATA) as metadata,
            ):
                for row in rows:
                    count += 1
                    entry, outputs = self._lines(row, ratings, patterns)
                    manifest.write(entry)
                    if outputs:
                        metadata.write(outputs)
                        listed.add(row.key)
            self._listed, self._listed_in = listed, _identity(self.root / METADATA)
            self.bytes_written += sum(
                (self.root / name).stat().st_size for name in self.manifest_files
            )
        self._patterns = patterns
        self._write_card(patterns)
        return count

    def append_manifest(self, rows: Iterable[JobRow]) -> int:
        """Append a line to manifest.jsonl for each of ``rows`` (jobs that moved: a job's last
        line wins), and to metadata.jsonl the output lines of each now done and not listed there
        yet (never twice); returns the lines appended to the manifest. Fsynced, under the
        folder's lock (orchestrator/manifest.py)."""
        ratings = self._store.ratings() if self._store is not None else {}
        manifest: list[str] = []
        metadata: list[str] = []
        with folder_lock(self.root):
            listed = self._listed_now()
            newly: list[str] = []
            for row in rows:
                entry, outputs = self._lines(
                    row, ratings, self._patterns, metadata=row.key not in listed
                )
                manifest.append(entry)
                if outputs:
                    metadata.append(outputs)
                    newly.append(row.key)
            if manifest:
                self.bytes_written += append_text(self.root / MANIFEST, "".join(manifest))
            if metadata:
                self.bytes_written += append_text(self.root / METADATA, "".join(metadata))
                listed.update(newly)
                self._listed_in = _identity(self.root / METADATA)
        if metadata:
            self._write_card(self._patterns)
        return len(manifest)

    def _listed_now(self) -> set[str]:
        """The jobs metadata.jsonl holds lines of: known since this process last wrote it, else
        (a first append, or another runner rewrote it since) read from the file once."""
        path = self.root / METADATA
        if self._listed is None or self._listed_in != _identity(path):
            listed: set[str] = set()
            with contextlib.suppress(FileNotFoundError):
                for line in read_lines(path):
                    listed.add(str(line.get("job_key")))
                    self._patterns.add(_pattern(str(line.get("file_name", ""))))
            self._listed, self._listed_in = listed, _identity(path)
        return self._listed

    def _lines(
        self,
        row: JobRow,
        ratings: Mapping[str, str],
        patterns: set[str],
        *,
        metadata: bool = True,
    ) -> tuple[str, str]:
        """A job's manifest line, and (``metadata``) its metadata.jsonl lines: one per output
        on disk when it is done; the patterns of those outputs go into ``patterns``."""
        on_disk = [o for o in row.outputs if self.has(o)] if row.state == "done" else []
        inputs, sources = self.dataset_inputs(row)
        rating = ratings.get(row.key)
        entry = self._manifest_entry(row, inputs, on_disk) | {"rating": rating}
        if sources:
            entry["sources"] = sources
        if not metadata:
            return _line(entry), ""
        columns = inputs | {f"{name}_source": path for name, path in sources.items()}
        lines = []
        for output in on_disk:
            patterns.add(_pattern(str(output["path"])))
            line = {"file_name": output["path"], "job_key": row.key, "rating": rating}
            line |= _kind_and_mime(output)
            kind = output_kind(str(output["path"])) or "video"  # input_video if so named
            line |= {input_column(k, kind, line): v for k, v in columns.items()}
            lines.append(_line(line))
        return _line(entry), "".join(lines)

    def _write_card(self, patterns_seen: set[str]) -> None:
        """README.md, naming the outputs and metadata.jsonl as the dataset's files: `datasets`
        otherwise picks a folder's loader by its commonest extension, and one output beside
        manifest.jsonl loads as JSON, two videos beside two conditioning images as images.
        The patterns name the outputs' own folders (``*.png``, ``seed-1/**/*.png``), never
        ``inputs/`` or the report's posters, which an image sweep's ``**/*.png`` would take.
        Written when it changes; a README.md of the user's (without our mark) is left alone."""
        patterns = [*sorted(patterns_seen), METADATA]
        kinds = {kind_of_extension(p.rpartition(".")[2]) for p in patterns_seen} - {None}
        if len(kinds) > 1:  # no one `datasets` feature: the table alone, file_name a path
            patterns = [METADATA]
        head = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train"]
        paths = ["    path:", *(f"    - {json.dumps(p)}" for p in patterns)]
        card = "\n".join([*head, *paths, "---", _CARD_MARK, ""])
        path = self.root / CARD
        if card == self._card and _is_file(path):
            return
        try:
            ours = not path.exists() or (_is_file(path) and _CARD_MARK in path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError):
            ours = False
        if ours:
            with atomic_file(path) as handle:
                handle.write(card)
        self._card = card

    def dataset_inputs(self, row: JobRow) -> tuple[dict[str, Any], dict[str, Any]]:
        """A job's inputs by friendly name, each data: URI as the path of its file under
        ``inputs/`` (written once), and the local file each of those came from."""
        raw, origin = media_inputs(row.inputs, row.sources, self._media)
        name = self.models.get(row.model_id, (self.model, ""))[0].display_name
        return {name(k): v for k, v in raw.items()}, {name(k): v for k, v in origin.items()}

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
            "outputs": [
                {k: o.get(k) for k in ("path", "size", "sha256", "url")} | _kind_and_mime(o)
                for o in outputs
            ],
            "orphaned": not row.in_spec,  # no longer in the spec: kept, never submitted again
        }


def _kind_and_mime(output: Mapping[str, Any]) -> dict[str, str | None]:
    """An output's ``kind`` (video, image, audio) and ``mime``, from its extension (which its
    content chose when it was verified)."""
    ext = extension_of(str(output.get("path", "")), "")
    return {"kind": kind_of_extension(ext), "mime": MIME_TYPES.get(ext)}


def _pattern(path: str) -> str:
    """The card's pattern that takes an output: its extension under its first folder (outputs
    never sit in the tool's folders: the first part of their name is never one of those)."""
    ext = extension_of(path, "")
    glob_ext = f"*.{ext}" if ext else "*"
    folder, slash, _ = path.partition("/")
    return f"{folder}/**/{glob_ext}" if slash else glob_ext


def extension_of(url: str, default: str = "bin") -> str:
    """The file extension an output URL names, or ``default``."""
    _, ext = posixpath.splitext(urlsplit(url).path)
    ext = ext.lstrip(".").lower()
    return ext if ext.isalnum() and 0 < len(ext) <= 5 else default


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces ``path`` (fsynced) only if the block ends without an error."""
    prefix = owner_prefix(path.name)  # whose it is, for prepare() after a kill
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


class _Taken(Exception):
    """A name was taken, or a folder on its way turned into a link, after it was chosen."""


def _link(tmp: Path, last: str, fd: int) -> None:
    """Move ``tmp`` to ``last`` in folder ``fd`` unless something is there (checked atomically
    with a hard link where the file system has them, else just before the rename)."""
    try:
        os.link(tmp, last, dst_dir_fd=fd)
    except FileExistsError as exc:
        raise _Taken from exc
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            os.replace(tmp, last, dst_dir_fd=fd)
            return
        raise _Taken from exc
    tmp.unlink()


def _fold(name: str) -> str:
    """A name as a case-insensitive, normalising file system (APFS, NTFS) compares it: names
    that differ only in case or in Unicode composition (é as one or two code points) are one."""
    return unicodedata.normalize("NFC", name.casefold())


def _tag(key: str, i: int) -> str:
    return key[:SHORT_KEY] if i == 1 else f"{key[:SHORT_KEY]}-{i}"


def _store_prefixes(store_name: str) -> set[str]:
    folded = _fold(store_name)
    stem = folded.rpartition(".")[0] or folded
    return {folded, f"{stem}.", f"{stem}-"}


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().parent == root.resolve()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """A regular file, not through a symlink."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _file_or_absent(path: Path) -> bool:
    """Nothing is there, a regular file, or a symlink (replaced, never followed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def _folder_or_absent(path: Path) -> bool:
    """Nothing is there, or a real folder (not a symlink to one)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at ``path`` (device, inode): another runner's rewrite makes another one."""
    try:
        info = path.stat(follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


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


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
