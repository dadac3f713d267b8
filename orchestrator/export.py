"""`comfysweep export`: a sweep as a dataset (a Hugging Face folder, parquet, csv or webdataset).

DEST is always a new folder, built next to where it goes and renamed into place at the end, so a
crash or Ctrl-C leaves no half export. ``hf``, ``parquet`` and ``csv`` give the same folder: the
outputs under ``data/`` (hard links when DEST is on the results folder's file system, else
copies), each conditioning image once under ``inputs/``, and one table of one row per output file
(``metadata.jsonl``, ``metadata.parquet`` or ``metadata.csv``: every folder form `datasets` loads).
``webdataset`` gives tar shards of samples grouped by basename: ``KEY.mp4`` (or ``.png``,
``.wav``: the output's own extension), ``KEY.json`` and ``KEY.<input>.png`` for each conditioning
image. An image sweep's ``hf`` folder loads as an image folder (an ``image`` column), an audio
sweep's as an audio folder (``audio``), a video sweep's as a video folder (``video``).

Two streaming passes over the store: the first picks the jobs, finds missing files and learns
each column's type (a column that is an int in one row and a float in another is a float in all:
`datasets` refuses mixed types); the second writes. Memory holds the chosen keys, never the rows.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import glob
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from orchestrator import objects
from orchestrator.conditioning import (
    Media,
    MediaFolder,
    decode_data_uri,
    input_column,
    output_kind,
)
from orchestrator.errors import ExportError
from orchestrator.leftovers import abandoned, owner_prefix
from orchestrator.locate import Located
from orchestrator.models import get_model
from orchestrator.responses import error_message
from orchestrator.store import JobRow, JobState, Store
from orchestrator.sweepmodels import StoreModels

__all__ = [
    "FORMATS",
    "RATED",
    "ExportOptions",
    "ExportReport",
    "export_sweep",
    "parse_shard_size",
]

FORMATS = ("hf", "parquet", "csv", "webdataset")
RATED = ("up", "down", "pick")
DATA_DIR = "data"
_TABLES = {"hf": "metadata.jsonl", "parquet": "metadata.parquet", "csv": "metadata.csv"}
# What `--rated X` keeps: a pick is the best of its row, so it is rated up too.
_KEEP = {"up": {"up", "pick"}, "down": {"down"}, "pick": {"pick"}}
_FIXED = {
    "file_name": "string",
    "job_key": "string",
    "model": "string",  # the job's model id (a sweep may have several)
    "index": "int",
    "repeat": "int",  # which copy of its combination (run.repeat): copies differ only there
    "orphaned": "bool",  # an edit of the spec removed it (paid, kept; `status` counts it apart)
    "state": "string",
    "rating": "string",
    "cost_usd": "float",
    "error": "string",
}
# A ComfyUI seed goes up to 2**64-1: an int past int64 makes its column text (exact, and what
# `datasets` reads: its JSON reader overflows on a uint64), never an overflow in pyarrow.
_INT64 = range(-(2**63), 2**63)
_FEATURES = {
    "int": "int64",
    "float": "float64",
    "bool": "bool",
    "string": "string",
    "strings": "string",  # a list of them (a list input's files): `sequence: string`
}
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*(k|m|g|t)i?b\s*")
_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BATCH = 1000  # parquet rows per row group write
_MEMBER = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ExportOptions:
    """What `comfysweep export` writes; the defaults are the command's."""

    format: str = "hf"
    include_failed: bool = False  # every job not done, as a row without a file
    rated: str | None = None  # "up" (picks too), "down" or "pick"
    skip_missing: bool = False  # a done job's output gone from disk: skipped, else refused
    shard_size: str = "1GB"  # webdataset: samples (1000) or bytes (500MB)
    copy: bool = False  # copy outputs even where a hard link would do


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: rows (one per output file, or per job without one), files."""

    dest: Path
    format: str
    rows: int
    linked: int
    copied: int
    media: int  # conditioning files (each distinct one once; in every sample for webdataset)
    skipped: int  # missing outputs skipped (--skip-missing)
    shards: int = 0
    cleaned: int = 0  # staging folders killed exports left beside DEST, removed


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``--shard-size``: (samples, None) for a count, (None, bytes) for 500MB/1GB; ExportError."""
    stripped = text.strip()
    if stripped.isdigit() and int(stripped) > 0:
        return int(stripped), None
    match = _SIZE.fullmatch(text)
    if match is not None and float(match[1]) > 0:
        return None, max(1, int(float(match[1]) * _UNITS[match[2].lower()]))
    raise ExportError(
        f"--shard-size {text}: expected a number of samples (1000) or a size (500MB, 1GB)"
    )


