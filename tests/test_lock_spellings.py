"""The runner lock holds the store file itself: another spelling of its path is the same store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.store import Store

from .sweeps import write_spec

HOLDER = """
import signal, sys
from orchestrator.errors import StoreError
from orchestrator.store import Store
store = Store.open(sys.argv[1])
with store.lock("comfysweep run grid"):
    print("locked", flush=True)
    signal.pause()  # held until the test kills this process
"""


def symlink(real: Path) -> Path:
    link = real.parent.parent / "link.db"
    link.symlink_to(real)
    return link


def dotdot(real: Path) -> Path:
    return real.parent / ".." / real.parent.name / real.name


@pytest.mark.parametrize("spelling", [symlink, dotdot], ids=["symlink", "dotdot"])
def test_a_second_run_through_another_spelling_refuses_naming_the_holder(
    tmp_path: Path, spelling: Callable[[Path], Path]
) -> None:
    spec = write_spec(tmp_path)
    real = tmp_path / "stores" / "sweep.db"
    real.parent.mkdir()
    with Store.open(real):
        pass
    other = spelling(real)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(real)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": "http://127.0.0.1:9",  # never reached: the lock refuses
            "RUNCOMFY_API_TOKEN": "unused",
        }
        second = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", str(other)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith("Error: ")
        assert f"held by pid {holder.pid} on host {socket.gethostname()}" in line
        assert "comfysweep run grid" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    with Store.open(other) as db, db.lock("next run") as run_id:  # the holder's death freed it
        assert run_id > 0
    assert sorted(p.name for p in real.parent.glob("*.lock")) == ["sweep.db.lock"]


def test_a_store_with_a_second_hard_link_is_refused_by_every_name(tmp_path: Path) -> None:
    """A hard link is the same file under a name the lock cannot see, with a WAL of its own."""
    spec = write_spec(tmp_path)
    real = tmp_path / "stores" / "sweep.db"
    real.parent.mkdir()
    with Store.open(real):
        pass
    hard = tmp_path / "hard.db"
    hard.hardlink_to(real)
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": "http://127.0.0.1:9", "RUNCOMFY_API_TOKEN": "x"}
    for name in (real, hard):
        run = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", str(name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1, run.stderr
        (line,) = run.stderr.strip().splitlines()
        assert line == (
            f"Error: store {name} has 2 hard links: SQLite keeps its journal beside each name, "
            "so two names can corrupt it; keep one (a symbolic link is fine)"
        )
    hard.unlink()
    with Store.open(real) as db, db.lock("the one name left") as run_id:
        assert run_id > 0


def test_a_symlink_at_the_lock_file_s_name_is_refused_never_written_through(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("a user's file the lock must never overwrite\n")
    real = tmp_path / "sweep.db"
    Path(f"{real}.lock").symlink_to(victim)
    db = Store.open(real)
    try:
        with pytest.raises(StoreError, match="symbolic link") as caught, db.lock("run"):
            pass
    finally:
        db.close()
    assert "\n" not in str(caught.value)
    assert victim.read_text() == "a user's file the lock must never overwrite\n"


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_symlink_at_a_file_sqlite_keeps_beside_the_store_is_refused(
    tmp_path: Path, suffix: str
) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("precious\n")
    real = tmp_path / "sweep.db"
    with Store.open(real):
        pass
    Path(f"{real}{suffix}").unlink(missing_ok=True)
    Path(f"{real}{suffix}").symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link") as caught:
        Store.open(real)
    assert "\n" not in str(caught.value)
    assert victim.read_text() == "precious\n"
