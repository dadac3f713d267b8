"""The cached model catalog: every model's schema and price, as ``comfysweep models sync`` read it.

One file per API source in ``$COMFYSWEEP_HOME/catalog/`` (default ``~/.comfysweep``), written
whole then renamed (a crash never leaves half a cache), with the API base it came from and the
time it was read. A source is the API base's host:port, except that any Model API on this
machine (the embedded emulator binds a random port; ``comfysweep emulator`` a chosen one) is the
one source ``emulator``: the same code serves the same catalog.

The cache in force is the source of the run at hand: ``using(source)`` sets it (``run
--emulator`` and ``plan --emulator`` use ``emulator``), else the API base of
``RUNCOMFY_MODEL_API_BASE``, else RunComfy's. Validation (``get_model(id, strict=True)``) reads
only that cache, so a spec checked for one API is never checked against another's schemas;
lookups after the fact (a report of a finished sweep) take any source's entry before none.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fcntl
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from orchestrator.errors import ComfysweepError
from orchestrator.yamlplaces import brief, parse_yaml

if TYPE_CHECKING:
    from orchestrator.models import Model

__all__ = [
    "EMULATOR",
    "Cache",
    "add",
    "cache_path",
    "in_force",
    "knowing",
    "load",
    "lookup",
    "lookup_anywhere",
    "nearest",
    "save",
    "sound",
    "source_of",
    "spec_model_ids",
    "sync_command",
    "unknown_message",
    "usable_id",
    "using",
]

EMULATOR = "emulator"
_VERSION = 1
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("catalog_source", default=None)


@dataclass(frozen=True)
class Cache:
    """One source's cached catalog: its entries by model id, where and when it was read."""

    source: str
    api_base: str
    read_at: str
    entries: Mapping[str, Mapping[str, Any]]
    path: Path
    _models: dict[str, Model] = field(default_factory=dict, compare=False, repr=False)

    def model(self, model_id: str) -> Model | None:
        """The entry as a Model (``Model.from_catalog``, built once per cache read)."""
        found = self._models.get(model_id)
        if found is None and model_id in self.entries:
            from orchestrator.models import Model

            found = self._models[model_id] = Model.from_catalog(self.entries[model_id])
        return found


_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
MAX_ID = 300  # RunComfy's longest ids are under 80 characters


def usable_id(model_id: str) -> bool:
    """Whether ``model_id`` can be a model id: ``/``-separated segments of letters, digits,
    ``.``, ``_`` and ``-``, each starting with a letter or digit, at most MAX_ID long. An id is
    a URL path (``POST /v1/models/{id}``): ``..`` there would reach another endpoint with the
    token, a NUL or 10 kB id has no place in a cache, a store or a file name."""
    return len(model_id) <= MAX_ID and _MODEL_ID.fullmatch(model_id) is not None


def source_of(api_base: str | None = None) -> str:
    """The cache source of an API base: its host:port, or ``emulator`` for one on this machine.
    No base: the source in force (``using``), else RUNCOMFY_MODEL_API_BASE's, else RunComfy's."""
    if api_base is None:
        given = _SOURCE.get()
        if given is not None:
            return given
        from orchestrator.responses import BASE_VAR, DEFAULT_BASE

        api_base = os.environ.get(BASE_VAR) or DEFAULT_BASE
    parts = urlsplit(api_base)
    if (parts.hostname or "") in _LOOPBACK:
        return EMULATOR
    return parts.netloc or api_base


def in_force() -> str:
    """The source whose cache validates specs now."""
    return source_of(None)