def export_sweep(located: Located, dest: Path, options: ExportOptions) -> ExportReport:
    """Write ``located``'s sweep to the new folder ``dest``; raises ExportError (one line) and
    writes nothing when it cannot."""
    if options.format not in FORMATS:
        raise ExportError(f"--format {options.format}: expected one of {', '.join(FORMATS)}")
    if options.rated is not None and options.rated not in RATED:
        raise ExportError(f"--rated {options.rated}: expected one of {', '.join(RATED)}")
    if located.results is None:
        raise ExportError("export needs the results folder: give the sweep's SPEC")
    shards = parse_shard_size(options.shard_size)
    if options.format == "parquet":
        _require_pyarrow()
    try:
        return _export(located, located.results, dest, options, shards)
    except OSError as exc:  # DEST under a file, a full or read-only disk: the staging is gone
        raise ExportError(f"{dest}: cannot export there: {exc.strerror or exc}") from None


def _export(
    located: Located,
    results: Path,
    dest: Path,
    options: ExportOptions,
    shards: tuple[int | None, int | None],
) -> ExportReport:
    _check_dest(dest, results)
    with Store.open(located.store, readonly=True) as store:
        ratings = store.ratings()
        plan = _survey(store, results, options, ratings)
        if not plan.keys:
            raise ExportError(f"nothing to export: no {_what(options)} in {located.name}")
        cleaned = _clean_staging(dest)
        with _staging(dest) as tmp:
            source = _Source(store, results, plan, ratings, options)
            if options.format == "webdataset":
                report = _write_shards(source, tmp, dest, shards)
            else:
                report = _write_folder(source, tmp, dest, options)
    return dataclasses.replace(report, cleaned=cleaned)


# -- pass 1: which jobs, which files are missing, each column's type --------------------------


@dataclass
class _Plan:
    keys: set[str] = field(default_factory=set)
    columns: dict[str, str] = field(default_factory=lambda: dict(_FIXED))  # name -> kind
    names: dict[str, str] = field(default_factory=dict)  # a friendly input name -> its column
    missing: int = 0
    dropped: int = 0  # of those, in jobs left out whole (the rest are skipped as they come)
    first_missing: str | None = None
    kind: str | None = None  # video, image or audio: the `datasets` feature of the outputs
    models: StoreModels | None = None  # each model's names as the spec gave them

    def display(self, row: JobRow) -> Callable[[str], str]:
        """How ``row``'s inputs are named: by its model's names as the spec gave them."""
        model = self.models.model(row.model_id) if self.models else get_model(row.model_id)
        return model.display_name


