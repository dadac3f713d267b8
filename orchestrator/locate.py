"""Which sweep a read-only command means: its spec, its store and its results folder.

`status`, `show`, `failures`, `report` and `export` take ``[SPEC]``: given, the spec names its
store (``--store`` overrides) and results folder; omitted, ``--store`` names an SQLite file whose
folder holds the results, or the current directory is a results folder (it holds the store file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import SpecError, StoreError
from orchestrator.models import catalog
from orchestrator.results import STORE_FILE
from orchestrator.spec import Spec, load_spec

__all__ = ["Located", "locate", "no_store_file", "read_spec", "require_store"]


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
        loaded = read_spec(spec, store)
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


def read_spec(spec: Path, store: str | Path | None = None) -> Spec:
    """The spec, validated by the catalog cache in force; a sweep run with ``--emulator`` names
    models only the emulator's cache lists, so when that cache validates the spec and its store
    exists, the sweep is the emulator's (these commands read the store, they take no --emulator)."""
    try:
        return load_spec(spec)
    except SpecError as first:
        if catalog.in_force() == catalog.EMULATOR or catalog.load(catalog.EMULATOR) is None:
            raise
        try:
            with catalog.using(catalog.EMULATOR):
                loaded = load_spec(spec)
        except SpecError:
            raise first from None
        if store is None and no_store_file(loaded.results_dir / STORE_FILE):
            raise
        return loaded


def require_store(target: str | Path) -> None:
    """Refuse, in one line, a store file not created yet."""
    if no_store_file(target):
        raise StoreError(f"{target}: no store yet; `comfysweep run` creates it")


def no_store_file(target: str | Path) -> bool:
    """Whether ``target`` names a store file not created yet (``--store`` comes as a string)."""
    return "://" not in str(target) and not Path(target).exists()
