"""Syncing a spec into its store: orphaned jobs, the store's sweep, and changed schema defaults."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from orchestrator import drift
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ComfysweepError, DefaultsChanged, StoreError
from orchestrator.models import get_model
from orchestrator.spec import load_spec
from orchestrator.store import JobLike, JobState, Store
from orchestrator.sweep import Overrides, retry_jobs, sweep_status

from .postgres import fresh_schema
from .sweeps import SPEC, run_until_killed, write_spec
from .test_run import manifest, run
from .test_store import MODEL, make_jobs, walk
from .waiting import DrivenClock

DRIVER = Path(__file__).with_name("kill_driver.py")
S = JobState


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def billed(emu: Emulator) -> int:
    return len(emu.ledger()["jobs"])


def forget(store: Path, name: str) -> None:
    """Delete a meta record, as in a store an older comfysweep wrote."""
    with sqlite3.connect(store) as raw:
        raw.execute("DELETE FROM meta WHERE name = ?", (name,))
    raw.close()


def one_job(emu: Emulator) -> Overrides:
    """A budget that pays for the sweep's first job only (the rest stay pending)."""
    catalog = httpx.get(
        f"{emu.base_url}/models/{MODEL}", headers={"Authorization": f"Bearer {emu.token}"}
    ).json()
    price = catalog["base_price_usd"] * 81 / 16
    return Overrides(concurrency=1, max_cost=price * 1.5, poll_interval=0.02)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store: an SQLite file, or a schema of its own on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    with fresh_schema("s") as url:
        yield url


# -- the store -------------------------------------------------------------------------------


def test_a_store_belongs_to_the_first_sweep_that_binds_it(target: str) -> None:
    with Store.open(target) as store:
        assert store.get_meta("sweep") is None
        assert store.bind_sweep("portraits") == "portraits"
        assert store.bind_sweep("landscapes") == "portraits"  # recorded once, never taken over
        assert store.get_meta("sweep") == "portraits"


class Guard:
    """A sync guard whose twin of ``job-N`` is ``old-N``; refuses when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.found_: list[tuple[str, JobState]] = []
        self.checked = 0

    def twin(self, job: JobLike) -> str | None:
        return job.key.replace("job-", "old-")

    def found(self, job: JobLike, state: JobState) -> None:
        self.found_.append((job.key, state))

    def check(self) -> None:
        self.checked += 1
        if self.refuse:
            raise ComfysweepError("refused")


def test_a_guard_sees_the_twins_of_new_jobs_and_can_roll_the_sync_back(target: str) -> None:
    with Store.open(target) as store:
        store.sync_jobs(make_jobs(3, prefix="old"), MODEL)
        walk(store, "old-000001", S.DONE)
        with pytest.raises(ComfysweepError, match="refused"):
            store.sync_jobs(make_jobs(4), MODEL, guard=Guard(refuse=True))
        # Rolled back: no new job, the old ones still in the spec.
        assert {r.key for r in store.jobs(in_spec=True)} == {f"old-{i:06d}" for i in range(3)}
        guard = Guard()
        assert store.sync_jobs(make_jobs(4), MODEL, guard=guard).new == 4
        assert sorted(guard.found_) == [
            ("job-000000", S.PENDING),
            ("job-000001", S.DONE),
            ("job-000002", S.PENDING),
        ]
        assert guard.checked == 1
        # Known keys are not new: their twins are never looked up.
        again = Guard()
        store.sync_jobs(make_jobs(4), MODEL, guard=again)
        assert again.found_ == []


def query_plans(store: Store, action: Callable[[], object]) -> list[str]:
    """SQLite's plan of each statement ``action`` runs on ``store``, one line per plan step."""
    raw = store._conn.connection.driver_connection  # type: ignore[union-attr]
    seen: list[str] = []
    raw.set_trace_callback(seen.append)
    try:
        action()
    finally:
        raw.set_trace_callback(None)
    plans = []
    with sqlite3.connect(f"{store.path.as_uri()}?mode=ro", uri=True) as reader:  # type: ignore[union-attr]
        for statement in seen:
            if statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
                steps = reader.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
                plans.append(" | ".join(step[3] for step in steps))
    reader.close()
    return plans


