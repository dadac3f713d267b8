"""Where a sweep's values come from: lists, ranges, seeds, text files, tables, globs, local images.

Every function here returns plain values (or ``LocalImage`` placeholders) and raises ``Problem``
with a message and, for data files, the file and line; ``spec.py`` adds the YAML place.
"""

from __future__ import annotations

import base64
import csv
import glob as globlib
import hashlib
import json
import math
import mimetypes
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from orchestrator.errors import SpecError

__all__ = [
    "MAX_MEDIA_BYTES",
    "MAX_VALUES",
    "LocalImage",
    "MediaFiles",
    "Problem",
    "expand_glob",
    "is_url",
    "local_media",
    "random_seeds",
    "read_lines",
    "read_table",
    "resolve",
    "span",
    "text_value",
]

# RunComfy's partner nodes cap data: URIs at 6 MiB for an image and 32 MiB for a video.
MAX_MEDIA_BYTES = {"image": 6 * 1024 * 1024, "video": 32 * 1024 * 1024}
# One axis or range may not list more values than this (a typo such as step 0.0001 would hang).
MAX_VALUES = 1_000_000
SEED_SPACE = 2**32
# Python refuses to read or print an integer of more digits (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300


class Problem(Exception):
    """A value source is wrong; ``file``/``line`` say where when the fault is in a data file."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line


class LocalImage:
    """A local media file that becomes a base64 ``data:`` URI when a job is built.

    Two files with the same bytes and type make the same data URI, so they compare equal and the
    grid collapses them like any other duplicate value. ``content`` says which bytes a file holds
    (``MediaFiles`` sets it, reading a file only when another of its type and size exists), so a
    dataset of thousands of images loads without reading them, and hashes apart in linear time.
    """

    __slots__ = ("_digest", "content", "label", "mime", "path", "size")

    def __init__(self, mime: str, path: Path, label: str, size: int) -> None:
        self.mime = mime
        self.path = path
        self.label = label  # as the user wrote it (relative to the spec), for names and tables
        self.size = size
        self.content: tuple[Any, ...] = (mime, size, str(path))
        self._digest: str | None = None

    @property
    def sha256(self) -> str:
        """The file's sha256 (hex), read once."""
        if self._digest is None:
            try:
                self._digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            except OSError as exc:
                raise SpecError(f"cannot read {self.label}: {exc.strerror or exc}") from None
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LocalImage):
            return NotImplemented
        return self.content == other.content

    def __hash__(self) -> int:
        return hash(self.content)

    def __repr__(self) -> str:
        return f"LocalImage({self.label!r}, {self.mime}, {self.size} bytes)"

    def data_uri(self) -> str:
        """The file as a ``data:`` URI (read now; callers cache it)."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise Problem(f"cannot read {self.label}: {exc.strerror or exc}") from exc
        return f"data:{self.mime};base64,{base64.b64encode(data).decode('ascii')}"


def is_url(text: str) -> bool:
    """True for values that pass through to the API untouched (http(s) URLs and data URIs)."""
    return text.startswith(("http://", "https://", "data:"))


class MediaFiles:
    """The local media files of one spec: each read from disk once, and told apart by content.

    The first file of each type and size keeps its path as its content key, unread; a later one
    of the same type and size is hashed (and so is the first, once) and takes the first's key if
    their bytes match, else its own hash. Equal bytes get equal keys in one pass over the files;
    comparing LocalImages of two different specs means nothing.
    """

    def __init__(self) -> None:
        self.by_path: dict[Path, LocalImage] = {}
        self.first: dict[tuple[str, int], LocalImage] = {}

    def add(self, image: LocalImage) -> None:
        """Register a new file, setting its ``content`` key (before anything hashes it)."""
        first = self.first.setdefault((image.mime, image.size), image)
        if first is not image:
            same = image.sha256 == first.sha256
            image.content = first.content if same else (image.mime, image.size, image.sha256)
        self.by_path[image.path] = image


def resolve(base: Path, written: str) -> Path:
    """``written`` (relative to ``base``) as an absolute path; a NUL byte in it is a Problem."""
    try:
        return (base / written).resolve()
    except ValueError:  # the OS takes no NUL in a path
        raise Problem(f"{written!r}: a file name cannot contain a NUL byte") from None


def local_media(text: str, base: Path, label_base: Path, seen: MediaFiles) -> LocalImage:
    """A local media path (relative to ``base``) checked for existence, type and size."""
    path = resolve(base, text)
    cached = seen.by_path.get(path)
    if cached is not None:
        return cached
    label = _label(path, label_base, text)
    mime = mimetypes.guess_type(path.name)[0] or ""
    kind = mime.split("/")[0]
    if kind not in MAX_MEDIA_BYTES:
        raise Problem(
            f"{label}: not an image or video file name; use .png, .jpg, .webp, .gif or .mp4, "
            "or an http(s) URL"
        )
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise Problem(f"{label}: not a file; give an image file or an http(s) URL")
    except FileNotFoundError:
        raise Problem(
            f"image file not found: {label}; give an existing file or an http(s) URL"
        ) from None
    except OSError as exc:
        raise Problem(f"cannot read {label}: {exc.strerror or exc}") from exc
    limit = MAX_MEDIA_BYTES[kind]
    if size > limit:
        raise Problem(
            f"{label} is {size / 2**20:.1f} MiB, above the {limit // 2**20} MiB limit for a data: "
            f"URI {kind}; host it at a public http(s) URL instead"
        )
    image = LocalImage(mime=mime, path=path, label=label, size=size)
    seen.add(image)
    return image


def span(start: Any, stop: Any, step: Any) -> list[int | float]:
    """``start..stop`` inclusive by ``step``, computed in decimal so 0.1 steps never drift."""
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise Problem(f"{name} must be a number, got {value!r}")
    lo, hi, by = (_decimal(v) for v in (start, stop, step))
    if by == 0:
        raise Problem("step must not be 0")
    if (hi - lo) * by < 0:
        raise Problem(f"step {step} never reaches stop {stop} from start {start}")
    count = int((hi - lo) / by) + 1
    if count > MAX_VALUES:
        raise Problem(f"range gives {count} values; at most {MAX_VALUES} are allowed")
    integral = all(isinstance(v, int) for v in (start, stop, step))
    return [int(lo + i * by) if integral else float(lo + i * by) for i in range(count)]


def random_seeds(count: Any, start: Any) -> list[int]:
    """``count`` distinct seeds in [0, 2**32) derived from ``start``; fixed forever (job keys).

    Seed i is the first 4 bytes (big-endian) of sha256(f"comfysweep-seed:{start}:{j}") for
    j = 0, 1, 2, ..., skipping any value already drawn.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_VALUES:
        raise Problem(f"count must be a whole number from 1 to {MAX_VALUES}, got {count!r}")
    if isinstance(start, bool) or not isinstance(start, int):
        raise Problem(f"from must be a whole number, got {start!r}")
    seeds: dict[int, None] = {}
    j = 0
    while len(seeds) < count:
        digest = hashlib.sha256(f"comfysweep-seed:{start}:{j}".encode()).digest()
        seeds.setdefault(int.from_bytes(digest[:4], "big"), None)
        j += 1
    return list(seeds)


