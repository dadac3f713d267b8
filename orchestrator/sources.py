"""Where a sweep's values come from: lists, ranges, seeds, text files, tables, globs, local media.

Every function here returns plain values (or ``LocalMedia`` placeholders) and raises ``Problem``
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
import os
import re
import stat
import struct
import urllib.parse
import warnings
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from orchestrator import magic
from orchestrator.errors import SpecError

__all__ = [
    "MAX_MEDIA_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_VALUES",
    "TEMPLATE_KEYS",
    "LocalImage",
    "LocalMedia",
    "MediaFiles",
    "MediaList",
    "Problem",
    "bad_scheme",
    "check_url",
    "expand_glob",
    "is_template",
    "is_url",
    "local_media",
    "per_job_groups",
    "random_seeds",
    "read_lines",
    "read_regular",
    "read_table",
    "request_length",
    "resolve",
    "shown",
    "span",
    "text_value",
]

# RunComfy's partner nodes cap a data: URI's decoded bytes at 6 MiB for an image, 32 MiB for a
# video and 16 MiB for audio, and a whole request at 64 MiB.
MAX_MEDIA_BYTES = {"image": 6 * 2**20, "video": 32 * 2**20, "audio": 16 * 2**20}
MAX_REQUEST_BYTES = 64 * 2**20
# One axis or range may not list more values than this (a typo such as step 0.0001 would hang).
MAX_VALUES = 1_000_000
SEED_SPACE = 2**32
# Python refuses to read or print an integer of more digits (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300
# The keys of a prompt template source (orchestrator/templates.py expands it). Here, so the spec
# tells a template apart without importing the template engine (dynamicprompts, pyparsing).
TEMPLATE_KEYS = ("template", "template_file", "wildcards", "sample", "seed")


def is_template(source: Mapping[str, Any]) -> bool:
    """Whether an axis source is a template (it has ``template`` or ``template_file``)."""
    return "template" in source or "template_file" in source


class Problem(Exception):
    """A value source is wrong; ``file``/``line`` say where when the fault is in a data file."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line


class LocalMedia:
    """A local media file (image, video or audio) that becomes a base64 ``data:`` URI when a job
    is built.

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
    def kind(self) -> str:
        """ "image", "video" or "audio"."""
        return self.mime.split("/")[0]

    @property
    def uri_length(self) -> int:
        """The length of this file's data: URI, known without reading it."""
        return len(f"data:{self.mime};base64,") + 4 * math.ceil(self.size / 3)

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
        if not isinstance(other, LocalMedia):
            return NotImplemented
        return self.content == other.content

    def __hash__(self) -> int:
        return hash(self.content)

    def __repr__(self) -> str:
        return f"LocalMedia({self.label!r}, {self.mime}, {self.size} bytes)"

    def data_uri(self) -> str:
        """The file as a ``data:`` URI (read now; callers cache it). The file is checked again
        as it is read: one changed since the plan (past its cap, of another kind, a FIFO that
        would block for ever) is a Problem, never sent."""
        limit = MAX_MEDIA_BYTES[self.kind]
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise self._changed(f"not a file; give {_a(self.kind)} file")
                data = handle.read(limit + 1)
        except OSError as exc:
            raise Problem(f"cannot read {self.label}: {exc.strerror or exc}") from exc
        if len(data) > limit:
            raise self._changed(
                f"{os.stat(self.path).st_size / 2**20:.1f} MiB, above the {limit // 2**20} MiB "
                f"limit for a data: URI {self.kind}"
            )
        sniffed = magic.media_type(data[:_SNIFF_BYTES])
        if sniffed is not None and data[4:8] == b"ftyp" and not sniffed.startswith("image/"):
            sniffed = _bmff_type(self.path, sniffed)
        if sniffed is None or sniffed.split("/")[0] != self.kind:
            raise self._changed(f"not {_a(self.kind)} file now")
        mime = _mime(self.path, sniffed)
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def _changed(self, why: str) -> Problem:
        return Problem(f"{self.label} changed since the sweep was planned: {why}")


# The old name: a local image was the only local media once.
LocalImage = LocalMedia


class MediaList(tuple[Any, ...]):
    """The value of a list input (``image_uris``...): LocalMedia and https URLs, in order.

    A tuple, so a list is one hashable value of an axis or zip row like any other; the grid
    turns it into a JSON list of data: URIs and URLs when it builds a job.
    """

    __slots__ = ()

    def labels(self) -> list[str]:
        """Each item as the spec gave it: a local file's label, or the URL."""
        return [item.label if isinstance(item, LocalMedia) else str(item) for item in self]

    def uri_length(self) -> int:
        """The characters the local files of this list add to a request."""
        return sum(item.uri_length for item in self if isinstance(item, LocalMedia))

    def __repr__(self) -> str:
        return f"MediaList({self.labels()!r})"