def test_claims_and_counts_read_the_spec_state_index_not_every_row(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store.db") as store:
        store.sync_jobs(make_jobs(40), MODEL)
        store.sync_jobs(make_jobs(30, 10), MODEL)  # ten orphans
        claim, *books = query_plans(store, lambda: store.claim(1))
        assert all("SCAN" not in plan for plan in books)  # the ledger's row, by its id
        assert "SCAN" not in claim
        assert "TEMP B-TREE" not in claim
        assert "ix_jobs_spec_state_rank (in_spec=? AND state=?)" in claim
        assert "(key=?)" in claim  # the UPDATE finds the picked rows by key
        # The budget's check costs the same at any size: the pick, then rows found by key or id.
        within = query_plans(store, lambda: store.claim_within(lambda _: 0.25, cap=100.0))
        assert "ix_jobs_spec_state_rank (in_spec=? AND state=?)" in within[0]
        assert all("SCAN" not in plan and "TEMP B-TREE" not in plan for plan in within), within
        for in_spec in (True, False):
            (count,) = query_plans(store, lambda: store.counts(in_spec=in_spec))  # noqa: B023
            assert "COVERING INDEX ix_jobs_spec_state_" in count
            assert "(in_spec=?)" in count


# -- a store of another sweep ------------------------------------------------------------------


def test_a_store_of_another_sweep_is_refused_before_anything_is_paid(
    tmp_path: Path, emulator: Emulator
) -> None:
    first = write_spec(tmp_path, "portraits")
    assert run(first, emulator).complete
    store = tmp_path / "results" / "portraits" / "comfysweep.db"
    other = write_spec(tmp_path, "landscapes", body=SPEC.replace("[1, 2]", "[3, 4]"))
    with pytest.raises(StoreError) as caught:
        run(other, emulator, store=store)
    message = str(caught.value)
    assert "'portraits'" in message
    assert "'landscapes'" in message
    assert str(store) in message
    assert billed(emulator) == 4
    with Store.open(store, readonly=True) as db:
        assert sum(db.counts(in_spec=True).values()) == 4  # nothing synced, nothing orphaned
    with pytest.raises(StoreError, match="belongs to sweep 'portraits'"):
        sweep_status(other, store=store)
    with pytest.raises(StoreError, match="belongs to sweep 'portraits'"):
        retry_jobs(other, ["failed"], store=store)
    # The CLI: one line, exit 1, and a renamed spec is told how to keep its store.
    env = {"RUNCOMFY_MODEL_API_BASE": emulator.base_url, "RUNCOMFY_API_TOKEN": emulator.token}
    result = CliRunner().invoke(cli, ["run", str(other), "--store", str(store)], env=env)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "name the spec 'portraits' if it was renamed" in result.output
    assert billed(emulator) == 4


def test_a_store_from_before_the_record_is_taken_by_its_next_run(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    store = tmp_path / "results" / "grid" / "comfysweep.db"
    forget(store, "sweep")  # as a store from before the record
    assert sweep_status(spec)["jobs"] == 4
    assert run(spec, emulator).complete
    with Store.open(store, readonly=True) as db:
        assert db.get_meta("sweep") == "grid"
    assert billed(emulator) == 4


# -- orphaned jobs ---------------------------------------------------------------------------


def test_jobs_a_spec_edit_leaves_are_orphaned_listed_and_never_submitted(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    run(spec, emulator, overrides=one_job(emulator))  # the first job is paid, three stay pending
    assert billed(emulator) == 1
    spec.write_text(spec.read_text().replace("steps: [4, 8]", "steps: [4]"))
    report = run(spec, emulator)
    assert report.complete, report  # the orphans left pending do not hold the sweep open
    assert report.orphaned == 2
    assert report.counts["done"] == 2
    assert billed(emulator) == 2  # the orphans were never submitted
    folder = tmp_path / "results" / "grid"
    entries = manifest(folder)
    assert len(entries) == 4
    assert sorted((e["inputs"]["steps"], e["state"], e["orphaned"]) for e in entries) == [
        (4, "done", False),
        (4, "done", False),
        (8, "pending", True),
        (8, "pending", True),
    ]
    status = sweep_status(spec)
    assert (status["jobs"], status["orphaned"]) == (2, 2)
    assert status["counts"]["pending"] == 0
    text = CliRunner().invoke(cli, ["status", str(spec)])
    assert text.exit_code == 0
    assert "2 orphaned" in text.output
    assert (
        json.loads(CliRunner().invoke(cli, ["status", str(spec), "--json"]).output)["orphaned"] == 2
    )
    # Back in the spec, an orphan is an ordinary job again.
    spec.write_text(spec.read_text().replace("steps: [4]", "steps: [4, 8]"))
    report = run(spec, emulator)
    assert report.complete
    assert report.orphaned == 0
    assert billed(emulator) == 4


def test_a_job_a_spec_edit_leaves_in_flight_is_downloaded_and_listed(tmp_path: Path) -> None:
    clock = DrivenClock(frozen=True)  # no job ends before the first poll, however late it comes
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, clock=clock)) as emulator:
        spec = write_spec(tmp_path)
        run_until_killed(DRIVER, spec, emulator, "polling", "1")
        clock.release()
        _edit_and_resume(tmp_path, spec, emulator)


def _edit_and_resume(tmp_path: Path, spec: Path, emulator: Emulator) -> None:
    store = tmp_path / "results" / "grid" / "comfysweep.db"
    with Store.open(store, readonly=True) as db:
        flying = next(iter(db.jobs([S.QUEUED, S.RUNNING])))
        before = {r.key: r.state for r in db.jobs()}
    seed = flying.inputs["98_seed"]
    other = 2 if seed == 1 else 1
    spec.write_text(spec.read_text().replace("seed: [1, 2]", f"seed: [{other}]"))
    report = run(spec, emulator)
    folder = tmp_path / "results" / "grid"
    entries = {e["key"]: e for e in manifest(folder)}
    assert set(entries) == set(before)
    orphan = entries[flying.key]
    assert orphan["orphaned"] is True
    assert orphan["state"] == "done"
    (output,) = orphan["outputs"]
    assert (folder / output["path"]).stat().st_size == output["size"]
    for key, entry in entries.items():
        assert entry["orphaned"] is (entry["inputs"]["seed"] == seed)
        if entry["orphaned"] and before[key] is S.PENDING:
            assert entry["state"] == "pending"  # never submitted
    assert report.orphaned == 2
    assert set(emulator.ledger()["submissions_by_input"].values()) == {1}


# -- a changed schema default -----------------------------------------------------------------

CFG = "108_cfg"


@pytest.fixture
def cfg_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Change the shipped schema's default guidance scale, as a new comfysweep release might."""
    props = get_model(MODEL).input_schema["properties"]

    def change(value: float) -> None:
        monkeypatch.setitem(props[CFG], "default", value)

    return change


def test_a_changed_default_asks_before_rendering_a_finished_sweep_again(
    tmp_path: Path, emulator: Emulator, cfg_default: Any
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    cfg_default(4.0)
    for _ in range(2):  # refused, and refused again: the refusal recorded nothing
        with pytest.raises(DefaultsChanged) as caught:
            run(spec, emulator)
        assert str(caught.value) == (
            "4 job(s) differ from jobs already submitted only in the default of 'cfg' "
            "(3.5 -> 4.0), which changed in the model's schema: run again with --yes to render "
            "them again, or set 'cfg' in the spec"
        )
        assert billed(emulator) == 4
        with Store.open(tmp_path / "results" / "grid" / "comfysweep.db", readonly=True) as db:
            assert sum(db.counts().values()) == 4  # no new job stored, none orphaned
            assert sum(db.counts(in_spec=False).values()) == 0
    # The CLI: one line, exit 1, nothing paid; --yes renders them.
    env = {"RUNCOMFY_MODEL_API_BASE": emulator.base_url, "RUNCOMFY_API_TOKEN": emulator.token}
    result = CliRunner().invoke(cli, ["run", str(spec)], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: 4 job(s) differ")
    assert result.output.count("\n") == 1
    assert billed(emulator) == 4
    args = ["run", str(spec), "--yes", "--poll-interval", "0.02"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert billed(emulator) == 8
    assert "4 orphaned" in result.output
    assert run(spec, emulator).complete  # the new defaults are recorded: nothing more to ask
    assert billed(emulator) == 8


def test_setting_the_field_in_the_spec_needs_no_confirmation(
    tmp_path: Path, emulator: Emulator, cfg_default: Any
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    cfg_default(4.0)
    keep = spec.read_text().replace("  fps: 16\n", "  fps: 16\n  cfg: 3.5\n")
    spec.write_text(keep)
    assert run(spec, emulator).complete  # the old value, set on purpose: the same jobs
    assert billed(emulator) == 4
    spec.write_text(keep.replace("cfg: 3.5", "cfg: 4.0"))
    assert run(spec, emulator).complete  # the new value, set on purpose: rendered, unasked
    assert billed(emulator) == 8


def test_a_confirmation_is_asked_once_and_its_answer_holds(
    tmp_path: Path, emulator: Emulator, cfg_default: Any
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    cfg_default(4.5)
    asked: list[str] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False

    with pytest.raises(DefaultsChanged):
        run(spec, emulator, confirm=no)
    assert asked == [
        "4 job(s) differ from jobs already submitted only in the default of 'cfg' (3.5 -> 4.5), "
        "which changed in the model's schema. Render them again (pays again)?"
    ]
    assert billed(emulator) == 4
    assert run(spec, emulator, confirm=lambda _: True).complete
    assert billed(emulator) == 8


def test_a_store_from_before_defaults_were_recorded_is_still_guarded(
    tmp_path: Path, emulator: Emulator, cfg_default: Any
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    forget(tmp_path / "results" / "grid" / "comfysweep.db", "defaults")
    cfg_default(4.0)
    with pytest.raises(DefaultsChanged, match=r"'cfg' \(3.5 -> 4.0\)"):
        run(spec, emulator)
    assert billed(emulator) == 4


def test_only_submitted_twins_ask_and_new_values_render_with_the_new_default(
    tmp_path: Path, emulator: Emulator, cfg_default: Any
) -> None:
    spec = write_spec(tmp_path)
    run(spec, emulator, overrides=one_job(emulator))  # one job paid, three pending
    cfg_default(4.0)
    spec.write_text(spec.read_text().replace("steps: [4, 8]", "steps: [4, 8, 16]"))
    with pytest.raises(DefaultsChanged, match=r"^1 job\(s\) differ"):
        run(spec, emulator)
    assert run(spec, emulator, yes=True).complete
    assert billed(emulator) == 1 + 6
    with Store.open(tmp_path / "results" / "grid" / "comfysweep.db", readonly=True) as db:
        assert {r.inputs[CFG] for r in db.jobs(in_spec=True)} == {4.0}
        assert sum(db.counts(in_spec=False).values()) == 4


def test_unchanged_defaults_put_no_guard_on_the_sync(tmp_path: Path, cfg_default: Any) -> None:
    # No guard at all: a million-job sync pays nothing for this check until a default changes.
    spec = load_spec(write_spec(tmp_path))
    recorded = drift.current_defaults(spec)["values"]
    assert drift.DefaultsDrift.between(spec, recorded) is None
    cfg_default(4.0)
    changed = drift.DefaultsDrift.between(load_spec(spec.path), recorded)
    assert changed is not None
    assert changed.changed == {CFG: (3.5, 4.0)}