def read_lines(path: Path, label: str) -> list[tuple[str, int]]:
    """The non-blank lines of a text file, with their line numbers; a file with none is an error."""
    text = _read_text(path, label)
    lines = [(line.strip(), n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise Problem(f"{label} has no lines; put one value on each line")
    return lines


def read_table(path: Path, label: str) -> tuple[list[str], list[tuple[list[Any], int]]]:
    """A .csv (header row) or .jsonl (one object a line) file: its columns and rows with lines."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise Problem(
            f"{label}: a zip group's file is a .csv or .jsonl table; "
            "for one field, write e.g. prompt: {file: prompts.txt}"
        )
    text = _read_text(path, label)
    columns, rows = _csv(text, label) if suffix == ".csv" else _jsonl(text, label)
    if not rows:
        raise Problem(f"{label} has no rows; add one row for each combination")
    return columns, rows


def expand_glob(pattern: str, base: Path) -> list[str]:
    """The files matching ``pattern`` (relative to ``base``), sorted; none is an error."""
    root = None if Path(pattern).is_absolute() else base
    names = globlib.glob(pattern, root_dir=root, recursive=True)
    found = sorted(n for n in names if (base / n).is_file())
    if not found:
        raise Problem(f"no files match {pattern!r} in {base}")
    if len(found) > MAX_VALUES:
        raise Problem(f"{pattern!r} matches {len(found)} files; at most {MAX_VALUES} are allowed")
    return found


def text_value(kind: str, text: str) -> Any:
    """A value read from a text line or table cell, typed by the field's schema type."""
    if kind == "string":
        return text
    if kind == "integer" or (kind == "" and re.fullmatch(r"[-+]?\d+", text)):
        if not re.fullmatch(r"[-+]?\d+", text):
            raise Problem(f"must be a whole number, got {text!r}")
        if len(text.lstrip("+-")) > MAX_INT_DIGITS:
            raise Problem(f"a whole number of more than {MAX_INT_DIGITS:,} digits")
        return int(text)
    if kind == "number" or kind == "":
        try:
            number = float(text)
        except ValueError:
            if kind == "":
                return text
            raise Problem(f"must be a number, got {text!r}") from None
        return number
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise Problem(f"must be true or false, got {text!r}")
        return text.lower() == "true"
    return text


def _decimal(value: int | float) -> Decimal:
    # str() of a float is its shortest round-trip form: 0.1 -> Decimal("0.1"), not 0.1000...0555.
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:  # pragma: no cover - finite numbers always convert
        raise Problem(f"not a number: {value!r}") from exc


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise Problem(f"file not found: {label}") from None
    except UnicodeDecodeError:
        raise Problem(f"{label} is not UTF-8 text") from None
    except OSError as exc:
        raise Problem(f"cannot read {label}: {exc.strerror or exc}") from exc


def _csv(text: str, label: str) -> tuple[list[str], list[tuple[list[Any], int]]]:
    reader = csv.reader(text.splitlines())
    try:
        return _csv_rows(reader, label)
    except csv.Error as exc:
        # A cell over csv.field_size_limit() (128 KiB) lands here: far above any prompt a model
        # takes, so the limit stays (raising it would change it for the whole process).
        limit = csv.field_size_limit()
        why = f"a cell is longer than {limit:,} characters" if "field limit" in str(exc) else exc
        raise Problem(f"not valid CSV: {why}", label, reader.line_num) from None


def _csv_rows(reader: Any, label: str) -> tuple[list[str], list[tuple[list[Any], int]]]:
    header = next(reader, None)
    if not header or not all(h.strip() for h in header):
        raise Problem(f"{label}: the first row must name every column", label, 1)
    columns = [h.strip() for h in header]
    rows: list[tuple[list[Any], int]] = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            raise Problem(f"has {len(cells)} cells, the header has {len(columns)}", label, line)
        rows.append(([c.strip() for c in cells], line))
    return columns, rows


def _jsonl(text: str, label: str) -> tuple[list[str], list[tuple[list[Any], int]]]:
    columns: list[str] = []
    rows: list[tuple[list[Any], int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Problem(f"not JSON: {exc.msg}", label, n) from None
        except ValueError:  # an integer of more than 4,300 digits
            raise Problem(f"a number of more than {MAX_INT_DIGITS:,} digits", label, n) from None
        except RecursionError:
            raise Problem("nested too deeply", label, n) from None
        if not isinstance(obj, dict) or not obj:
            raise Problem("each line must be a JSON object of inputs", label, n)
        if not columns:
            columns = list(obj)
        if sorted(obj) != sorted(columns):
            raise Problem(
                f"keys {sorted(obj)} differ from the first row's {sorted(columns)}", label, n
            )
        rows.append(([obj[c] for c in columns], n))
    return columns, rows


def _label(path: Path, base: Path, written: str) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return written