def _survey(
    store: Store, results: Path, options: ExportOptions, ratings: Mapping[str, str]
) -> _Plan:
    plan = _Plan(models=StoreModels(store))
    inputs: dict[str, str | None] = {}  # friendly name -> kind (None: no value seen yet)
    kinds: set[str] = set()  # the outputs' kinds: a `datasets` folder holds one
    for row in store.jobs():
        if not _chosen(row, options, ratings):
            continue
        if row.state == JobState.DONE:
            present = [o for o in row.outputs if _on_disk(results, o)]
            gone = len(row.outputs) - len(present) if row.outputs else 1
            if gone:
                plan.missing += gone
                if plan.first_missing is None:
                    names = [str(o.get("path")) for o in row.outputs if o not in present]
                    plan.first_missing = _why(results, names[0]) if names else f"job {row.key}"
            if not present:
                plan.dropped += gone
                continue
            plan.kind = plan.kind or output_kind(str(present[0]["path"]))
            kinds.update(k for o in present if (k := output_kind(str(o["path"]))) is not None)
        plan.keys.add(row.key)
        for name, value in _inputs(row, plan.display(row), lambda m: m.file_name).items():
            inputs[name] = _merge(inputs.get(name), _kind(value))
    if options.format == "hf" and len(kinds) > 1:
        raise ExportError(
            f"--format hf: the outputs are of several kinds ({', '.join(sorted(kinds))}) and a "
            "`datasets` folder loads one kind (its rows had no file at all); "
            "give --format parquet, csv or webdataset"
        )
    for name, kind in inputs.items():
        plan.names[name] = _column(name, plan.kind or "video", options.format)
        plan.columns[plan.names[name]] = kind if kind in _FEATURES else "string"  # json: text
    if plan.missing and not options.skip_missing:
        raise ExportError(
            f"{plan.first_missing} ({plan.missing} output file(s) of done jobs gone); "
            "`comfysweep run` downloads them again, or give --skip-missing"
        )
    return plan


def _chosen(row: JobRow, options: ExportOptions, ratings: Mapping[str, str]) -> bool:
    if row.state != JobState.DONE and not options.include_failed:
        return False
    return options.rated is None or ratings.get(row.key) in _KEEP[options.rated]


def _what(options: ExportOptions) -> str:
    jobs = "job" if options.include_failed else "done job"
    return jobs if options.rated is None else f"{jobs} rated {options.rated}"


def _column(name: str, kind: str, fmt: str) -> str:
    # A webdataset sample's json names its file in ``output`` (instead of file_name).
    return input_column(name, kind, {*_FIXED, "output"} if fmt == "webdataset" else _FIXED)


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if value in _INT64 else "string"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "strings"  # a list input's files or URLs: a list column
    return "string" if isinstance(value, str) else "json"


def _merge(old: str | None, new: str | None) -> str | None:
    if old is None or new is None or old == new:
        return old or new
    if {old, new} == {"int", "float"}:
        return "float"
    return "string"


