"""`stop` and `cancel` from another shell reach a live run through the store; the emulator's
ledger proves cancelled jobs are never billed and running ones are."""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ComfysweepError
from orchestrator.grid import iter_jobs
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store

from .sweeps import SPEC, write_spec
from .waiting import PATIENCE, DrivenClock, wait_for

pytestmark = pytest.mark.timeout(300)  # a run in a subprocess: slow on a busy machine


@pytest.fixture
def clock() -> DrivenClock:
    return DrivenClock(frozen=True)  # every job stays where it is until the test moves time on


@pytest.fixture
def emulator(clock: DrivenClock) -> Iterator[Emulator]:
    # One worker: of the three jobs in flight, one runs and two wait in the queue.
    with Emulator(EmulatorConfig(speed=2000.0, workers=1, clock=clock)) as emu:
        yield emu


def start_run(spec: Path, emu: Emulator, *args: str) -> subprocess.Popen[str]:
    """`comfysweep run SPEC` in a process of its own, as a user's first shell runs it."""
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": emu.base_url, "RUNCOMFY_API_TOKEN": emu.token}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ended(proc: subprocess.Popen[str]) -> tuple[int, list[str], str]:
    out, err = proc.communicate(timeout=PATIENCE)
    return proc.returncode, out.splitlines(), err


def counts(spec: Path, store: str | None = None) -> dict[str, int]:
    if store is not None:
        try:
            with Store.open(store, readonly=True) as pg:
                return {state: n for state, n in pg.counts().items() if n}
        except ComfysweepError:  # not migrated yet
            return {}
    db = spec.parent / "results" / spec.stem / "comfysweep.db"
    if not db.exists():
        return {}
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)) as raw:
            rows = raw.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return {}
    return dict(rows)


