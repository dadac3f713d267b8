"""Opening a store: where it is, the connection settings, and alembic migrations applied on open.

SQLite runs in WAL mode with synchronous=NORMAL: a commit is in the OS's hands when it returns, so
a killed process loses nothing; only a power cut or kernel crash can drop the last commits. The two
records the money rule rests on (a claim, i.e. `submitting`, and `queued` with its request id) are
committed with synchronous=FULL (an fsync of the WAL) by the store; see Store.transition.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from orchestrator.errors import StoreError

if TYPE_CHECKING:  # alembic is imported only when a store is not at SCHEMA_REVISION (~50 ms)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "BUSY_TIMEOUT_MS",
    "SCHEMA_REVISION",
    "STORE_FILE",
    "connect",
    "head_revision",
    "migrate",
    "reason",
    "resolve",
    "script_directory",
]

STORE_FILE = "comfysweep.db"  # a SQLite store's name in its results folder

# The head of migrations/versions (tests/test_migrations.py checks): a store already there opens
# without importing alembic at all.
SCHEMA_REVISION = "0006"
# Revisions a read-only open reads as they are (status, show, failures, runs: a run of the
# previous comfysweep may hold the store, and upgrading it means opening it for writing): 0006
# only added the tables of the controls mailbox and of ratings, which readers do without.
READABLE_OLDER = frozenset({"0005"})


def _migrations_folder() -> Path:
    """migrations/ at the top of a checkout, or orchestrator/migrations in an installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    return Path(str(resources.files("orchestrator") / "migrations"))


BUSY_TIMEOUT_MS = 10_000
MIGRATIONS = _migrations_folder()
SQLITE_MAGIC = b"SQLite format 3\x00"
# pg_advisory_xact_lock key: serialises migrations of several runners sharing one database.
_PG_MIGRATION_LOCK = 0x636F6D6679  # "comfy"


def resolve(target: str | os.PathLike[str]) -> tuple[URL, Path | None]:
    """A store target as an SQLAlchemy URL, plus the SQLite file path when there is one."""
    text = os.fspath(target)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        return URL.create("sqlite", database=str(path)), path
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"store URL {text!r} is not a valid database URL") from exc
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise StoreError(f"store URL {text!r} names no file; give an SQLite file path")
        return url, Path(url.database).expanduser().absolute()
    if url.get_backend_name() != "postgresql":
        raise StoreError(f"store URL {text!r}: only SQLite files and postgresql+psycopg:// URLs")
    if url.drivername == "postgresql":  # SQLAlchemy's default would be psycopg2: not ours
        url = url.set(drivername="postgresql+psycopg")
    return url, None


def check_sqlite_file(path: Path, *, readonly: bool) -> None:
    """Refuse, before SQLite touches it, a path that is not an SQLite file."""
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(f"{os.path.realpath(path)}{suffix}")
        if side.is_symlink():  # SQLite would write its pages wherever the link points
            raise StoreError(
                f"store {path}: {side} is a symbolic link, which SQLite never makes: move it away"
            )
    if path.is_dir():
        raise StoreError(f"store {path} is a directory, not an SQLite file")
    if not path.exists():
        if readonly:
            raise StoreError(f"no store at {path}")
        if not path.parent.is_dir():
            raise StoreError(f"store {path}: folder {path.parent} does not exist")
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"store {path} cannot be read: {exc.strerror}") from exc
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"store {path} is not an SQLite database (not a comfysweep store)")
    links = os.stat(path).st_nlink
    if links > 1:
        # SQLite keeps its WAL and lock files beside each name: two runs (or a run and a reader)
        # through two names would each see their own WAL, and the runner lock only one name.
        raise StoreError(
            f"store {path} has {links} hard links: SQLite keeps its journal beside each name, so "
            "two names can corrupt it; keep one (a symbolic link is fine)"
        )