def shown(value: Any) -> Any:
    """A spec value as a person reads it: a local file by its label, a list by its labels."""
    if isinstance(value, LocalMedia):
        return value.label
    if isinstance(value, MediaList):
        return value.labels()
    return value


def request_length(values: Mapping[str, Any]) -> int:
    """The characters of the local files' data: URIs among ``values`` (lists included)."""
    total = 0
    for value in values.values():
        if isinstance(value, LocalMedia):
            total += value.uri_length
        elif isinstance(value, MediaList):
            total += value.uri_length()
    return total


def is_url(text: str) -> bool:
    """True for values that pass through to the API untouched (https URLs, whatever the case
    of their scheme, and data URIs)."""
    return text[:8].lower() == "https://" or text.startswith("data:")


def check_url(text: str, kind: str) -> None:
    """A Problem unless ``text`` (an ``is_url`` value) can hold media of ``kind``: an https
    URL names a host; a data: URI says a type of that kind, and its first bytes agree."""
    if not text.startswith("data:"):
        try:
            host = urllib.parse.urlsplit(text).hostname
        except ValueError:
            host = None
        if not host:
            raise Problem(f"{text[:60]!r}: an https URL names a host")
        return
    header, _, payload = text[5:].partition(",")
    mime = header.split(";")[0].strip().lower()
    if mime.split("/")[0] != kind:
        raise Problem(
            f"a data: URI of {mime or 'no type'}; give {_a(kind)} (data:{kind}/...;base64,...), "
            "a file or an https URL"
        )
    if not header.lower().endswith(";base64"):
        raise Problem(f"a data: URI of {mime} not in base64; give data:{mime};base64,...")
    try:
        head = base64.b64decode(payload[: 4 * (_SNIFF_BYTES // 3)], validate=True)
    except ValueError:
        raise Problem(f"a data: URI of {mime} whose payload is not base64") from None
    sniffed = magic.media_type(head)
    if sniffed is not None and sniffed.split("/")[0] != kind:
        raise Problem(f"a data: URI of {mime} whose content is {sniffed}; give {_a(kind)}")


def bad_scheme(text: str) -> str | None:
    """The scheme of a URL comfysweep does not send (``http``, ``file``, ``ftp``...), or None."""
    found = _SCHEME.match(text)
    if found is None or is_url(text):
        return None
    return (found.group(1) or found.group(2)).lower()


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://|(file):")


_SNIFF_BYTES = magic.HEAD_BYTES


class MediaFiles:
    """The local media files of one spec: each read from disk once, and told apart by content.

    The first file of each type and size keeps its path as its content key, unread; a later one
    of the same type and size is hashed (and so is the first, once) and takes the first's key if
    their bytes match, else its own hash. Equal bytes get equal keys in one pass over the files;
    comparing LocalMedia of two different specs means nothing.
    """

    def __init__(self) -> None:
        self.by_path: dict[Path, LocalMedia] = {}
        self.first: dict[tuple[str, int], LocalMedia] = {}

    def add(self, image: LocalMedia) -> None:
        """Register a new file, setting its ``content`` key (before anything hashes it)."""
        first = self.first.setdefault((image.mime, image.size), image)
        if first is not image:
            same = image.sha256 == first.sha256
            image.content = first.content if same else (image.mime, image.size, image.sha256)
        self.by_path[image.path] = image


def resolve(base: Path, written: str) -> Path:
    """``written`` (relative to ``base``) as an absolute path; a NUL byte in it, or a symlink
    loop, is a Problem."""
    try:
        return (base / written).resolve()
    except ValueError:  # the OS takes no NUL in a path
        raise Problem(f"{written!r}: a file name cannot contain a NUL byte") from None
    except RuntimeError:  # Python before 3.13 on a symlink loop
        raise Problem(f"{written!r}: a symlink loop, not a file") from None


def local_media(
    text: str, base: Path, label_base: Path, seen: MediaFiles, kind: str = "image"
) -> LocalMedia:
    """A local file (relative to ``base``) for a media input of ``kind``, checked for existence,
    size (against the cap of a data: URI of that kind, before reading) and content: its type is
    what its first bytes say, never its name's extension."""
    path = resolve(base, text)
    cached = seen.by_path.get(path)
    if cached is not None:
        if cached.kind != kind:
            raise Problem(f"{cached.label} is {_a(cached.kind)} file, not {_a(kind)}")
        return cached
    label = _label(path, label_base, text)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise Problem(f"{label}: not a file; give {_a(kind)} file or an https URL")
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise Problem(
            f"{kind} file not found: {label}; give an existing file or an https URL"
        ) from None
    except OSError as exc:
        raise Problem(f"cannot read {label}: {exc.strerror or exc}") from exc
    limit = MAX_MEDIA_BYTES[kind]
    if size > limit:
        raise Problem(
            f"{label} is {size / 2**20:.1f} MiB, above the {limit // 2**20} MiB limit for a data: "
            f"URI {kind}; host it at a public https URL instead"
        )
    sniffed = magic.media_type(head)
    if sniffed is None:
        raise Problem(
            f"{label}: not {_a(kind)} file (its content is no known {kind} format); give "
            f"{_FORMATS[kind]}, or an https URL"
        )
    if head[4:8] == b"ftyp" and not sniffed.startswith("image/"):
        sniffed = _bmff_type(path, sniffed)
    found = sniffed.split("/")[0]
    if found != kind:
        raise Problem(f"{label} is {_a(found)} file ({sniffed}), not {_a(kind)}")
    _check_content(path, label, kind, sniffed)
    media = LocalMedia(mime=_mime(path, sniffed), path=path, label=label, size=size)
    seen.add(media)
    return media


def _check_content(path: Path, label: str, kind: str, sniffed: str) -> None:
    """An image's header must read as what its first bytes say (a PNG signature on garbage
    does not); only the header is read, no pixel decoded."""
    if kind != "image" or sniffed not in _PILLOW_READS:
        return
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(path).close()
    except Image.DecompressionBombError:
        return  # a header that reads: the size is the service's to judge
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise Problem(
            f"{label}: cannot be read as an image ({exc}); give {_FORMATS['image']}, or an "
            "https URL"
        ) from None


_PILLOW_READS = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)


def _bmff_type(path: Path, sniffed: str) -> str:
    """An MP4/MOV's type by its tracks (its ``hdlr`` boxes), not its brand: one of sound alone
    is audio/mp4, whatever its brand says; else ``sniffed`` (no ``moov`` found, as in a
    header alone: the brand is all there is)."""
    try:
        with path.open("rb") as handle:
            alone = magic.sound_alone(handle, os.fstat(handle.fileno()).st_size)
    except OSError:
        return sniffed
    return "audio/mp4" if alone else sniffed


_FORMATS = {
    "image": "a PNG, JPEG, WebP or GIF file",
    "video": "an MP4, MOV or WebM file",
    "audio": "a WAV, MP3, FLAC or OGG file",
}


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _mime(path: Path, sniffed: str) -> str:
    """The type a data: URI says: the content's, or, when the name says an image or video of the
    same kind, the name's (as before content was read: the job keys of existing sweeps stay)."""
    named = mimetypes.guess_type(path.name)[0] or ""
    kind = sniffed.split("/")[0]
    if kind in ("image", "video") and named.split("/")[0] == kind:
        return named
    return sniffed


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


def per_job_groups(files: list[str], per_job: Any, pattern: str) -> list[list[str]]:
    """``files`` in consecutive groups of ``per_job`` (one list input per job); the count must
    be a multiple of ``per_job``: a short last group would quietly send fewer files."""
    if isinstance(per_job, bool) or not isinstance(per_job, int) or per_job < 1:
        raise Problem(f"per_job must be a whole number of files per job, got {per_job!r}")
    if len(files) % per_job:
        left = len(files) % per_job
        named = ", ".join(files[-left:][:_NAMED])
        if left > _NAMED:
            named += f" and {left - _NAMED} more"
        raise Problem(
            f"{pattern!r} matches {len(files)} files, not a multiple of per_job {per_job} "
            f"({left} left over: {named}); add or remove files, or change per_job"
        )
    return [files[i : i + per_job] for i in range(0, len(files), per_job)]


_NAMED = 3  # leftover files a per_job message names


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


def read_regular(path: Path, label: str) -> bytes:
    """A regular file's bytes; a Problem for anything else (a FIFO would block for ever,
    /dev/zero never end). Raises OSError as reading does (FileNotFoundError...)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Problem(f"{label}: not a regular file (a folder, FIFO or device); give a file")
        return handle.read()


def _read_text(path: Path, label: str) -> str:
    try:
        return read_regular(path, label).decode("utf-8-sig")
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
