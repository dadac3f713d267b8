"""A Ctrl-C at start-up and a full disk under the results folder are one line on stderr, always.

Both drive the real entry point in a subprocess (``python -m orchestrator``), since what is at
stake is what the user's terminal shows and the exit code.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.emulator.media import MediaCache
from orchestrator.errors import StoreError
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.store.batch import Write
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .test_disk_faults import can_mount

ROOT = Path(__file__).parents[1]
PROGRESS = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")  # the progress lines and the run's messages

# A sitecustomize that sends this very process a SIGINT when it starts importing MODULE: a Ctrl-C
# at exactly that moment, every time.
INTERRUPT_AT_IMPORT = """\
import os, signal, sys

# A user's terminal delivers Ctrl-C to Python's own handler; a job a script started in the
# background inherits SIGINT ignored (as this suite may be, under tests/stress.sh): undo that.
signal.signal(signal.SIGINT, signal.default_int_handler)

class _CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlC())
"""


def orchestrator(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_console_script_is_the_light_entry_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["comfysweep"] == "orchestrator.__main__:main"


@pytest.mark.parametrize(
    "module",
    [
        "orchestrator.cli",  # the entry module's own import of the CLI
        "click",
        "pydantic",
        "orchestrator.sweep",  # inside the command, before anything runs
        "orchestrator.store",
    ],
)
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path: Path, module: str) -> None:
    spec = write_spec(tmp_path)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(INTERRUPT_AT_IMPORT.format(module=module))
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = orchestrator("run", str(spec), "--emulator", env=env)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stderr == "Interrupted.\n"
    assert not (tmp_path / "results" / "grid" / "comfysweep.db").exists()


def test_a_store_error_inside_the_run_is_that_error_not_a_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the store refuses while jobs are in flight stops the run as itself, one line."""
    real = Store.apply

    def apply(self: Store, writes: Sequence[Write]) -> object:
        if any(w.to is JobState.SUCCEEDED for w in writes):
            raise StoreError(f"store {self.name}: database or disk is full")
        return real(self, writes)

    monkeypatch.setattr(Store, "apply", apply)
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        with pytest.raises(StoreError, match="database or disk is full"):
            run_sweep(
                spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(concurrency=3)
            )
        monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", emu.base_url)
        monkeypatch.setenv("RUNCOMFY_API_TOKEN", emu.token)
        result = CliRunner().invoke(cli, ["run", str(spec)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
    assert errors == [
        f"Error: store {spec.parent / 'results' / 'grid'}/comfysweep.db: database or disk is full"
    ]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the results folder, which holds the store too."""
    if not can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    root = tmp_path / "results"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


# Free space that fills at different moments: opening the store, claiming, recording a result,
# writing an output. Each was an ExceptionGroup traceback in some try before.
@pytest.mark.parametrize("free_kib", [200, 280, 360, 450])
def test_a_full_disk_under_the_results_folder_is_one_line_and_loses_nothing(
    tmp_path: Path, small_disk: Path, free_kib: int
) -> None:
    spec = write_spec(tmp_path)
    stat = os.statvfs(small_disk)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - free_kib * 1024))
    with Emulator(EmulatorConfig(speed=200.0, workers=4)) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        full = orchestrator("run", str(spec), env=env)
        assert full.returncode == 1, full.stderr
        assert "Traceback" not in full.stderr
        errors = [line for line in full.stderr.splitlines() if not PROGRESS.match(line)]
        assert len(errors) == 1, full.stderr
        assert errors[0].startswith("Error: ")
        assert re.search("disk is full|No space left on device", errors[0]), errors[0]

        ballast.unlink()  # room again: the next run finishes what the first paid for
        again = orchestrator("run", str(spec), env=env)
        ledger = emu.ledger()
    assert again.returncode in (0, 3), again.stderr
    assert set(ledger["submissions_by_input"].values()) <= {1}  # nothing paid twice
    with Store.open(small_disk / "grid" / "comfysweep.db", readonly=True) as db:
        counts = db.counts()
        done = {row.request_id for row in db.jobs([JobState.DONE])}
    # Every paid job is on disk, except those whose request id the full store could not record:
    # each is `unknown`, never sent again by itself. An `unknown` job may also never have left
    # (claimed, then the disk refused the next write): the money rule cannot tell, so neither can
    # this test; it can only say every paid job not on disk is one of them.
    paid = {job["request_id"] for job in ledger["jobs"]}
    assert len(paid - done) <= counts.get("unknown", 0)
    assert counts["done"] + counts.get("unknown", 0) == 4, counts


@pytest.mark.parametrize("free_kib", [280, 380])
def test_a_full_disk_with_the_embedded_emulator_is_one_line(
    tmp_path: Path, small_disk: Path, free_kib: int
) -> None:
    """`--emulator` keeps its journal and rendered videos in the results folder too."""
    spec = write_spec(tmp_path)
    stat = os.statvfs(small_disk)
    (small_disk / "ballast").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - free_kib * 1024))
    full = orchestrator("run", str(spec), "--emulator")
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if not PROGRESS.match(line)]
    assert len(errors) == 1, full.stderr
    assert errors[0].startswith("Error: ")


def test_an_emulator_that_cannot_render_answers_503_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def full(self: MediaCache, inputs: object) -> object:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder / "x.mp4.part"))

    monkeypatch.setattr(MediaCache, "get", full)
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, retry=RetryPolicy(wait=False)
        )
    assert not report.complete
    assert report.counts["succeeded"] >= 1  # paid, downloadable when the emulator has room
    assert any("503" in m for m in report.messages), report.messages
    assert "Traceback" not in capfd.readouterr().err


# Almost no room: the run log, the manifest and the downloads are refused, the store is elsewhere.
@pytest.mark.parametrize("free_kib", [0, 2, 4])
def test_a_full_results_folder_with_the_store_elsewhere_is_one_line(
    tmp_path: Path, small_disk: Path, free_kib: int
) -> None:
    spec = write_spec(tmp_path)
    store = tmp_path / "store.db"
    stat = os.statvfs(small_disk)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free_kib * 1024))
    with Emulator(EmulatorConfig(speed=200.0, workers=4)) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        full = orchestrator("run", str(spec), "--store", str(store), env=env)
        assert full.returncode == 1, full.stderr
        assert "Traceback" not in full.stderr
        errors = [line for line in full.stderr.splitlines() if not PROGRESS.match(line)]
        assert len(errors) == 1, full.stderr
        assert errors[0].startswith("Error: ")
        ballast.unlink()
        again = orchestrator("run", str(spec), "--store", str(store), env=env)
        ledger = emu.ledger()
    assert again.returncode == 0, again.stderr
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}


def test_a_store_error_from_the_database_is_one_line_without_its_sql_or_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's statement, parameters and documentation link never reach the user's line."""
    import sqlite3

    import sqlalchemy as sa

    import orchestrator.views

    def status(spec: Path, store: str | None = None) -> object:
        driver = sqlite3.OperationalError("database or disk is full")
        full = sa.exc.OperationalError("INSERT INTO jobs VALUES (?)", ("a fox",), driver)
        raise StoreError("store s.db: database or disk is full") from full

    monkeypatch.setattr(orchestrator.views, "sweep_status", status)
    result = CliRunner().invoke(cli, ["status", str(write_spec(tmp_path))])
    assert result.exit_code == 1
    assert result.stderr == "Error: store s.db: database or disk is full\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["plan"], ["plan", "--jobs"], ["plan", "--json"], ["status"]])
def test_stdout_on_a_full_disk_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """`comfysweep plan SPEC > file` on a full disk was an OSError traceback."""
    spec = write_spec(tmp_path)
    if command == ["status"]:
        (tmp_path / "results" / "grid").mkdir(parents=True)
        Store.open(tmp_path / "results" / "grid" / "comfysweep.db").close()
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *command, str(spec)],
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "Error: cannot write: No space left on device\n"