def _coerce(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "float":
        return float(value)
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


# -- pass 2: the rows, as written -------------------------------------------------------------


@dataclass
class _Source:
    """The chosen jobs again, one record per output file (or per job without one)."""

    store: Store
    results: Path
    plan: _Plan
    ratings: Mapping[str, str]
    options: ExportOptions
    skipped: int = 0  # missing outputs left out (--skip-missing)

    def __post_init__(self) -> None:
        self.skipped = self.plan.dropped

    def entries(self) -> Iterator[tuple[JobRow, Mapping[str, Any] | None]]:
        for row in self.store.jobs():
            if row.key not in self.plan.keys or not _chosen(row, self.options, self.ratings):
                continue  # a live run may have moved it since the first pass
            if row.state != JobState.DONE:
                yield row, None
                continue
            for output in row.outputs:
                if _on_disk(self.results, output):
                    yield row, output
                elif self.options.skip_missing:
                    self.skipped += 1
                else:  # deleted since the first pass
                    raise ExportError(
                        f"{self.results / str(output.get('path'))}: missing (deleted during the "
                        "export); `comfysweep run` downloads it again, or give --skip-missing"
                    )

    def record(
        self, row: JobRow, file_name: str | None, place: Callable[[Media], str]
    ) -> dict[str, Any]:
        """One row of the table: fixed columns, then inputs, every column of its one type."""
        values: dict[str, Any] = {
            "file_name": file_name,
            "job_key": row.key,
            "model": row.model_id,
            "index": row.index,
            "repeat": row.repeat,
            "orphaned": not row.in_spec,
            "state": str(row.state),
            "rating": self.ratings.get(row.key),
            "cost_usd": row.cost,
            "error": error_message(row.error),
        }
        for name, value in _inputs(row, self.plan.display(row), place).items():
            values[self.plan.names.get(name, name)] = value
        return {c: _coerce(values.get(c), kind) for c, kind in self.plan.columns.items()}


def _inputs(
    row: JobRow, display: Callable[[str], str], place: Callable[[Media], str]
) -> dict[str, Any]:
    """A job's inputs by friendly name, each data: URI as ``place`` names its file, and the
    local file each came from as ``<name>_source``."""
    out: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for key, value in row.inputs.items():
        items = value if isinstance(value, list) else [value]
        found = [decode_data_uri(item) for item in items]
        placed = [item if m is None else place(m) for item, m in zip(items, found, strict=True)]
        out[display(key)] = placed if isinstance(value, list) else placed[0]
        if any(m is not None for m in found) and key in row.sources:
            sources[f"{display(key)}_source"] = row.sources[key]
    return out | sources | _object_labels(row, display)


def _object_labels(row: JobRow, display: Callable[[str], str]) -> dict[str, str]:
    """``<name>_label`` beside each object input's JSON (a LoRA: ``my-style@0.5``, or ``none``
    for a job that leaves it out), as file names and the report show it."""
    props = get_model(row.model_id).properties
    keys = [k for k, p in props.items() if objects.is_object_field(p)]
    keys += [k for k, v in row.inputs.items() if isinstance(v, dict) and k not in props]
    return {f"{display(k)}_label": objects.label(row.inputs.get(k)) for k in keys}


def _write_folder(source: _Source, tmp: Path, dest: Path, options: ExportOptions) -> ExportReport:
    media = MediaFolder(tmp)
    files = _Files(source.results, tmp / DATA_DIR, copy=options.copy)
    table = tmp / _TABLES[options.format]
    rows = 0
    with _table(options.format, table, source.plan.columns) as sink:
        for row, output in source.entries():
            name = None
            if output is not None:
                name = f"{DATA_DIR}/{output['path']}"
                files.put(str(output["path"]))
            sink(source.record(row, name, media.place))
            rows += 1
    _write_card(tmp, source.plan, table.name)
    return ExportReport(
        dest, options.format, rows, files.linked, files.copied, media.written, source.skipped
    )


class _Files:
    """Outputs into ``data/``: a hard link where the file system allows, else a copy."""

    def __init__(self, results: Path, data: Path, *, copy: bool) -> None:
        self.results = results
        self.data = data
        self.copy = copy
        self.linked = 0
        self.copied = 0

    def put(self, name: str) -> None:
        src, target = self.results / name, self.data / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.copy:
            try:
                os.link(src, target)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                self.copy = True  # another file system: every file is copied
            else:
                self.linked += 1
                return
        shutil.copyfile(src, target)
        self.copied += 1


_Sink = Callable[[Mapping[str, Any]], object]


@contextlib.contextmanager
def _table(fmt: str, path: Path, columns: Mapping[str, str]) -> Iterator[_Sink]:
    with path.open("w" if fmt != "parquet" else "wb", **_text(fmt)) as handle:
        if fmt == "hf":
            yield lambda record: handle.write(_json(record) + "\n")
        elif fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            lists = [c for c, kind in columns.items() if kind == "strings"]
            yield lambda record: writer.writerow(_cells(record, lists))
        else:
            with _parquet(handle, columns) as sink:
                yield sink


def _cells(record: Mapping[str, Any], lists: list[str]) -> Mapping[str, Any]:
    """A CSV row: a list column's value as JSON text (a cell holds no list)."""
    if not lists:
        return record
    return {c: json.dumps(v) if c in lists and v is not None else v for c, v in record.items()}


def _text(fmt: str) -> dict[str, Any]:
    return (
        {} if fmt == "parquet" else {"encoding": "utf-8", "newline": "" if fmt == "csv" else None}
    )


@contextlib.contextmanager
def _parquet(handle: IO[Any], columns: Mapping[str, str]) -> Iterator[_Sink]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    types = {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
        "strings": pa.list_(pa.string()),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in columns.items()])
    batch: list[Mapping[str, Any]] = []
    with pq.ParquetWriter(handle, schema) as writer:

        def add(record: Mapping[str, Any]) -> None:
            batch.append(record)
            if len(batch) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()

        yield add
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _write_card(folder: Path, plan: _Plan, table: str) -> None:
    """README.md: the dataset card. Its data files are the outputs and the table (`datasets`
    otherwise picks the loader by the commonest extension: one video beside its conditioning
    image loads as an image folder); its features fix each column's type (else guessed from the
    first 10 MB of the table, failing on a column that is empty there)."""
    kind = plan.kind or "video"
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train"]
    lines += ["    path:", f'    - "{DATA_DIR}/**"', f"    - {json.dumps(table)}", "  features:"]
    for name, column in plan.columns.items():
        dtype = kind if name == "file_name" else _FEATURES[column]
        lines += [f"  - name: {json.dumps(kind if name == 'file_name' else name)}"]
        lines += [f"    sequence: {dtype}" if column == "strings" else f"    dtype: {dtype}"]
    lines += [
        "---",
        "",
        f"A comfysweep export: one row per output file (`{table}`), the files under",
        f"`data/` (the `{kind}` column), conditioning images under `inputs/` (their column holds",
        "that relative path).",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("path/to/this/folder", split="train")',
        "```",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


# -- webdataset -------------------------------------------------------------------------------


def _write_shards(
    source: _Source, tmp: Path, dest: Path, limits: tuple[int | None, int | None]
) -> ExportReport:
    rows = files = media = 0
    with _Shards(tmp, *limits) as shards:
        for row, output in source.entries():
            base, members = _sample(source, row, output)
            shards.add(base, members)
            rows += 1
            files += output is not None
            media += len(members) - 1 - (output is not None)
    return ExportReport(dest, "webdataset", rows, 0, files, media, source.skipped, shards.count)


def _sample(
    source: _Source, row: JobRow, output: Mapping[str, Any] | None
) -> tuple[str, list[tuple[str, bytes | Path]]]:
    """A sample's basename and members: ``json``, the output (``mp4``, ``png``, ``wav``...), and
    ``<input>.png`` for each conditioning image, which the json names by that member."""
    base = row.key
    if output is not None and len(row.outputs) > 1:
        base = f"{row.key}-{row.outputs.index(dict(output)) + 1}"
    named = {}
    for key, value in row.inputs.items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            found = decode_data_uri(item)
            if found is not None:
                name = _MEMBER.sub("_", source.plan.display(row)(key))
                named[found.sha256] = f"{name}.{i}" if isinstance(value, list) else name
    images: dict[str, bytes] = {}

    def member(media: Media) -> str:
        suffix = f"{named[media.sha256]}.{media.file_name.rpartition('.')[2]}"
        images[suffix] = media.data
        return suffix

    record = source.record(row, None, member)
    record.pop("file_name")
    record["output"] = None if output is None else output["path"]
    members: list[tuple[str, bytes | Path]] = [("json", _json(record).encode())]
    if output is not None:
        members.append((_ext(str(output["path"])), source.results / str(output["path"])))
    return base, members + list(images.items())


def _json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


class _Shards:
    """``shard-000000.tar``, …: a new shard once the current one holds ``samples`` samples or
    would pass ``size`` bytes (a sample is never split)."""

    def __init__(self, folder: Path, samples: int | None, size: int | None) -> None:
        self.folder = folder
        self.samples = samples
        self.size = size
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._in = 0
        self._bytes = 0
        self._mtime = int(time.time())

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()

    def add(self, base: str, members: list[tuple[str, bytes | Path]]) -> None:
        size = sum(512 + (len(p) if isinstance(p, bytes) else p.stat().st_size) for _, p in members)
        full = (self.samples is not None and self._in >= self.samples) or (
            self.size is not None and self._in and self._bytes + size > self.size
        )
        if self._tar is None or full:
            if self._tar is not None:
                self._tar.close()
            self._tar = tarfile.open(self.folder / f"shard-{self.count:06d}.tar", "w")  # noqa: SIM115
            self.count += 1
            self._in = self._bytes = 0
        for suffix, payload in members:
            info = tarfile.TarInfo(f"{base}.{suffix}")
            info.mtime, info.mode = self._mtime, 0o644
            if isinstance(payload, bytes):
                info.size = len(payload)
                self._tar.addfile(info, io.BytesIO(payload))
            else:
                with payload.open("rb") as handle:
                    info.size = os.fstat(handle.fileno()).st_size
                    self._tar.addfile(info, handle)
        self._in += 1
        self._bytes += size


# -- the destination --------------------------------------------------------------------------


def _check_dest(dest: Path, results: Path) -> None:
    root, where = (Path(os.path.realpath(p)) for p in (results, dest.parent))
    if where == root or root in where.parents:  # realpath: through symlinks, never raising
        raise ExportError(
            f"{dest} is inside the results folder {results}: give a DEST outside it (that "
            "folder loads as a dataset itself)"
        )
    try:
        dest.lstat()
    except FileNotFoundError:
        return
    if dest.is_symlink():
        raise ExportError(
            f"{dest} is a symlink: the export would replace the link, not fill "
            f"{os.path.realpath(dest)}; give that folder, or a new DEST"
        )
    if Path(os.path.realpath(dest)) in (cwd := Path(os.path.realpath(os.getcwd())), *cwd.parents):
        raise ExportError(
            f"{dest} is the current folder (or holds it): the export takes DEST's place whole; "
            "give it from outside (cd ..)"
        )
    if not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder: give a new DEST")
    if any(dest.iterdir()):
        raise ExportError(f"{dest} exists and is not empty: give a new DEST, or empty it first")


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest``, renamed to it if the block ends without an error and
    removed otherwise (a crash or Ctrl-C leaves no half export under DEST's name), with the
    folders made on the way to it."""
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest first
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        prefix = owner_prefix(dest.name)  # whose it is, for _clean_staging
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix, suffix=".export"))
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        try:
            os.rename(tmp, dest)  # over an empty folder too
        except OSError as exc:
            raise ExportError(f"{dest}: appeared, not empty, during the export") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise


def _clean_staging(dest: Path) -> int:
    """Remove the staging folders of exports to ``dest`` killed on this machine (kill -9, a
    power cut: no ``finally`` ran); returns how many. A live export's, or another machine's, are
    left alone."""
    removed = 0
    start, end = f".{dest.name}.", ".export"
    with contextlib.suppress(OSError):
        for leftover in dest.parent.glob(f"{glob.escape(start)}*{end}"):
            host, pid, *_ = [*leftover.name[len(start) : -len(end)].split("~"), "", ""]
            if abandoned(host, pid) and _is_dir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
    return removed


def _is_dir(path: Path) -> bool:
    """A real folder, not a symlink to one (never removed through)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _why(results: Path, name: str) -> str:
    """A recorded output that _on_disk refused, and why, as the export's error names it."""
    path = results / name
    if not os.path.lexists(path):
        return f"{path}: missing"
    if path.is_symlink() or not _on_disk(results, {"path": name, "size": path.stat().st_size}):
        return f"{path}: not a file of the results folder (a symlink, or out of it)"
    return f"{path}: not the file downloaded (another size)"


def _on_disk(results: Path, output: Mapping[str, Any]) -> bool:
    """Whether an output is a regular file of its recorded size inside the results folder: never
    a symlink, nor a path that climbs out (a folder copied from someone else may hold either,
    and the export would copy one of your files into the dataset you share)."""
    name = PurePosixPath(str(output.get("path", "")))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        return False
    path = results / name
    try:
        root = os.path.realpath(results)
        if not os.path.realpath(path).startswith(os.path.join(root, "")):
            return False  # through a symlinked folder
        mode = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(mode.st_mode) and mode.st_size == output.get("size")


def _ext(name: str) -> str:
    return name.rpartition(".")[2].lower() if "." in name else ""


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ExportError(
            "--format parquet needs pyarrow: pip install 'comfysweep[parquet]'"
        ) from None