def in_flight(
    spec: Path, running: int, queued: int, proc: subprocess.Popen[str], store: str | None = None
) -> None:
    wait_for(
        lambda: (
            (counts(spec, store).get("running"), counts(spec, store).get("queued"))
            == (running, queued)
        ),
        f"{running} running and {queued} queued in the store",
        proc=proc,
    )


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def store_of(spec: Path, store: str | None = None) -> Store:
    target = store or spec.parent / "results" / spec.stem / "comfysweep.db"
    return Store.open(target, readonly=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The store a run uses: the SQLite file in its results folder, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    from .postgres import fresh_schema

    with fresh_schema("control") as url:
        yield url


def billed(emu: Emulator) -> dict[str, float]:
    """What the emulator billed each request it saw (0 for a cancelled one)."""
    return {job["request_id"]: job["cost"] for job in emu.ledger()["jobs"]}


def test_stop_from_another_shell_drains_the_live_run(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    spec = write_spec(tmp_path)
    proc = start_run(spec, emulator)
    try:
        in_flight(spec, 1, 2, proc)
        result = invoke("stop", str(spec))
        assert result.exit_code == 0, result.output
        assert result.output == (
            f"run 1 (pid {proc.pid}) is draining: 3 job(s) in flight finish; "
            f"`comfysweep run {spec}` brings the rest back\n"
        )
    finally:
        clock.release()
    code, out, err = ended(proc)
    assert code == 3, err
    assert counts(spec) == {"done": 3, "pending": 1}  # the three in flight finished and landed
    assert len(emulator.ledger()["jobs"]) == 3  # nothing submitted after the stop
    assert out[-1] == f"to go on: comfysweep run {spec}"
    assert "stop requested from another shell" in err


def test_stop_without_a_live_run_says_so_and_leaves_no_request(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    spec = write_spec(tmp_path)
    clock.release()
    code, _, err = ended(start_run(spec, emulator))
    assert code == 0, err
    result = invoke("stop", str(spec))
    assert result.exit_code == 1
    assert result.output == "Error: no run of grid is live: nothing to stop\n"
    with store_of(spec) as db:
        assert db.controls_last() == 0


def test_cancel_while_live_never_sends_pending_cancels_queued_and_bills_running(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock, backend: str | None
) -> None:
    spec = write_spec(tmp_path)
    where = ["--store", backend] if backend else []
    proc = start_run(spec, emulator, *where)
    try:
        in_flight(spec, 1, 2, proc, backend)
        result = invoke("cancel", str(spec), *where)
        assert result.exit_code == 0, result.output
        assert result.output == (
            "1 pending cancelled, 2 queued cancelled remotely, 1 running finishes and is billed\n"
        )
    finally:
        clock.release()
    code, out, err = ended(proc)
    assert code == 3, err
    assert counts(spec, backend) == {"done": 1, "cancelled": 3}
    charges = billed(emulator)
    assert len(charges) == 3  # the pending job was never submitted
    with store_of(spec, backend) as db:
        for row in db.jobs():
            if row.state is JobState.DONE:
                assert charges[row.request_id or ""] > 0  # the running one: finished and paid
            elif row.request_id is None:
                assert row.attempts == 0  # cancelled before any submit
            else:
                assert charges[row.request_id] == 0  # cancelled in the queue: never billed
    assert (
        out[-1] == f"to go on: {shlex.join(['comfysweep', 'retry', str(spec), *where])} --cancelled"
    )


def test_cancel_where_narrows_to_the_matching_jobs(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    spec = write_spec(tmp_path)
    proc = start_run(spec, emulator)
    try:
        in_flight(spec, 1, 2, proc)
        nothing = invoke("cancel", str(spec), "--where", "steps == 6")
        assert nothing.exit_code == 1
        assert nothing.output == (
            "Error: --where 'steps == 6' matches no job of grid that is pending or in flight: "
            "nothing cancelled\n"
        )
        typo = invoke("cancel", str(spec), "--where", "step == 8")
        assert typo.exit_code == 1
        assert typo.output.startswith(
            "Error: --where 'step == 8': column 1: no input named 'step' (did you mean 'steps'?)"
        )
        # Grid order: (seed 1, steps 4) runs, (1, 8) and (2, 4) are queued, (2, 8) is pending.
        result = invoke("cancel", str(spec), "--where", "steps == 8")
        assert result.exit_code == 0, result.output
        assert result.output == (
            "1 pending cancelled, 1 queued cancelled remotely, 0 running finish and are billed\n"
        )
    finally:
        clock.release()
    code, _out, err = ended(proc)
    assert code == 3, err
    assert counts(spec) == {"done": 2, "cancelled": 2}
    with store_of(spec) as db:
        cancelled = [row.inputs["47_value"] for row in db.jobs([JobState.CANCELLED])]
    assert cancelled == [8, 8]
    assert sorted(billed(emulator).values())[0] == 0  # the queued one: cancelled, never billed


RACE = SPEC.replace("seed: [1, 2]", "seed: [" + ", ".join(map(str, range(1, 21))) + "]").replace(
    "concurrency: 3", "concurrency: 8"
)


def test_cancel_racing_the_claims_never_leaves_a_job_cancelled_and_billed(tmp_path: Path) -> None:
    """40 jobs; `cancel --where` while the run claims: every job's state matches the emulator's."""
    spec = write_spec(tmp_path, body=RACE)
    with Emulator(EmulatorConfig(speed=100.0, workers=4)) as emu:  # jobs queue and run a while
        proc = start_run(spec, emu)
        wait_for(
            lambda: counts(spec).get("done", 0) >= 1 and counts(spec).get("queued", 0) >= 2,
            "a job done and more waiting in the queue",
            proc=proc,
        )
        result = invoke("cancel", str(spec), "--where", "steps == 8")
        code, _, err = ended(proc)
        charges = billed(emu)
        ledger = emu.ledger()
    assert result.exit_code == 0, result.output
    assert code == 3, err
    assert set(ledger["submissions_by_input"].values()) == {1}  # nothing sent twice
    states = counts(spec)
    assert states.get("cancelled", 0) > 0
    assert states["done"] + states["cancelled"] == 40, states
    with store_of(spec) as db:
        rows = list(db.jobs())
    seen = {row.request_id for row in rows if row.request_id}
    assert seen == set(charges)  # every request the emulator saw is a job's in the store
    for row in rows:
        matches = row.inputs["47_value"] == 8
        if row.state is JobState.DONE:
            assert charges[row.request_id or ""] > 0
        else:
            assert row.state is JobState.CANCELLED, row
            assert matches, row
            assert row.request_id is None or charges[row.request_id] == 0, row


def test_cancel_without_a_live_run_and_retry_where(tmp_path: Path) -> None:
    """No run live, only pending jobs: no API needed; `retry --where` puts back what it names."""
    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
    result = invoke("cancel", str(spec))
    assert result.output == (
        "4 pending cancelled, 0 queued cancelled remotely, 0 running finish and are billed\n"
    )
    bad = invoke("retry", str(spec), "--cancelled", "--where", "cfg > 'x'")
    assert bad.exit_code == 1
    assert "cfg is a number in this sweep's jobs, compared with the string 'x'" in bad.output
    none = invoke("retry", str(spec), "--failed", "--where", "steps == 8")
    assert none.exit_code == 1
    assert none.output == (
        "Error: --where 'steps == 8' matches none of the failed jobs of the sweep: "
        "nothing put back\n"
    )
    back = invoke("retry", str(spec), "--cancelled", "--where", "steps == 8 and seed == 2")
    assert back.output == f"1 job(s) back to pending; `comfysweep run {spec}` submits them\n"
    assert counts(spec) == {"cancelled": 3, "pending": 1}


def test_the_mailbox_on_postgresql() -> None:
    """Requests, their taking and cancel_pending's one transaction, on a real server."""
    from .postgres import fresh_schema

    with fresh_schema("control") as url, Store.open(url) as db:
        spec_jobs = [_Job(f"k{i}", i) for i in range(3)]
        db.sync_jobs(spec_jobs, "community/wan-2-2/vace-fun")
        assert db.live_runs() == []
        with db.lock(owner="comfysweep run grid") as run_id:
            (live,) = db.live_runs()
            assert live.id == run_id
            assert db.claim(1)[0].key == "k0"
            cancelled, states, control_id = db.cancel_pending(["k0", "k1"], request=True)
            assert cancelled == ["k1"]
            assert states == {"k0": JobState.SUBMITTING}
            assert control_id is not None
            (request,) = db.controls_after(0)
            assert request.keys == ("k0",)
            assert request.seen_at is None
            assert db.see_control(control_id, "1 claimed never sent")
            assert not db.see_control(control_id)  # taken once
        taken = db.control(control_id)
        assert taken is not None
        assert taken.run_id == run_id
        assert taken.outcome == "1 claimed never sent"
        assert db.controls_last() == control_id
        assert db.live_runs() == []
        stop = db.request_control("stop")
        assert db.withdraw_control(stop)
        assert db.controls_last() == control_id


class _Job:
    def __init__(self, key: str, index: int) -> None:
        self.key = key
        self.index = index
        self.model_id = "community/wan-2-2/vace-fun"
        self.inputs: dict[str, Any] = {"98_seed": index}
        self.repeat = 0
        self.sources: dict[str, str] = {}


@pytest.mark.parametrize(
    ("counts", "kind", "reason", "line"),
    [
        ({"pending": 2, "done": 2}, "deadline", "deadline", "to go on: comfysweep run g.yaml"),
        (
            {"pending": 2, "done": 1, "cancelled": 1},
            "interrupted",
            "stopped",
            "to go on: comfysweep run g.yaml (and `comfysweep retry g.yaml --cancelled` for the "
            "1 cancelled)",
        ),
        ({"done": 3, "cancelled": 1}, None, None, "to go on: comfysweep retry g.yaml --cancelled"),
        (
            {"pending": 2, "done": 2},
            "budget",
            "budget reached: ...; to finish them: comfysweep run g.yaml --max-cost 2.50",
            "to go on: comfysweep run g.yaml --max-cost 2.50",
        ),
        ({"done": 4}, None, None, None),
    ],
)
def test_the_last_line_says_how_to_go_on(
    counts: dict[str, int], kind: str | None, reason: str | None, line: str | None
) -> None:
    from orchestrator.runner import RunReport
    from orchestrator.steer import go_on

    report = RunReport(
        counts=counts, spent_usd=0.0, elapsed=1.0, stop_reason=reason, stop_kind=kind
    )
    assert go_on(report, "comfysweep run g.yaml", "comfysweep retry g.yaml") == line


def test_the_last_line_is_the_summarys_next_step() -> None:
    """The run's account knows the flags it was given: the last line repeats them."""
    from orchestrator.runner import RunReport
    from orchestrator.steer import go_on

    report = RunReport(counts={"pending": 1, "cancelled": 2}, spent_usd=0.0, elapsed=1.0)
    report.account = {
        "next": [
            "resume (1 job(s) left): `comfysweep run g.yaml --poll-interval 0.02`",
            "retry 2 cancelled: `comfysweep retry g.yaml --cancelled`",
        ]
    }
    assert go_on(report, "comfysweep run g.yaml", "comfysweep retry g.yaml") == (
        "to go on: comfysweep run g.yaml --poll-interval 0.02 "
        "(and `comfysweep retry g.yaml --cancelled` for the 2 cancelled)"
    )


def test_a_run_takes_only_the_requests_posted_since_it_took_the_store(tmp_path: Path) -> None:
    """One posted while no run was live (`--no-wait`, the run ended) never stops a later run; one
    posted while the run still syncs its jobs (before its runner starts) is the run's."""
    from orchestrator.control import Mailbox

    with Store.open(tmp_path / "s.db") as db:
        stale = db.request_control("stop")
        with db.lock(owner="comfysweep run grid"):
            early = db.request_control("stop")  # the run is live, its runner not started yet
            mailbox = Mailbox(db)
            assert [r.id for r in mailbox.take()] == [early]
            assert mailbox.take() == []  # taken once
            later = db.request_control("cancel", keys=["k"])
            (taken,) = mailbox.take()
            assert (taken.id, taken.kind, taken.keys) == (later, "cancel", ("k",))
        request = db.control(stale)
        assert request is not None
        assert request.seen_at is None


def test_stop_no_wait_returns_at_once_and_the_run_drains(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    spec = write_spec(tmp_path)
    proc = start_run(spec, emulator)
    try:
        in_flight(spec, 1, 2, proc)
        result = invoke("stop", str(spec), "--no-wait")
        assert result.output == (
            f"run 1 (pid {proc.pid}) is asked to drain; `comfysweep run {spec}` brings the rest "
            "back\n"
        )

        def taken() -> bool:
            with store_of(spec) as db:
                request = db.control(db.controls_last())
                return request is not None and request.seen_at is not None

        wait_for(taken, "the run takes the stop request", proc=proc)
    finally:
        clock.release()
    code, out, _ = ended(proc)
    assert code == 3
    assert counts(spec) == {"done": 3, "pending": 1}
    assert out[-1] == f"to go on: comfysweep run {spec}"


def test_a_live_run_that_does_not_take_the_request_is_one_line(tmp_path: Path) -> None:
    """A run holding the store but not reading its mailbox: the pending jobs are cancelled, the
    request for the jobs in flight is withdrawn (no later run acts on it), and it says so."""
    from orchestrator.locate import locate
    from orchestrator.steer import cancel_jobs, stop_run

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        with db.lock(owner="comfysweep run grid") as run_id:
            db.claim(1)  # in flight, for the run to deal with
            with pytest.raises(ComfysweepError) as caught:
                cancel_jobs(locate(spec), patience=0.2)
            assert str(caught.value) == (
                f"run {run_id} (pid {os.getpid()}) did not take the cancel request within 0.2 s: "
                "3 pending cancelled; the jobs in flight are left to it (cancel again, or stop it "
                "first)"
            )
            line = stop_run(locate(spec), patience=0.2, command="comfysweep run grid.yaml")
            assert line.startswith(f"run {run_id} (pid {os.getpid()}) has not read the stop")
            (kept,) = db.controls_after(0)  # the cancel withdrawn; the stop kept for the run
            assert kept.kind == "stop"


def test_a_job_claimed_but_not_sent_when_the_cancel_comes_is_never_sent(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first job is held between its claim and its POST (as behind a download or a 429
    pause); a cancel naming it then: the run never sends it, and the emulator never sees it."""
    import threading

    import anyio

    from orchestrator.locate import locate
    from orchestrator.runner import Runner, RunReport
    from orchestrator.steer import cancel_jobs
    from orchestrator.sweep import Overrides, run_sweep

    hold = threading.Event()
    held: list[bool] = []
    real = Runner._pause_out

    async def pause_out(self: Runner) -> None:
        if not held:
            held.append(True)
            await anyio.to_thread.run_sync(hold.wait)
        await real(self)

    monkeypatch.setattr(Runner, "_pause_out", pause_out)
    spec = write_spec(tmp_path)
    reports: list[RunReport] = []

    def run() -> None:
        overrides = Overrides(poll_interval=0.02)
        reports.append(
            run_sweep(spec, base_url=emulator.base_url, token=emulator.token, overrides=overrides)
        )

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(
            lambda: counts(spec) == {"submitting": 1, "running": 1, "queued": 1, "pending": 1},
            "one job held after its claim, two sent",
        )
        done = cancel_jobs(locate(spec), where="seed == 1 and steps == 4")
        assert done.line == (
            "0 pending cancelled, 1 claimed never sent, 0 queued cancelled remotely, "
            "0 running finish and are billed"
        )
    finally:
        hold.set()
        clock.release()
        worker.join()
    (report,) = reports
    assert report.counts["cancelled"] == 1
    assert report.counts["done"] == 3
    with store_of(spec) as db:
        (row,) = db.jobs([JobState.CANCELLED])
        (attempt,) = db.attempts(row.key)
    assert (row.inputs["98_seed"], row.inputs["47_value"], row.request_id) == (1, 4, None)
    assert attempt.outcome == "not created (pending)"  # released: never sent, never reserved
    assert len(emulator.ledger()["jobs"]) == 3
