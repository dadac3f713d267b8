"""Large input strings (data: URIs) stored once in the blobs table, by sha256, and read back.

A sweep sends each local image as a base64 data: URI inside every job's input: stored inline,
10,000 jobs over one 6 MiB image would write 80 GB. A job's stored inputs hold the sha256 in the
URI's place and its ``blob_refs`` column says which keys those are, so no input value is ever
mistaken for a reference (a ``{"$blob": ...}`` marker could be a real input). A list input's
reference is a list as long as its value: each item's sha256, or null for an item kept inline.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

__all__ = ["BLOB_MIN", "BlobCache", "Splitter", "blob_shas", "is_blob", "put_back"]

# Strings this long or shorter stay inline: a 64-character reference would save next to nothing.
BLOB_MIN = 1024
# What a Store keeps of the blobs it has read; one image of a sweep is read once, not once a row.
CACHE_BYTES = 256 * 2**20
# What a sync remembers of the strings it has hashed (the grid keeps up to 256 MiB of images).
MEMO_BYTES = 256 * 2**20


def is_blob(value: Any) -> bool:
    """Whether an input value goes to the blobs table: a data: URI longer than BLOB_MIN."""
    return isinstance(value, str) and len(value) > BLOB_MIN and value.startswith("data:")


def blob_shas(refs: str | None) -> list[str]:
    """The sha256s a job's ``blob_refs`` column names (NULL: none)."""
    if not refs:
        return []
    found: list[str] = []
    for ref in json.loads(refs).values():
        if isinstance(ref, list):
            found.extend(sha for sha in ref if sha)
        else:
            found.append(ref)
    return found


def put_back(inputs: dict[str, Any], refs: Mapping[str, Any], blobs: Mapping[str, str]) -> None:
    """``inputs`` as stored, with each referenced blob put back in its place (lists too)."""
    for name, ref in refs.items():
        if isinstance(ref, list):
            inputs[name] = [
                item if sha is None else blobs[sha]
                for item, sha in zip(inputs[name], ref, strict=True)
            ]
        else:
            inputs[name] = blobs[ref]


class Splitter:
    """One sync's view of the blobs: splits inputs, hashing each distinct string object once.

    The grid hands every job of an image the same string object, so the memo is keyed by
    identity; it holds the string itself, so an id() can never be reused while its entry lives.
    """

    def __init__(self, budget: int = MEMO_BYTES) -> None:
        self._budget = budget
        self._used = 0
        self._memo: OrderedDict[int, tuple[str, str]] = OrderedDict()  # id -> (string, sha256)
        self._pending: dict[str, str] = {}  # sha256 -> data, not yet handed to the database
        self._taken: set[str] = set()  # sha256s this sync has already written

    def split(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``inputs`` with each large data: URI replaced by its sha256, and {key: sha256}."""
        stored = dict(inputs)
        refs: dict[str, Any] = {}
        for name, value in inputs.items():
            if is_blob(value):
                stored[name] = refs[name] = self._take(value)
            elif isinstance(value, list) and any(is_blob(item) for item in value):
                shas = [self._take(item) if is_blob(item) else None for item in value]
                stored[name] = [i if s is None else s for i, s in zip(value, shas, strict=True)]
                refs[name] = shas
        return stored, refs

    def _take(self, value: str) -> str:
        sha = self._sha256(value)
        if sha not in self._taken:
            self._pending[sha] = value
        return sha

    def take(self) -> list[dict[str, Any]]:
        """Rows for the blobs found since the last take (insert-or-ignore them)."""
        rows = [{"sha256": s, "size": len(d), "data": d} for s, d in self._pending.items()]
        self._taken.update(self._pending)
        self._pending.clear()
        return rows

    def _sha256(self, value: str) -> str:
        entry = self._memo.get(id(value))
        if entry is not None and entry[0] is value:
            self._memo.move_to_end(id(value))
            return entry[1]
        sha = hashlib.sha256(value.encode()).hexdigest()
        self._memo[id(value)] = (value, sha)
        self._used += len(value)
        while self._used > self._budget and len(self._memo) > 1:
            _, (dropped, _) = self._memo.popitem(last=False)
            self._used -= len(dropped)
        return sha


class BlobCache:
    """Blobs by sha256, least recently used dropped past ``budget`` characters."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self._budget = budget
        self._used = 0
        self._items: OrderedDict[str, str] = OrderedDict()

    def get(self, sha: str) -> str | None:
        data = self._items.get(sha)
        if data is not None:
            self._items.move_to_end(sha)
        return data

    def put(self, sha: str, data: str) -> None:
        if sha in self._items or len(data) > self._budget:
            return
        self._items[sha] = data
        self._used += len(data)
        while self._used > self._budget:
            _, dropped = self._items.popitem(last=False)
            self._used -= len(dropped)
