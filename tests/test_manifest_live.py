"""manifest.jsonl and metadata.jsonl during a run: appended to as jobs move, whole at its end.

A job's last manifest line wins while a run is live or after a kill; metadata.jsonl never holds a
row twice; a kill leaves at most a torn last line, which readers skip and the next write cuts off.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import sweep
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ResultsError
from orchestrator.manifest import append_text, read_lines, read_manifest
from orchestrator.runner import Runner
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import SPEC, run_until_killed, write_spec

DRIVER = Path(__file__).with_name("kill_driver.py")
ONE_AT_A_TIME = SPEC.replace("concurrency: 3", "concurrency: 1")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        yield emu


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> list[Runner]:
    """The runners run_sweep makes, ticking every 10 ms: many appends in a run of a few jobs."""
    made: list[Runner] = []

    class Ticking(Runner):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.options = self.options.model_copy(update={"tick": 0.01})
            made.append(self)

    monkeypatch.setattr(sweep, "Runner", Ticking)
    return made


def run(spec: Path, emu: Emulator) -> Any:
    overrides = Overrides(poll_interval=0.02)
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=overrides)


def raw_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_that_ends_writes_each_job_once_and_bytes_in_proportion_to_its_moves(
    tmp_path: Path, emulator: Emulator, runners: list[Runner]
) -> None:
    spec = write_spec(tmp_path, body=ONE_AT_A_TIME)
    report = run(spec, emulator)
    assert report.complete, report
    folder = tmp_path / "results" / "grid"
    keys = [entry["key"] for entry in raw_lines(folder / "manifest.jsonl")]
    assert len(keys) == len(set(keys)) == 4
    metadata = [line["job_key"] for line in raw_lines(folder / "metadata.jsonl")]
    assert sorted(metadata) == sorted(keys)
    # Bytes: at most two whole writes (the first tick's, the end's), and appended lines no more
    # than the jobs' moves (events) plus each done job's metadata once: not a whole file a tick.
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        moves = sum(len(db.events(key)) for key in keys)
    final = sum((folder / name).stat().st_size for name in ("manifest.jsonl", "metadata.jsonl"))
    longest = max(len(line) + 1 for line in (folder / "manifest.jsonl").read_bytes().splitlines())
    (runner,) = runners
    assert runner.manifest.bytes_written <= 2 * final + moves * longest + final


def test_a_run_with_nothing_to_do_rewrites_neither_file(
    tmp_path: Path, emulator: Emulator, runners: list[Runner]
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    folder = tmp_path / "results" / "grid"
    before = {name: (folder / name).stat() for name in ("manifest.jsonl", "metadata.jsonl")}
    assert run(spec, emulator).complete
    assert runners[-1].manifest.bytes_written == 0
    for name, stat in before.items():
        now = (folder / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name


def test_a_killed_runs_manifest_is_readable_and_agrees_with_the_store_and_the_disk(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path, body=ONE_AT_A_TIME)
    run_until_killed(DRIVER, spec, emulator, "manifest-torn", "1")
    folder = tmp_path / "results" / "grid"
    manifest_file = folder / "manifest.jsonl"
    assert not manifest_file.read_bytes().endswith(b"\n")  # the kill tore the last line
    manifest = read_manifest(manifest_file)
    metadata = list(read_lines(folder / "metadata.jsonl"))
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        rows = {row.key: row for row in db.jobs()}
        passed = {key: {e.to_state for e in db.events(key)} | {"pending"} for key in rows}
    assert set(manifest) == set(rows)  # the first tick wrote every job
    for key, entry in manifest.items():
        assert entry["state"] in passed[key]  # a state the job was in (the last line wins)
        if entry["state"] == "done":
            assert rows[key].state is JobState.DONE
            for output in entry["outputs"]:
                data = (folder / output["path"]).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (
                    output["size"],
                    output["sha256"],
                )
    assert metadata, "the kill came after a done job's metadata was appended"
    named = Counter(line["job_key"] for line in metadata)
    assert max(named.values()) == 1  # never a row twice
    for line in metadata:
        assert manifest[line["job_key"]]["state"] == "done"
        assert (folder / line["file_name"]).is_file()

    report = run(spec, emulator)  # the next run writes both files whole, then ends whole
    assert report.complete, report
    entries = raw_lines(manifest_file)
    assert sorted(e["key"] for e in entries) == sorted(rows)
    assert all(e["state"] == "done" for e in entries)
    assert sorted(line["job_key"] for line in raw_lines(folder / "metadata.jsonl")) == sorted(rows)


def test_an_append_cuts_a_torn_line_off_and_readers_skip_one(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"key": "a", "state": "queued"}\n{"key": "a", "sta')
    assert read_manifest(path) == {"a": {"key": "a", "state": "queued"}}
    written = append_text(path, '{"key": "a", "state": "done"}\n')
    assert written == len('{"key": "a", "state": "done"}\n')
    assert path.read_text() == '{"key": "a", "state": "queued"}\n{"key": "a", "state": "done"}\n'
    assert read_manifest(path) == {"a": {"key": "a", "state": "done"}}
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ResultsError, match=r"manifest.jsonl:2: not a JSON object line"):
        read_manifest(path)


def test_a_spec_edit_between_runs_is_in_the_next_runs_manifest(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    spec.write_text(spec.read_text().replace("seed: [1, 2]", "seed: [1]"))
    assert run(spec, emulator).complete  # nothing to submit: two jobs left the spec
    entries = raw_lines(tmp_path / "results" / "grid" / "manifest.jsonl")
    assert sorted(e["orphaned"] for e in entries) == [False, False, True, True]
