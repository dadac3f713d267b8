"""Reading RunComfy's model catalog into the cache: ``models sync`` reads every page, ``run``
fetches the entry of a model it has never seen. HTTP through the client; the cache is
``models/catalog.py``.

Paging trusts nothing but what it was served: it reads until a page is empty, brings no id it
has not seen (a page served twice), or the offset reaches the ``total`` of the latest page (a
total that changes while it reads), and never more than ``MAX_PAGES`` pages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import httpx

from orchestrator import prices
from orchestrator.client import ModelApiClient
from orchestrator.errors import ComfysweepError, ModelNotFound
from orchestrator.models import catalog, known_models
from orchestrator.models.catalog import spec_model_ids
from orchestrator.responses import parse_model
from orchestrator.retry import RetryPolicy

if TYPE_CHECKING:
    from orchestrator.emulator import EmulatorConfig

__all__ = [
    "MAX_PAGES",
    "PAGE_SIZE",
    "Synced",
    "read_catalog",
    "refresh_unseen",
    "sourced",
    "spec_model_ids",
    "sync_catalog",
]

log = logging.getLogger("comfysweep")

PAGE_SIZE = 100  # models a page; the API takes 1..500
MAX_PAGES = 1000  # far beyond RunComfy's ~120 models: a server that pages forever is cut off

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Synced:
    """What ``models sync`` read and where it cached it."""

    source: str
    api_base: str
    read_at: str
    models: int
    total: int | None  # the catalog's own count, as its last page said
    pages: int
    priced: int  # entries with a usable price, remembered for estimates
    path: Path

    def line(self) -> str:
        said = "" if self.total in (None, self.models) else f" (the catalog said {self.total})"
        return (
            f"read {self.models} model(s){said} from {self.api_base} in {self.pages} page(s), "
            f"{self.priced} with a price; cached for {self.source} in {self.path}"
        )


async def read_catalog(
    client: ModelApiClient, *, limit: int = PAGE_SIZE
) -> tuple[list[dict[str, Any]], int | None, int]:
    """Every entry of the catalog with its schema, once each: (entries, total, pages read)."""
    entries: dict[str, dict[str, Any]] = {}
    offset, total, pages = 0, None, 0
    while pages < MAX_PAGES:
        body = await client.models(limit=limit, offset=offset)
        pages += 1
        served = body["models"]
        given = body.get("total")
        if isinstance(given, int) and not isinstance(given, bool) and given >= 0:
            total = given
        new = 0
        for entry in served:
            model_id = entry.get("model_id") if isinstance(entry, dict) else None
            if isinstance(model_id, str) and catalog.usable_id(model_id):
                new += model_id not in entries
                entries[model_id] = entry
        offset += len(served)
        if not served or not new or (total is not None and offset >= total):
            break
    else:
        log.warning("the model catalog still had pages after %d: read no further", MAX_PAGES)
    return list(entries.values()), total, pages


def sync_catalog(
    *,
    emulator: bool | EmulatorConfig = False,
    base_url: str | None = None,
    token: str | None = None,
    limit: int = PAGE_SIZE,
    retry: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Synced:
    """Read every page of the catalog (the embedded emulator's with ``emulator``) and cache it,
    with the time it was read and the API base; remember each model's price."""

    async def read(url: str | None, key: str | None) -> tuple[str, list[dict[str, Any]], Any]:
        async with ModelApiClient(url, key, retry=retry, transport=transport) as client:
            entries, total, pages = await read_catalog(client, limit=limit)
            return client.base_url, entries, (total, pages)

    with _api(emulator, base_url, token) as (url, key):
        base, entries, (total, pages) = anyio.run(read, url, key)
    if not entries:
        raise ComfysweepError(
            f"the model catalog at {base} listed no models: the cache was left as it was"
        )
    source = catalog.source_of(base)
    cache = catalog.save(source, base, entries)
    infos = {e["model_id"]: parse_model(e["model_id"], e) for e in entries}
    priced = prices.remember_prices(infos, api_base=base)
    return Synced(source, base, cache.read_at, len(entries), total, pages, priced, cache.path)


def refresh_unseen(
    spec_path: str | Path,
    *,
    emulator: bool | EmulatorConfig = False,
    base_url: str | None = None,
    token: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[str]:
    """Fetch (``GET /v1/models/{id}``) and cache the entry of each model the spec names that is
    neither shipped nor in the cache in force; the ids added. An id the API does not know is
    left to the spec's own unknown-model error; a catalog that does not answer, to a warning."""
    shipped = {m.model_id for m in known_models()}
    unseen = [
        i
        for i in spec_model_ids(spec_path)
        if i not in shipped and catalog.usable_id(i) and catalog.lookup(i) is None
    ]
    if not unseen:
        return []

    async def fetch(url: str | None, key: str | None) -> list[str]:
        added = []
        async with ModelApiClient(url, key, transport=transport) as client:
            source = catalog.source_of(client.base_url)
            for model_id in unseen:
                try:
                    info = await client.model(model_id)
                except ModelNotFound:
                    continue
                except ComfysweepError as exc:
                    log.warning("the catalog entry of %s was not read: %s", model_id, exc)
                    continue
                if not isinstance(info.raw.get("input_schema"), dict):
                    continue
                catalog.add(source, client.base_url, info.raw | {"model_id": model_id})
                prices.remember_price(model_id, info, api_base=client.base_url)
                added.append(model_id)
        return added

    with _api(emulator, base_url, token) as (url, key):
        added = anyio.run(fetch, url, key)
    if added:
        log.info("read the catalog entry of %s (never seen before)", ", ".join(added))
    return added


def sourced(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` with the catalog cache (and prices) of its ``emulator``/``base_url`` keyword
    arguments in force: ``emulator`` for the embedded emulator, else the API base's host."""

    @functools.wraps(func)
    def inside(*args: P.args, **kwargs: P.kwargs) -> R:
        emulated = kwargs.get("emulator", False) is not False
        base = kwargs.get("base_url")
        source = catalog.EMULATOR if emulated else catalog.source_of(_text(base))
        with catalog.using(source):
            return func(*args, **kwargs)

    return inside


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def _api(
    emulator: bool | EmulatorConfig, base_url: str | None, token: str | None
) -> Iterator[tuple[str | None, str | None]]:
    """The API base and token to read the catalog from: the given ones, or a fresh embedded
    emulator's (its catalog is the same code whatever the run's emulator config)."""
    if emulator is False:
        yield base_url, token
        return
    from orchestrator.emulator import Emulator

    with Emulator() as emu:
        yield emu.base_url, emu.token