@contextlib.contextmanager
def using(source: str) -> Iterator[None]:
    """Make ``source``'s cache (and prices) the one in force inside the block."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def spec_model_ids(path: str | Path) -> list[str]:
    """The model id(s) a spec names, read cheaply before it is loaded: ``model:`` is an id, or a
    list of ids or of mappings with an ``id``. Anything else: none (loading it says what is
    wrong). Read by the spec's own bounded parser: a hostile YAML (nested 5,000 deep, an alias
    bomb) must get its one-line error from the load, not a RecursionError here."""
    try:
        data, _ = parse_yaml(Path(path), Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ComfysweepError):
        return []
    given = data.get("model") if isinstance(data, dict) else None
    items = given if isinstance(given, list) else [given]
    ids = [item.get("id") if isinstance(item, Mapping) else item for item in items]
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


def knowing(model_ids: Iterable[str]) -> str:
    """The source whose cache should read a spec of a sweep that ran already (``status``,
    ``report``, ``retry``...): the one in force when a command set it (``run``, ``plan``) or
    when it lists every model, else a cached source that does (the emulator's first). A sweep
    run with ``--emulator`` is read by commands that have no such flag."""
    source = in_force()
    if _SOURCE.get() is not None:
        return source
    from orchestrator.models import known_models

    shipped = {m.model_id for m in known_models()}
    unknown = [i for i in model_ids if i not in shipped]
    cache = load(source)
    if not unknown or (cache is not None and all(i in cache.entries for i in unknown)):
        return source
    for other in sorted(_caches(), key=lambda c: c.source != EMULATOR):
        if all(i in other.entries for i in unknown):
            return other.source
    return source


def sync_command(source: str | None = None) -> str:
    """The command that fills ``source``'s cache."""
    source = source or in_force()
    return "comfysweep models sync" + (" --emulator" if source == EMULATOR else "")


def cache_path(source: str) -> Path:
    """Where ``source``'s cache lives (its name made safe for any file system)."""
    from orchestrator.prices import home

    return _cache_path(str(home()), source)


@functools.cache
def _cache_path(home: str, source: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in source)
    return Path(home) / "catalog" / f"{safe}.json"


# Parsed caches by path, kept while the file is unchanged (get_model is called per job).
_READ: dict[Path, tuple[tuple[int, int, int], Cache]] = {}


def load(source: str | None = None) -> Cache | None:
    """The cache of ``source`` (default: in force), or None when there is none or it is unreadable
    (a cache is only a cache: ``models sync`` writes it again)."""
    return _read(cache_path(source or in_force()))


def _read(path: Path) -> Cache | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rename is a new inode
    kept = _READ.get(path)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = {
            str(k): sound(v)
            for k, v in data["models"].items()
            if isinstance(v, dict) and v.get("model_id") == k and usable_id(k)
        }
        source, base, read_at = (str(data[k]) for k in ("source", "api_base", "read_at"))
        cache = Cache(source, base, read_at, entries, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    _READ[path] = (stamp, cache)
    return cache


def save(
    source: str, api_base: str, entries: Iterable[Mapping[str, Any]], read_at: str | None = None
) -> Cache:
    """Write ``source``'s whole cache (a temporary file renamed over the old one)."""
    models = {str(e["model_id"]): sound(e) for e in entries if usable_id(str(e["model_id"]))}
    with _locked(source):
        return _write(source, api_base, read_at or _now(), models)


def add(source: str, api_base: str, entry: Mapping[str, Any]) -> Cache:
    """Add or replace one model's entry (``run`` fetching a model it has never seen)."""
    with _locked(source):  # read, add, write: a sync renaming a cache in between is kept
        old = load(source)
        models = dict(old.entries) if old is not None else {}
        models[str(entry["model_id"])] = sound(entry)
        return _write(source, api_base, old.read_at if old else _now(), models)


@contextlib.contextmanager
def _locked(source: str) -> Iterator[None]:
    """Hold ``source``'s cache lock (``catalog.locks/<source>.lock`` in the home, flock'd)
    inside the block: two processes writing the cache at once (``models sync``, ``run`` adding a
    model) take turns. Kept out of the cache folder, which holds caches only."""
    cache = cache_path(source)
    path = cache.parent.with_name("catalog.locks") / cache.with_suffix(".lock").name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_SCHEMA_WORDS = {  # a property's word -> the shape it must have, else it is dropped
    "enum": lambda v: isinstance(v, list),
    "minimum": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "maximum": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "maxItems": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "type": lambda v: isinstance(v, str),
    "format": lambda v: isinstance(v, str),
    "items": lambda v: isinstance(v, dict),
    "properties": lambda v: isinstance(v, dict),
}


def sound(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog entry whose schema has the shapes the code reads: ``input_schema`` a mapping,
    its ``properties`` a mapping of mappings, ``required`` a list of names, and each property's
    enum/range/type/format of its shape; anything else a hostile or broken catalog served is
    dropped (the server still validates), never a traceback in ``models`` or a spec's check."""
    out = dict(entry)
    schema = entry.get("input_schema")
    if schema is None or not isinstance(schema, Mapping):
        out.pop("input_schema", None)
        return out
    props = schema.get("properties")
    clean = {
        str(k): {w: v for w, v in p.items() if w not in _SCHEMA_WORDS or _SCHEMA_WORDS[w](v)}
        for k, p in (props.items() if isinstance(props, Mapping) else ())
        if isinstance(p, Mapping)
    }
    required = schema.get("required")
    needed = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    out["input_schema"] = {**schema, "properties": clean, "required": needed}
    for key in ("output_schema", "friendly_names"):
        if not isinstance(out.get(key), Mapping):
            out.pop(key, None)
    return out


def lookup(model_id: str, source: str | None = None) -> Model | None:
    """The model as the cache of ``source`` (default: in force) knows it, or None."""
    cache = load(source)
    return None if cache is None else cache.model(model_id)


def lookup_anywhere(model_id: str) -> Model | None:
    """The model from the cache in force, else from any other source's cache, or None."""
    found = lookup(model_id)
    if found is not None:
        return found
    for cache in _caches():
        if (found := cache.model(model_id)) is not None:
            return found
    return None


def nearest(model_id: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The ids closest to ``model_id`` (difflib), best first; ids ending the same way count."""
    pool = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(model_id, pool, n=n, cutoff=0.6)
    if len(close) < n:
        tail = model_id.rsplit("/", 1)[-1].lower()
        ending = [c for c in pool if c not in close and tail and tail in c.lower()]
        close += ending[: n - len(close)]
    return close


def unknown_message(model_id: str, shipped: Iterable[str]) -> str:
    """The one line for a model the cache in force does not list: the command that reads the
    catalog, and the nearest known ids."""
    source = in_force()
    cache = load(source)
    ids = [*shipped, *(cache.entries if cache else ())]
    close = nearest(model_id, ids)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    if cache is None:
        where = f"no model catalog cached for {source} yet"
    else:
        where = f"not in the model catalog cached for {source} (read {cache.read_at})"
    elsewhere = [c.source for c in _caches() if c.source != source and model_id in c.entries]
    if elsewhere:
        where += f"; it is cached for {', '.join(elsewhere)}"
        if EMULATOR in elsewhere:
            where += " (add --emulator)"
    elif source != EMULATOR and _emulated(model_id):
        where += f"; the emulator serves it (`{sync_command(EMULATOR)}`, then add --emulator)"
    shown = brief(model_id)
    return f"unknown model {shown}{hint}: {where}; {_sync_step(source)}"


def _sync_step(source: str) -> str:
    """What to do to fill ``source``'s cache: a real API's catalog needs a token first."""
    from orchestrator.client import env_token

    if source == EMULATOR or env_token() is not None:
        return f"run `{sync_command(source)}`"
    return f"set RUNCOMFY_API_TOKEN and run `{sync_command(source)}`"


def _emulated(model_id: str) -> bool:
    from orchestrator.emulator.catalog import emulated_catalog

    return model_id in emulated_catalog()


def _caches() -> list[Cache]:
    """Every source's readable cache, read again only when the folder changed (every write is a
    rename into it)."""
    folder = cache_path(EMULATOR).parent
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        return []
    kept = _ALL.get(folder)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    caches = [c for c in map(_read, sorted(folder.glob("*.json"))) if c is not None]
    _ALL[folder] = (stamp, caches)
    return caches


_ALL: dict[Path, tuple[int, list[Cache]]] = {}  # folder -> (its mtime, its caches)


def _write(source: str, api_base: str, read_at: str, models: dict[str, Any]) -> Cache:
    path = cache_path(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": _VERSION,
        "source": source,
        "api_base": api_base,
        "read_at": read_at,
        "models": models,
    }
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8"
    ) as tmp:
        try:
            json.dump(data, tmp, ensure_ascii=False)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    _READ.pop(path, None)
    return Cache(source, api_base, read_at, models, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
