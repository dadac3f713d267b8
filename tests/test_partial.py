"""Start-up cleanup of .partial/ removes only the partial downloads comfysweep wrote, never
through a symlink, and says one line about anything else it finds there."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import iter_jobs, load_spec
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ResultsError, StoreError
from orchestrator.models import get_model
from orchestrator.results import ResultsFolder
from orchestrator.store.journal import RequestJournal

from .sweeps import write_spec
from .test_results_names import run


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=5000.0, workers=4)) as emu:
        yield emu


def test_a_symlinked_partial_folder_is_one_line_and_nothing_is_deleted_or_paid(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A file named as comfysweep's own leftovers are, by a writer that is gone: still not ours.
    leftover = elsewhere / f"{'a' * 16}-0.part"
    leftover.write_bytes(b"someone else's")
    (elsewhere / "notes.txt").write_text("keep me")
    folder = tmp_path / "results" / "grid"
    folder.mkdir(parents=True)
    (folder / ".partial").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ResultsError) as caught:
        run(spec, emulator)
    message = str(caught.value)
    assert "\n" not in message
    assert str(folder / ".partial") in message
    assert "symlink" in message
    assert sorted(p.name for p in elsewhere.iterdir()) == [leftover.name, "notes.txt"]
    assert emulator.ledger()["jobs"] == []


def test_what_comfysweep_did_not_write_in_partial_is_left_alone_with_one_line_each(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    partial = tmp_path / "results" / "grid" / ".partial"
    (partial / "a-folder").mkdir(parents=True)
    (partial / "a-folder" / "inside.part").write_bytes(b"x")
    (partial / "notes.txt").write_text("keep me")
    target = tmp_path / "target.part"
    target.write_text("not comfysweep's")
    (partial / f"{'c' * 16}-0.part").symlink_to(target)  # named like ours, but a link
    ours = partial / f"{'d' * 16}-0.part"  # an older comfysweep's leftover: removed
    ours.write_bytes(b"half")
    report = run(spec, emulator)
    assert report.complete, report
    left = sorted(p.name for p in partial.iterdir())
    assert left == sorted([f"{'c' * 16}-0.part", "a-folder", "notes.txt"])
    assert (partial / "a-folder" / "inside.part").read_bytes() == b"x"
    assert target.read_text() == "not comfysweep's"
    messages = report.messages
    for name in ("a-folder", "notes.txt", f"{'c' * 16}-0.part"):
        (line,) = [m for m in messages if name in m]
        assert "left alone" in line
    assert any("removed 1 partial download" in m for m in messages)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_download_never_writes_through_a_link_or_into_a_fifo_at_its_partial_name(
    tmp_path: Path, emulator: Emulator, kind: str
) -> None:
    """Something planted at the very name this process downloads to (after start-up's cleanup,
    so it is there when the download opens it) is never written through, and never hangs a run."""
    spec = write_spec(tmp_path)
    jobs = list(iter_jobs(load_spec(spec)))
    folder = ResultsFolder(
        tmp_path / "results" / "grid", get_model("community/wan-2-2/vace-fun"), "{key}"
    )
    folder.prepare()
    outside = tmp_path / "outside.txt"
    outside.write_text("not comfysweep's")
    planted = [folder.temp_path(job.key, 0) for job in jobs]
    for path in planted:
        if kind == "symlink":
            path.symlink_to(outside)
        else:
            os.mkfifo(path)
    report = run(spec, emulator)
    assert outside.read_text() == "not comfysweep's"
    assert not report.complete
    assert report.counts.get("done", 0) == 0
    for path in planted:
        assert path.is_symlink() if kind == "symlink" else stat.S_ISFIFO(path.lstat().st_mode)
    assert any("not a file comfysweep wrote" in m for m in report.messages), report.messages


@pytest.mark.parametrize("name", ["manifest.jsonl", "metadata.jsonl"])
def test_a_manifest_that_is_a_folder_stops_the_run_before_anything_is_paid(
    tmp_path: Path, emulator: Emulator, name: str
) -> None:
    """Every job was paid and downloaded, then the run stopped at its first manifest write."""
    spec = write_spec(tmp_path)
    folder = tmp_path / "results" / "grid"
    (folder / name).mkdir(parents=True)
    with pytest.raises(ResultsError) as caught:
        run(spec, emulator)
    assert "\n" not in str(caught.value)
    assert name in str(caught.value)
    assert emulator.ledger()["jobs"] == []


def test_the_request_journal_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """A results folder copied from elsewhere with the journal's temporary name linked to, say,
    ~/.bashrc: rewriting the journal (at every start while it holds another store's entry)
    truncated and overwrote the linked file."""
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# the user's\n")
    path = tmp_path / "comfysweep.db.requests"
    RequestJournal(path, "another store").append("k" * 64, "req-1", model="m", attempt=1, run=None)
    path.with_name(path.name + ".tmp").symlink_to(bashrc)
    mine = RequestJournal(path, "this store")
    mine.forget([])  # rewrites the file, keeping the other store's entry
    assert bashrc.read_text() == "# the user's\n"
    assert not path.is_symlink()
    assert [e.request_id for e in RequestJournal(path, "another store").entries()] == ["req-1"]
    path.unlink()
    path.symlink_to(bashrc)
    with pytest.raises(OSError, match="symbolic links"):
        mine.append("k" * 64, "req-2", model="m", attempt=1, run=None)
    assert bashrc.read_text() == "# the user's\n"


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_the_store_lock_never_writes_through_a_link(
    tmp_path: Path, emulator: Emulator, kind: str
) -> None:
    """A results folder copied from elsewhere with comfysweep.db.lock linked to, say, ~/.bashrc:
    the run wrote its holder over that file's start, cut it there, and emptied it on release."""
    spec = write_spec(tmp_path)
    folder = tmp_path / "results" / "grid"
    folder.mkdir(parents=True)
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# the user's settings, longer than a lock record is, so a cut shows\n")
    before = bashrc.read_text()
    lock = folder / "comfysweep.db.lock"
    if kind == "symlink":
        lock.symlink_to(bashrc)
    else:
        os.link(bashrc, lock)
    with pytest.raises(StoreError) as caught:
        run(spec, emulator)
    assert "\n" not in str(caught.value)
    assert "comfysweep.db.lock" in str(caught.value)
    assert bashrc.read_text() == before
    assert emulator.ledger()["jobs"] == []


def test_a_runner_starting_beside_another_takes_the_partial_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runners sharing a folder (one PostgreSQL store) start together: whichever makes .partial
    first, the other takes it (it raised FileExistsError and ended its run before)."""
    folder = ResultsFolder(tmp_path / "grid", get_model("community/wan-2-2/vace-fun"), "{key}")
    real_mkdir = Path.mkdir

    def beaten_to_it(self: Path, *args: object, **kwargs: object) -> None:
        if self == folder.partial_dir:
            real_mkdir(self)  # the other runner, between our look and our mkdir
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", beaten_to_it)
    assert folder.prepare() == 0
    assert folder.partial_dir.is_dir()
