"""Start-up: the read-only commands import only what they use, and `status` reads in O(1) what
it can (benchmarks/status_100k.py measures the time; these prove the behaviour)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.canonical import canonical_json, job_key
from orchestrator.store import Store
from orchestrator.store import store as store_module
from orchestrator.views import sweep_status
from tests.sweeps import write_spec
from tests.test_store import MODEL, FakeJob, make_jobs

# What a read-only command on an SQLite store never needs: the settings' model, the HTTP stack,
# YAML, the terminal UI, schema validation, prompt templates, PostgreSQL. (The store's tables are
# SQLModel classes, the project's chosen table library: SQLModel, pydantic and SQLAlchemy's ORM
# load with them, ~0.18 s; every statement runs as Core.)
HEAVY = (
    "httpx",
    "yaml",
    "rich",
    "jsonschema",
    "dynamicprompts",
    "alembic",
    "sqlalchemy.dialects.postgresql",
    "orchestrator.settings",
    "orchestrator.spec",
    "orchestrator.client",
)

_IMPORTED = """\
import runpy, sys, json
sys.argv = ["comfysweep", *json.loads(sys.argv[1])]
try:
    runpy.run_module("orchestrator", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
sys.stdout.flush()
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_by(*args: str) -> set[str]:
    """The modules a fresh ``comfysweep ARGS`` process has loaded when it ends."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTED, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "comfysweep.db"
    with Store.open(path) as db:
        db.sync_jobs(make_jobs(3), MODEL)
    return path


def test_read_only_commands_import_only_what_they_use(store: Path) -> None:
    for args in (["status", "--store", str(store)], ["runs", "--store", str(store)], ["--help"]):
        loaded = imported_by(*args)
        assert [m for m in HEAVY if m in loaded] == [], args


def test_status_of_a_spec_loads_the_spec_but_not_the_runner(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    (tmp_path / "results" / "grid").mkdir(parents=True)
    Store.open(tmp_path / "results" / "grid" / "comfysweep.db").close()
    loaded = imported_by("status", str(spec))
    assert "orchestrator.spec" in loaded
    runner = ("orchestrator.catalogsync", "orchestrator.runner", "orchestrator.sweep", "httpx")
    assert [m for m in runner if m in loaded] == []


def test_run_and_plan_still_take_every_setting_flag() -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.settings import flags

    shown = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).stdout
    assert all(flag.option in shown for flag in flags())
    shown = CliRunner().invoke(cli, ["plan", "--help"], terminal_width=200).stdout
    assert re.search(r"--concurrency N +Estimate at this concurrency\.", shown)
    assert "--max-cost" not in shown


def test_a_sync_records_its_models_so_status_never_groups_by_model(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(store, readonly=True) as db:
        assert db.get_meta("models") == [MODEL]
        assert not db.several_models()

    def grouped(*_: object, **__: object) -> None:
        raise AssertionError("status read every job to learn there is one model")

    monkeypatch.setattr(Store, "counts_by_model", grouped)
    assert "models" not in sweep_status(store=store)


def test_status_of_several_models_counts_each(tmp_path: Path) -> None:
    path = tmp_path / "comfysweep.db"
    with Store.open(path) as db:
        db.sync_jobs([FakeJob("a", 0), FakeJob("b", 1, model_id="other/m")], (MODEL, "other/m"))
        assert db.several_models()
    assert sweep_status(store=path)["models"][MODEL]["pending"] == 1


def test_a_store_synced_before_models_were_recorded_still_tells(tmp_path: Path) -> None:
    path = tmp_path / "comfysweep.db"
    with Store.open(path) as db:
        db.sync_jobs([FakeJob("a", 0), FakeJob("b", 1, model_id="other/m")], (MODEL, "other/m"))
        db.set_meta("models", None)  # as an older comfysweep left it
        assert db.several_models()


def _statements(db: Store) -> list[str]:
    seen: list[str] = []
    sa.event.listen(db._engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_resync_of_the_same_jobs_reads_and_writes_no_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SYNC_BATCH", 10)
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(make_jobs(25), MODEL)
        seen = _statements(db)
        assert db.sync_jobs(make_jobs(25), MODEL).new == 0
        touched = [s for s in seen if "jobs" in s and "count(" not in s]
        assert touched == []  # no lookup of known keys, no renumbering, no orphan update
        assert db.counts(in_spec=True)["pending"] == 25


@pytest.mark.parametrize("kept", [range(20), range(5, 25), [*range(12), *range(13, 25)]])
def test_a_resync_that_changes_some_batches_still_marks_every_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: range | list[int]
) -> None:
    monkeypatch.setattr(store_module, "SYNC_BATCH", 10)
    jobs = list(make_jobs(25))
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(jobs, MODEL)
        renumbered = [FakeJob(jobs[i].key, n, inputs=jobs[i].inputs) for n, i in enumerate(kept)]
        db.sync_jobs([*renumbered, FakeJob("new", len(renumbered))], MODEL)
        rows = {row.key: row for row in db.jobs()}
        assert {k for k, r in rows.items() if r.in_spec} == {jobs[i].key for i in kept} | {"new"}
        assert [rows[jobs[i].key].index for i in kept] == list(range(len(renumbered)))
        db.sync_jobs(jobs, MODEL)  # back as it was: every job in the spec again, in place
        assert [r.key for r in db.jobs(in_spec=False)] == ["new"]
        assert [r.key for r in db.jobs(in_spec=True)] == [j.key for j in jobs]


# Keys computed by the first canonical.job_key (json.dumps of {"input", "model"[, "repeat"]}):
# a faster job_key must keep every one of them, or every store would resubmit its jobs.
PINNED = [
    (
        ("community/wan-2-2/vace-fun", {"56_text": "a fox", "98_seed": 7, "108_cfg": 3.5}, 0),
        "ab4c39fcc88aa39d285293a274b378ed1cc3c53c893a70543815be0b24853fb5",
    ),
    (
        ("community/wan-2-2/vace-fun", {"56_text": "a fox", "98_seed": 7, "108_cfg": 3.5}, 2),
        "de562d11a167a65363bfbfe141c0155a1fb92dde51b23c189e30d88bc7887231",
    ),
    (
        ("m/é", {"z": [1, 2.0, "ü"], "a": {"y": None, "b": True}, "n": -0.0}, 0),
        "bdb5df590137798310eb7e583c7182c859bb7d10eadc47154ecb6d991e6e267e",
    ),
    (("m", {}, 1), "1a73d656455656f0a26f0b3e4fbb02099088311080ff499747ea5f563e6a20f7"),
]


@pytest.mark.parametrize(("args", "key"), PINNED)
def test_job_keys_stay_what_they_always_were(
    args: tuple[str, dict[str, object], int], key: str
) -> None:
    assert job_key(*args) == key
    model_id, inputs, repeat = args
    material = {"input": inputs, "model": model_id} | ({"repeat": repeat} if repeat else {})
    text = json.dumps(
        material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert hashlib.sha256(text.encode()).hexdigest() == key


def test_canonical_json_is_json_dumps_with_the_canonical_options() -> None:
    value = {"b": [1, {"d": 1, "c": "\u2028é"}], "a": 1e300, "n": None}
    assert canonical_json(value) == '{"a":1e+300,"b":[1,{"c":"\u2028é","d":1}],"n":null}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"x": float("nan")})


def test_a_resume_reads_no_whole_row_of_a_done_job_whose_files_are_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.store import JobState
    from tests.test_views import emulator, run

    spec = write_spec(tmp_path)
    streamed: list[object] = []
    whole = Store.jobs

    def spy(self: Store, states: object = None, **kwargs: object) -> object:
        streamed.append(None if states is None else sorted(states))  # type: ignore[call-overload]
        return whole(self, states, **kwargs)  # type: ignore[arg-type]

    with emulator() as emu:
        assert run(spec, emu).counts["done"] == 4
        monkeypatch.setattr(Store, "jobs", spy)
        assert run(spec, emu).counts["done"] == 4
    assert [JobState.DONE] not in streamed  # their files were checked from (key, outputs) only


def test_reading_outputs_leaves_the_stores_connection_as_it_was(store: Path) -> None:
    from orchestrator.store import JobState

    with Store.open(store) as db:
        assert len(list(db.recorded_outputs(JobState.PENDING))) == 3
        assert db._conn is not None
        assert "yield_per" not in db._conn.get_execution_options()  # PostgreSQL: no named cursor