def connect(url: URL, path: Path | None, *, readonly: bool) -> tuple[Engine, Connection]:
    """An engine and the store's one connection, with the per-connection settings applied."""
    if path is not None:
        check_sqlite_file(path, readonly=readonly)
        # isolation_level=None: the driver never BEGINs by itself; the store says BEGIN IMMEDIATE.
        args: dict[str, Any] = {"isolation_level": None, "check_same_thread": False}
        if readonly:
            # mode=ro: the reader can never write, and needs no lock; as_uri() escapes the path.
            url = url.set(database=path.as_uri(), query={"mode": "ro", "uri": "true"})
        engine = sa.create_engine(url, connect_args=args, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "connect", _sqlite_settings)
    else:
        try:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        except ImportError as exc:
            raise StoreError(
                f"store {_name(url, path)}: PostgreSQL needs its driver: "
                f"pip install 'comfysweep[postgres]' ({exc})"
            ) from exc
        if readonly:
            sa.event.listen(engine, "connect", _pg_readonly)
    try:
        conn = engine.connect()
        if path is not None:
            # Touch the file through SQLite once: a corrupt header surfaces here, not mid-run.
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            conn.commit()
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise StoreError(f"store {_name(url, path)} cannot be opened: {reason(exc)}") from exc
    return engine, conn


def _sqlite_settings(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    # A big sync grows the WAL; give the disk back after each checkpoint beyond 64 MiB.
    cur.execute("PRAGMA journal_size_limit = 67108864")
    cur.close()


def _pg_readonly(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cur.close()
    dbapi_conn.commit()


@functools.cache
def script_directory() -> ScriptDirectory:
    """The alembic scripts shipped beside the package (no alembic.ini: configured here)."""
    from alembic.script import ScriptDirectory

    if not (MIGRATIONS / "env.py").is_file():
        raise StoreError(f"store migrations are missing from {MIGRATIONS}; reinstall comfysweep")
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The schema revision this code writes."""
    head = script_directory().get_current_head()
    assert head is not None, "migrations/versions is empty"
    return head


def migrate(conn: Connection, name: str, *, readonly: bool, is_sqlite: bool) -> str:
    """Bring the store to the code's schema in one transaction, or refuse; returns the revision.

    A revision this code does not know means a newer comfysweep wrote the store: refused, and
    nothing is written (the check runs in a read transaction before anything else).
    """
    if _stored_revision(conn) == SCHEMA_REVISION:
        return SCHEMA_REVISION
    current = _check(conn, name)
    head = head_revision()
    if current == head:
        return head
    if readonly and current in READABLE_OLDER:
        return current
    if readonly:
        raise StoreError(
            f"store {name} is at schema {current or 'none'}, this comfysweep needs {head}; "
            "open it once for writing (e.g. `comfysweep run`) to upgrade it"
        )
    if is_sqlite:
        # WAL is a property of the file: set it once, after the version check, outside any
        # transaction (SQLite refuses to switch journal mode inside one).
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")
        conn.commit()
    from alembic import command

    with conn.begin():
        if is_sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        # Another opener may have migrated while we waited for the write lock: look again.
        current = _check(conn, name, in_transaction=True)
        if current != head:
            command.upgrade(_config(conn), "head")
    return head


def _stored_revision(conn: Connection) -> str | None:
    """The store's revision by plain SQL, or None when that does not tell (new, foreign, odd)."""
    try:
        with conn.begin():
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except sa.exc.DBAPIError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def _check(conn: Connection, name: str, *, in_transaction: bool = False) -> str | None:
    """The store's current revision; refuses unknown revisions and databases that are not ours."""
    from alembic.runtime.migration import MigrationContext

    if not in_transaction:
        conn.begin()
    try:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None:
            tables = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
            if tables:
                raise StoreError(
                    f"store {name} is a database with other tables ({', '.join(sorted(tables)[:3])}"
                    "), not a comfysweep store"
                )
        elif current not in {r.revision for r in script_directory().walk_revisions()}:
            raise StoreError(
                f"store {name} was written by a newer comfysweep (schema {current}); "
                "upgrade comfysweep to use it"
            )
    finally:
        if not in_transaction:
            conn.rollback()
    return current


def _name(url: URL, path: Path | None) -> str:
    return str(path) if path is not None else url.render_as_string(hide_password=True)


# PostgreSQL: lock_not_available, serialization_failure, deadlock_detected; trying again may pass.
_BUSY_SQLSTATES = frozenset({"55P03", "40001", "40P01"})


def busy(exc: BaseException) -> bool:
    """Whether the database refused only because another connection holds it for now."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return getattr(orig, "sqlstate", None) in _BUSY_SQLSTATES


def reason(exc: BaseException) -> str:
    """The first line of what the database said, for a one-line StoreError."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
