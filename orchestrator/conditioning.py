"""Conditioning media: the ``data:`` URIs a job sent, as files named by their content.

A local image, video or audio file travels to the API as a base64 ``data:`` URI in every job's
input (a list input: a list of them). A dataset wants the file instead: ``inputs/<sha256
prefix>.<ext>``, written once however many jobs sent it, and referenced by that relative path (a
list input by a list of paths): the results folder's metadata.jsonl and every export do this.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import functools
import hashlib
import mimetypes
import os
import re
import stat
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from orchestrator import magic
from orchestrator.leftovers import owner_prefix
from orchestrator.verify import kind_of_extension

__all__ = [
    "INPUTS_DIR",
    "LEFTOVER",
    "Media",
    "MediaFolder",
    "decode_data_uri",
    "input_column",
    "media_inputs",
    "output_kind",
]

INPUTS_DIR = "inputs"
_DIGEST = 16  # hex digits of the sha256 in a file's name: 64 bits, no two inputs of a sweep clash
_FILE_COLUMNS = ("_file_name", "_file_names")  # `datasets` reads these as file paths
# What _write_atomically leaves when killed: .<sha>.<ext>.<host>~<pid>~<random>.tmp
LEFTOVER = re.compile(r"\.[0-9a-f]{16}\.\w+\.(?P<host>[^~/]+)~(?P<pid>\d+)~\w+\.tmp")


@dataclass(frozen=True)
class Media:
    """One data: URI's media: its type, the sha256 that names it, and (decoded when read) its
    bytes. Naming needs no decoding once the URI was seen: only writing a new file decodes."""

    mime: str
    sha256: str
    uri: str = field(repr=False, compare=False)

    @property
    def data(self) -> bytes:
        payload = _payload(self.uri)
        assert payload is not None  # a URI that does not decode is never a Media
        return payload

    @property
    def file_name(self) -> str:
        return f"{self.sha256[:_DIGEST]}.{_extension(self.mime)}"


def decode_data_uri(value: Any) -> Media | None:
    """The media a ``data:`` URI holds, or None for any other value (or a URI that is broken)."""
    if not (isinstance(value, str) and value.startswith("data:")):
        return None
    # The runner names every job's image at every manifest rewrite: a sweep over many images
    # must not decode and hash each again (seconds per rewrite at 10,000 jobs). The key is cheap:
    # the store hands out one string object per blob, whose hash Python keeps.
    key = (len(value), hash(value), value[:64], value[-64:])
    known = _KNOWN.get(key)
    if known is None:
        payload = _payload(value)
        head = value[5:].partition(",")[0].partition(";")[0]
        mime = head.strip().lower() or "text/plain"
        known = _KNOWN[key] = (
            (mime, hashlib.sha256(payload).hexdigest()) if payload is not None else None
        )
        if len(_KNOWN) > _KNOWN_MAX:
            _KNOWN.clear()
    return None if known is None else Media(known[0], known[1], value)


_KNOWN: dict[tuple[int, int, str, str], tuple[str, str] | None] = {}
_KNOWN_MAX = 4096


@functools.lru_cache(maxsize=8)
def _payload(value: str) -> bytes | None:
    """The bytes of a data: URI, None if it is broken (cached: a few images, written once each)."""
    head, comma, body = value[5:].partition(",")
    if not comma:
        return None
    params = head.partition(";")[2]
    try:
        if "base64" in params.split(";"):
            return base64.b64decode(body, validate=False)
        return unquote_to_bytes(body)
    except (binascii.Error, ValueError):
        return None


def _extension(mime: str) -> str:
    known = magic.EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
    return known.lstrip(".")


class MediaFolder:
    """``<root>/inputs/``: each distinct conditioning file written once, atomically.

    A name already there with the right size is kept (its name is its content), so rewriting the
    manifest after every change costs one dictionary look-up per job.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._placed: dict[str, str] = {}  # sha256 -> relative name, already on disk
        self.written = 0

    def place(self, media: Media) -> str:
        """The path, relative to ``root``, of ``media`` written under ``inputs/``."""
        name = self._placed.get(media.sha256)
        if name is not None:
            return name
        name = f"{INPUTS_DIR}/{media.file_name}"
        target = self.root / name
        if not _same_size(target, len(media.data)):
            _real_folder(target.parent)
            _write_atomically(target, media.data)
            self.written += 1
        self._placed[media.sha256] = name
        return name


def media_inputs(
    inputs: Mapping[str, str | Any],
    sources: Mapping[str, str | list[str]],
    folder: MediaFolder | None,
) -> tuple[dict[str, Any], dict[str, str | list[str]]]:
    """``inputs`` (by raw key) with each data: URI replaced by its file's relative path in
    ``folder`` (written there if new), and the source file each came from, by raw key. A list
    input's data: URIs become a list of paths (its URLs stay), its sources the list of its files.

    Without a folder a URI becomes its file name alone (``<sha>.png``): the value stays readable.
    """
    out: dict[str, Any] = {}
    origin: dict[str, str | list[str]] = {}
    for key, value in inputs.items():
        if isinstance(value, list):
            out[key] = [_placed(item, folder) for item in value]
            changed = any(a is not b for a, b in zip(out[key], value, strict=True))
        else:
            out[key] = _placed(value, folder)
            changed = out[key] is not value
        if changed and key in sources:
            origin[key] = sources[key]
    return out, origin


def _placed(value: Any, folder: MediaFolder | None) -> Any:
    """A data: URI's file path (in ``folder``) or name; any other value as it is."""
    media = decode_data_uri(value)
    if media is None:
        return value
    return folder.place(media) if folder is not None else media.file_name


def output_kind(name: str) -> str | None:
    """The `datasets` feature an output file loads as (``video``, ``image``, ``audio``), or None:
    the kind verify gives its extension."""
    return kind_of_extension(name.rpartition(".")[2]) if "." in name else None


def input_column(name: str, kind: str, fixed: Collection[str]) -> str:
    """An input's column in a dataset table: its name, unless a ``fixed`` column, the outputs'
    feature (``video``) or a `datasets` file column (``*_file_name``) has it: ``input_<name>``,
    with a ``file_name`` ending spelled ``filename`` (else `datasets` reads it as a file again)."""
    if name in fixed or name in (kind, "file_names") or name.endswith(_FILE_COLUMNS):
        stem, file, plural = f"input_{name}".rpartition("_file_name")
        return f"{stem}_filename{plural}" if file and plural in ("", "s") else f"input_{name}"
    return name


def _same_size(path: Path, size: int) -> bool:
    try:
        mode = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(mode.st_mode) and mode.st_size == size


def _real_folder(folder: Path) -> None:
    """Make ``folder`` unless there; never write through a symlink (copied folders may hold one)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(parents=True)
    if not stat.S_ISDIR(folder.lstat().st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a real folder (a symlink or a file)", folder)


def _write_atomically(path: Path, data: bytes) -> None:
    # .<name>.<host>~<pid>~<random>.tmp: whose it is, for ResultsFolder.prepare() after a kill
    prefix = owner_prefix(path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
