"""Which sweep a read-only command means: its spec, its store and its results folder.

`status`, `show`, `failures`, `report` and `export` take ``[SPEC]``: given, the spec names its
store (``--store`` overrides) and results folder; omitted, ``--store`` names an SQLite file whose
folder holds the results, or the current directory is a results folder (it holds the store file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import StoreError
from orchestrator.store.schema import STORE_FILE

if TYPE_CHECKING:  # a spec is loaded only when one is given: `status --store` never parses YAML
    from orchestrator.spec import Spec

__all__ = ["Located", "load_recorded", "locate", "no_store_file", "require_store"]


@dataclass(frozen=True)
class Located:
    """A sweep's records: the spec when given, the store target, the results folder if known."""

    spec: Spec | None
    store: str | Path
    results: Path | None  # None: a PostgreSQL store named without its spec

    @property
    def name(self) -> str:
        """The sweep's name: the spec's, else its results folder's."""
        if self.spec is not None:
            return self.spec.name
        return self.results.name if self.results is not None else "sweep"


def locate(spec: Path | None, store: str | None = None, *, cwd: Path | None = None) -> Located:
    """The sweep named by ``SPEC``/``--store``, or the results folder ``cwd`` is in.

    Raises StoreError (one line) when neither names a store that exists.
    """
    if spec is not None:
        loaded = load_recorded(spec)
        target: str | Path = store if store is not None else loaded.results_dir / STORE_FILE
        require_store(target)
        return Located(loaded, target, loaded.results_dir)
    if store is not None:
        require_store(store)
        results = None if "://" in store else Path(store).expanduser().absolute().parent
        return Located(None, store, results)
    here = (cwd or Path.cwd()).absolute()
    if not (here / STORE_FILE).is_file():
        raise StoreError(
            f"no sweep here ({here} holds no {STORE_FILE}): give SPEC or --store, "
            "or run this inside a sweep's results folder"
        )
    return Located(None, here / STORE_FILE, here)


def load_recorded(spec: str | Path) -> Spec:
    """The spec of a sweep that may have run already, checked against the catalog cache that
    knows its models (``catalog.knowing``) unless a command chose the API."""
    from orchestrator.models import catalog
    from orchestrator.spec import load_spec

    with catalog.using(catalog.knowing(catalog.spec_model_ids(spec))):
        return load_spec(spec)


def require_store(target: str | Path) -> None:
    """Refuse, in one line, a store file not created yet."""
    if no_store_file(target):
        raise StoreError(f"{target}: no store yet; `comfysweep run` creates it")


def no_store_file(target: str | Path) -> bool:
    """Whether ``target`` names a store file not created yet (``--store`` comes as a string)."""
    return "://" not in str(target) and not Path(target).exists()
