"""A hostile review of `stop`, `cancel --where` and the views against a live run: each test here
failed before the fix it came with."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.store import JobState, Store

from .sweeps import write_spec
from .test_control import counts
from .waiting import DrivenClock, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def clock() -> DrivenClock:
    return DrivenClock(frozen=True)  # every job stays where it is until the test moves time on


@pytest.fixture
def emulator(clock: DrivenClock) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=1, clock=clock)) as emu:
        yield emu


def _store(spec: Path) -> Path:
    return spec.parent / "results" / spec.stem / "comfysweep.db"


def test_a_job_put_back_to_pending_before_the_run_reads_the_cancel_is_cancelled(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel names a job whose POST is under way; the POST is refused (never created: back
    to pending, and the run stops submitting) before the run's next look at its mailbox. Once
    the run reads the request, that job is cancelled: left pending, the next `run` would send
    (and bill) a job the user cancelled."""
    import anyio

    from orchestrator import control
    from orchestrator.client import ModelApiClient
    from orchestrator.errors import TransportError
    from orchestrator.locate import locate
    from orchestrator.runner import RunReport
    from orchestrator.steer import Cancelled, cancel_jobs
    from orchestrator.sweep import Overrides, run_sweep

    refuse = threading.Event()  # the held POST fails once this is set
    mail = threading.Event()  # the run's mailbox reads find nothing until this is set
    held: list[dict[str, Any]] = []
    real_submit = ModelApiClient.submit
    real_take = control.Mailbox.take

    async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Any:
        if not held:
            held.append(inputs)
            await anyio.to_thread.run_sync(refuse.wait)
            raise TransportError("the API is unreachable (test)")
        return await real_submit(self, model_id, inputs)

    def take(self: control.Mailbox) -> list[control.Control]:
        return real_take(self) if mail.is_set() else []

    monkeypatch.setattr(ModelApiClient, "submit", submit)
    monkeypatch.setattr(control.Mailbox, "take", take)
    spec = write_spec(tmp_path)
    reports: list[RunReport] = []
    answers: list[Cancelled] = []

    def run() -> None:
        overrides = Overrides(poll_interval=0.02)
        reports.append(
            run_sweep(spec, base_url=emulator.base_url, token=emulator.token, overrides=overrides)
        )

    def cancel() -> None:
        answers.append(cancel_jobs(locate(spec), where="seed == 1 and steps == 4"))

    worker = threading.Thread(target=run)
    canceller = threading.Thread(target=cancel)
    worker.start()
    try:
        wait_for(
            lambda: counts(spec) == {"submitting": 1, "running": 1, "queued": 1, "pending": 1},
            "the first job's POST held, two more sent",
        )
        canceller.start()

        def posted() -> bool:
            with Store.open(_store(spec), readonly=True) as db:
                return db.controls_last() > 0

        wait_for(posted, "the cancel request in the mailbox")
        refuse.set()
        wait_for(lambda: counts(spec).get("pending") == 2, "the refused job back to pending")
        mail.set()
        canceller.join()
    finally:
        refuse.set()
        mail.set()
        clock.release()
        worker.join()
        if canceller.is_alive():
            canceller.join()
    (answer,) = answers
    assert answer.line == (
        "0 pending cancelled, 1 claimed never sent, 0 queued cancelled remotely, "
        "0 running finish and are billed"
    )
    with Store.open(_store(spec), readonly=True) as db:
        (row,) = [r for r in db.jobs() if r.inputs == held[0]]
    assert row.state is JobState.CANCELLED  # never pending: no later run sends it
    assert len(emulator.ledger()["jobs"]) == 2  # the held job never reached the emulator
    (report,) = reports
    assert report.counts["cancelled"] == 1


def test_a_reader_looking_at_the_lock_never_makes_a_starting_run_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status`, `runs`, `stop` and `cancel` tell whether a run is live by a shared flock taken
    and dropped at once (lock.is_held). A run that starts in that instant must wait it out, not
    fail with "store ... is in use: locked by another process"."""
    import fcntl
    import os

    from orchestrator.store import lock

    db_path = tmp_path / "s.db"
    with Store.open(db_path) as db:
        with db.lock(owner="comfysweep run s"):
            pass  # the lock file exists, as after any run
        reader = os.open(f"{db_path}.lock", os.O_RDONLY)
        fcntl.flock(reader, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader's look, caught mid-way
        waits: list[float] = []

        def pause(seconds: float) -> None:  # the reader's look ends while the run waits
            waits.append(seconds)
            os.close(reader)

        monkeypatch.setattr(lock, "_pause", pause, raising=False)
        with db.lock(owner="comfysweep run s") as run_id:
            assert db.live_run_ids() == {run_id}
        assert len(waits) == 1


def test_a_run_holding_the_lock_still_refuses_a_second_run_at_once(tmp_path: Path) -> None:
    from orchestrator.errors import StoreLockedError

    db_path = tmp_path / "s.db"
    with (
        Store.open(db_path) as first,
        Store.open(db_path) as second,
        first.lock(owner="comfysweep run s"),
        pytest.raises(StoreLockedError, match="locked by comfysweep run s"),
        second.lock(owner="comfysweep run s"),
    ):
        pass


def test_stop_while_the_run_still_syncs_is_kept_for_it_not_called_dead(tmp_path: Path) -> None:
    """A run holds the store but its runner has not started (a long sync, the question before
    paying): `stop` neither says no run is live (`status` says one is) nor withdraws the request;
    the run drains as soon as its runner starts and reads it."""
    import os

    from orchestrator.control import Mailbox
    from orchestrator.grid import iter_jobs
    from orchestrator.locate import locate
    from orchestrator.spec import load_spec
    from orchestrator.steer import stop_run

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        with db.lock(owner="comfysweep run grid") as run_id:
            line = stop_run(locate(spec), patience=0.2, command="comfysweep run grid.yaml")
            assert line == (
                f"run {run_id} (pid {os.getpid()}) has not read the stop request within 0.2 s "
                "(still starting: syncing its jobs, or asking before it pays?); it drains as "
                "soon as it does; `comfysweep run grid.yaml` brings the rest back"
            )
            (request,) = Mailbox(db).take()  # the runner starts: the stop is its
            assert request.kind == "stop"


IMAGES = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  image: [fox.png, owl.png]
  seed: [1, 2]
run:
  output: {output}
"""


def test_where_names_a_local_image_by_its_file(tmp_path: Path) -> None:
    """A spec's image axis of local files: the jobs send them as data: URIs, but the user knows
    them by the names they wrote. `cancel --where "image == 'owl.png'"` means those jobs."""
    from orchestrator.grid import iter_jobs
    from orchestrator.locate import locate
    from orchestrator.spec import load_spec
    from orchestrator.steer import cancel_jobs

    for name, colour in (("fox.png", "red"), ("owl.png", "blue")):
        _png(tmp_path / name, colour)
    spec = write_spec(tmp_path, body=IMAGES)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
    done = cancel_jobs(locate(spec), where="image == 'owl.png' and seed in [1, 2]")
    assert done.line.startswith("2 pending cancelled")
    with Store.open(loaded.results_dir / "comfysweep.db", readonly=True) as db:
        gone = [row.sources["118_image"] for row in db.jobs([JobState.CANCELLED])]
    assert gone == ["owl.png", "owl.png"]


def _png(path: Path, colour: str) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), colour).save(path)


def test_failures_and_show_name_a_local_image_by_its_file(tmp_path: Path) -> None:
    """An image axis of local files: `failures` tells the jobs apart by the file each sent (not
    by a data: URI that reads the same for all), and `show` names the file too."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec

    for name, colour in (("fox.png", "red"), ("owl.png", "blue")):
        _png(tmp_path / name, colour)
    spec = write_spec(tmp_path, body=IMAGES)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        for row in db.claim(4):
            db.transition(row.key, JobState.FAILED, error="refused (test)")
        key = next(r.key for r in db.jobs() if r.sources["118_image"] == "owl.png")

    def lines(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    shown = [line.split("failed    ")[1] for line in lines("failures", str(spec))[:-1]]
    assert shown == [
        "image=fox.png seed=1  refused (test)",
        "image=fox.png seed=2  refused (test)",
        "image=owl.png seed=1  refused (test)",
        "image=owl.png seed=2  refused (test)",
    ]
    records = [json.loads(line) for line in lines("failures", str(spec), "--json")]
    assert [r["inputs"]["image"] for r in records] == ["fox.png", "fox.png", "owl.png", "owl.png"]
    image = next(line for line in lines("show", key[:8], str(spec)) if line.startswith("  image"))
    assert image.split()[1:4] == ["owl.png,", "sent", "as"]


def test_a_run_that_dies_after_taking_a_cancel_leaves_it_to_the_cancel(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run marks the request seen, then dies (killed, crashed) before acting on it: no later
    run ever takes a seen request, so `cancel` must not answer that the live run took the jobs
    in flight; it cancels the queued ones itself, as when no run took the request."""
    from orchestrator.errors import StoreError
    from orchestrator.locate import locate
    from orchestrator.runner import Runner
    from orchestrator.steer import Cancelled, cancel_jobs
    from orchestrator.sweep import Overrides, run_sweep

    async def dies(self: Runner, request: Any) -> None:
        raise StoreError("the run died (test)")

    monkeypatch.setattr(Runner, "_cancel_requested", dies)
    spec = write_spec(tmp_path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_sweep(
                spec,
                base_url=emulator.base_url,
                token=emulator.token,
                overrides=Overrides(poll_interval=0.02),
            )
        except StoreError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(
            lambda: counts(spec) == {"running": 1, "queued": 2, "pending": 1},
            "one job running, two queued",
        )
        done: Cancelled = cancel_jobs(
            locate(spec), base_url=emulator.base_url, token=emulator.token, patience=5.0
        )
    finally:
        clock.release()
        worker.join()
    assert [str(e) for e in errors] == ["the run died (test)"]
    assert done.line == (
        "1 pending cancelled, 2 queued cancelled remotely, 1 running finishes and is billed"
    )
    assert counts(spec) == {"running": 1, "cancelled": 3}
    charges = sorted(job["cost"] for job in emulator.ledger()["jobs"])
    assert charges[:2] == [0, 0]  # the queued ones: cancelled, never billed


def test_stop_taken_by_a_run_that_ends_at_once_says_so(tmp_path: Path) -> None:
    """The run takes the stop, then ends before answering (its last job ended, or it was
    killed): `stop` says so at once, not after its 30 s, and not that the run is draining."""
    import os

    from orchestrator.control import Mailbox
    from orchestrator.locate import locate
    from orchestrator.steer import stop_run

    spec = write_spec(tmp_path)
    results = tmp_path / "results" / "grid"
    results.mkdir(parents=True)
    lines: list[str] = []
    with Store.open(results / "comfysweep.db") as db:
        db.bind_sweep("grid")
        with db.lock(owner="comfysweep run grid") as run_id:
            mailbox = Mailbox(db)
            stopper = threading.Thread(
                target=lambda: lines.append(
                    stop_run(locate(spec), command="comfysweep run grid.yaml")
                )
            )
            stopper.start()
            (request,) = wait_for(mailbox.take, "the stop request")
            assert request.kind == "stop"
        stopper.join()
    assert lines == [
        f"run {run_id} (pid {os.getpid()}) ended as it took the stop request; "
        "`comfysweep run grid.yaml` brings the rest back"
    ]


def test_the_views_read_a_store_one_revision_old_without_upgrading_it(tmp_path: Path) -> None:
    """A store at 0005 (before the controls and ratings tables): a run of the previous
    comfysweep may hold it. `status`, `show`, `failures` and `runs` read it as it is, never
    telling the user to start a paying `comfysweep run` just to look."""
    import sqlalchemy as sa
    from alembic import command
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec
    from orchestrator.store import schema

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    path = loaded.results_dir / "comfysweep.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), "0005")
    engine.dispose()
    with sqlite3_rows(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
    jobs = list(iter_jobs(loaded))
    with sqlite3_rows(path) as raw:  # as the previous comfysweep wrote them
        for job in jobs:
            raw.execute(
                'INSERT INTO jobs (key, "index", rank, model_id, inputs, repeat, state, '
                "attempts, outputs, created_at, updated_at, in_spec) VALUES "
                "(?, ?, ?, ?, ?, 0, 'pending', 0, '[]', '2026-11-30 10:00:00', "
                "'2026-11-30 10:00:00', 1)",
                (job.key, job.index, job.index, job.model_id, json_text(job.inputs)),
            )
    before = path.read_bytes()

    def cli_out(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    assert cli_out("status", str(spec))[:2] == ["grid: 4 jobs, spent $0.00", "  pending     4"]
    assert cli_out("runs", str(spec)) == ["no runs yet: `comfysweep run` starts one"]
    assert cli_out("failures", str(spec)) == ["no failed, expired, lost or unknown jobs"]
    assert cli_out("show", jobs[0].key[:8], str(spec))[0] == f"job {jobs[0].key}"
    assert path.read_bytes() == before  # nothing upgraded, nothing written


def sqlite3_rows(path: Path) -> Any:
    import sqlite3
    from contextlib import closing

    class _Tx:
        def __enter__(self) -> sqlite3.Connection:
            self.raw = sqlite3.connect(path)
            return self.raw

        def __exit__(self, *exc: object) -> None:
            with closing(self.raw):
                self.raw.commit()

    return _Tx()


def json_text(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def test_where_hints_the_name_written_in_another_case() -> None:
    from orchestrator.where import WhereError, parse

    with pytest.raises(WhereError) as caught:
        parse("CFG >= 5").bind({"cfg": {"number"}, "seed": {"number"}})
    assert str(caught.value) == (
        "--where 'CFG >= 5': column 1: no input named 'CFG' (did you mean 'cfg'?); "
        "the jobs have: cfg, seed"
    )


def test_failures_of_chosen_states_says_none_of_those(tmp_path: Path) -> None:
    """`failures --state cancelled` on a sweep with none: it says no cancelled job, not that
    there is no failed, expired, lost or unknown job (which it did not look for)."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    path = tmp_path / "s.db"
    Store.open(path).close()

    def out(*args: str) -> str:
        result = CliRunner().invoke(cli, ["failures", "--store", str(path), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    assert out() == "no failed, expired, lost or unknown jobs\n"
    assert out("--state", "cancelled") == "no cancelled jobs\n"
    assert out("--state", "lost", "--state", "expired") == "no lost or expired jobs\n"


def test_stop_of_a_run_started_with_abort_cancels_its_queued_jobs(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    """`stop` is a first Ctrl-C from afar; a run started with `--abort` cancels its queued jobs
    on a first Ctrl-C (never billed), so it does on `stop` too."""
    from orchestrator.locate import locate
    from orchestrator.runner import RunReport
    from orchestrator.steer import stop_run
    from orchestrator.sweep import Overrides, run_sweep

    spec = write_spec(tmp_path)
    reports: list[RunReport] = []

    def run() -> None:
        overrides = Overrides(poll_interval=0.02)
        reports.append(
            run_sweep(
                spec,
                base_url=emulator.base_url,
                token=emulator.token,
                overrides=overrides,
                abort_on_stop=True,
            )
        )

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(
            lambda: counts(spec) == {"running": 1, "queued": 2, "pending": 1},
            "one job running, two queued",
        )
        stop_run(locate(spec), command="comfysweep run grid.yaml --abort")
        wait_for(lambda: counts(spec).get("cancelled") == 2, "the queued jobs cancelled")
    finally:
        clock.release()
        worker.join()
    (report,) = reports
    assert {s: n for s, n in report.counts.items() if n} == {
        "done": 1,
        "cancelled": 2,
        "pending": 1,
    }
    assert sorted(job["cost"] for job in emulator.ledger()["jobs"])[:2] == [0, 0]


def test_a_mailbox_read_the_store_refuses_loses_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses to mark a request seen (busy past its timeout): the run logs it and
    reads again at its next tick, and then takes the request. It skipped it for good: a stop
    or cancel that `stop`/`cancel` were told would be acted on never was."""
    from orchestrator.control import Mailbox
    from orchestrator.errors import StoreBusyError

    real = Store.see_control
    refused: list[int] = []

    def see_control(self: Store, control_id: int, outcome: str | None = None) -> bool:
        if not refused:
            refused.append(control_id)
            raise StoreBusyError("store s.db: database is locked (test)")
        return real(self, control_id, outcome)

    with Store.open(tmp_path / "s.db") as db, db.lock(owner="comfysweep run s"):
        mailbox = Mailbox(db)
        stop = db.request_control("stop")
        monkeypatch.setattr(Store, "see_control", see_control)
        with pytest.raises(StoreBusyError):
            mailbox.take()
        assert [r.id for r in mailbox.take()] == [stop]
        assert refused == [stop]


def test_cancel_without_a_token_changes_nothing_when_it_must_reach_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run live and a job queued remotely: `cancel` must ask the API, so a missing token is
    said before anything changes (it cancelled every pending job, then failed on the token,
    and the one line said nothing of the jobs it had cancelled)."""
    from orchestrator.errors import AuthError
    from orchestrator.grid import iter_jobs
    from orchestrator.locate import locate
    from orchestrator.spec import load_spec
    from orchestrator.steer import cancel_jobs

    for name in ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        with db.lock(owner="comfysweep run grid"):  # a run that queued one job, then died
            (row,) = db.claim(1)
            db.transition(row.key, JobState.QUEUED, request_id="r-1")
    with pytest.raises(AuthError, match="no API token"):
        cancel_jobs(locate(spec))
    assert counts(spec) == {"queued": 1, "pending": 3}  # nothing changed


def test_cancel_names_the_jobs_a_dead_run_caught_mid_submit(tmp_path: Path) -> None:
    """No run live; the `--where` matches a job a killed run left `submitting` (sent or not: no
    one knows). `cancel` cannot cancel it and must say so, not print three zeros."""
    from orchestrator.grid import iter_jobs
    from orchestrator.locate import locate
    from orchestrator.spec import load_spec
    from orchestrator.steer import cancel_jobs

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        with db.lock(owner="comfysweep run grid"):  # claimed, then the run was killed
            (row,) = db.claim(1)
    done = cancel_jobs(locate(spec), where=f"seed == {row.inputs['98_seed']} and steps == 4")
    assert done.line == (
        "0 pending cancelled, 0 queued cancelled remotely, 0 running finish and are billed, "
        "1 caught mid-submit by a run that died: not cancelled (the next run marks them "
        "unknown: they may be billed)"
    )


def test_a_job_cancelled_then_retried_while_a_postgresql_runner_lives_is_submitted(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock
) -> None:
    """PostgreSQL lets `retry` run beside a live runner. A job the runner cancelled on request,
    then put back by `retry --cancelled`, is the user's new wish: the runner submits it, not
    cancel it again from a request it already carried out."""
    from .postgres import fresh_schema

    with fresh_schema("rctl") as url:
        from orchestrator.locate import locate
        from orchestrator.runner import RunReport
        from orchestrator.steer import cancel_jobs
        from orchestrator.sweep import Overrides, retry_jobs, run_sweep

        spec = write_spec(tmp_path)
        reports: list[RunReport] = []

        def states() -> dict[str, int]:
            try:
                with Store.open(url, readonly=True) as db:
                    return {state: n for state, n in db.counts().items() if n}
            except Exception:  # not migrated yet
                return {}

        def run() -> None:
            reports.append(
                run_sweep(
                    spec,
                    store=url,
                    base_url=emulator.base_url,
                    token=emulator.token,
                    overrides=Overrides(poll_interval=0.02),
                )
            )

        worker = threading.Thread(target=run)
        worker.start()
        try:
            wait_for(
                lambda: states() == {"running": 1, "queued": 2, "pending": 1},
                "one job running, two queued",
            )
            where = "seed == 2 and steps == 4"  # queued (grid order: the third job)
            done = cancel_jobs(locate(spec, url), where=where)
            assert done.line.startswith("0 pending cancelled, 1 queued cancelled remotely")
            wait_for(lambda: states().get("cancelled") == 1, "the queued job cancelled")
            assert retry_jobs(spec, ["cancelled"], store=url, where=where) == 1
        finally:
            clock.release()
            worker.join()
        assert states() == {"done": 4}


def test_retry_names_the_store_it_put_the_jobs_back_in(tmp_path: Path) -> None:
    """`retry SPEC --store S` says which command submits the jobs: with `--store S`. Without it
    the command runs the sweep in the results folder's own store, which knows none of these
    jobs, and submits (pays) every one of them again."""
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    elsewhere = tmp_path / "shared store.db"
    with Store.open(elsewhere) as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        (row,) = db.claim(1)
        db.transition(row.key, JobState.FAILED, error="refused (test)")
    result = CliRunner().invoke(cli, ["retry", str(spec), "--store", str(elsewhere), "--failed"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"1 job(s) back to pending; `comfysweep run {spec} --store '{elsewhere}'` submits them\n"
    )


def test_the_command_stop_prints_never_shows_the_store_password(tmp_path: Path) -> None:
    from orchestrator.locate import Located
    from orchestrator.steer import run_command

    url = "postgresql+psycopg://sweeper:hunter2@db.example/sweeps?sslpassword=s3cret"
    located = Located(None, url, None)
    shown = run_command(located, spec=Path("g.yaml"), store=url)
    assert "hunter2" not in shown
    assert "s3cret" not in shown
    assert shown.startswith("comfysweep run g.yaml --store 'postgresql+psycopg://sweeper:***@")


def test_cancel_and_stop_refuse_the_store_of_another_sweep(tmp_path: Path) -> None:
    """`cancel other.yaml --store S` where S belongs to sweep grid (a shared database, a slip of
    the finger): one line, nothing cancelled, no request posted; status already refused it."""
    from orchestrator.errors import StoreError
    from orchestrator.grid import iter_jobs
    from orchestrator.locate import locate
    from orchestrator.spec import load_spec
    from orchestrator.steer import cancel_jobs, stop_run

    spec = write_spec(tmp_path)
    other = write_spec(tmp_path, name="other")
    loaded = load_spec(spec)
    shared = tmp_path / "shared.db"
    with Store.open(shared) as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
    where = locate(other, str(shared))
    refused = (
        f"store {shared} belongs to sweep 'grid', not 'other' ({other}): give the spec its own "
        "--store"
    )
    with pytest.raises(StoreError) as caught:
        cancel_jobs(where)
    assert str(caught.value) == refused
    with pytest.raises(StoreError) as caught:
        stop_run(where, command="comfysweep run other.yaml")
    assert str(caught.value) == refused
    with Store.open(shared, readonly=True) as db:
        assert {s: n for s, n in db.counts().items() if n} == {"pending": 4}
        assert db.controls_after(0) == []


def test_retry_of_an_emulated_sweep_names_run_with_emulator(tmp_path: Path) -> None:
    """A sweep run on the embedded emulator (its results folder keeps `.emulator`): the command
    retry prints runs it there again. Without `--emulator` it would go to RunComfy, and with a
    token set, pay for a quickstart meant to cost nothing."""
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec

    spec = write_spec(tmp_path)
    loaded = load_spec(spec)
    loaded.results_dir.mkdir(parents=True)
    (loaded.results_dir / ".emulator").write_text("")  # what an --emulator run leaves
    with Store.open(loaded.results_dir / "comfysweep.db") as db:
        db.bind_sweep(loaded.name)
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        (row,) = db.claim(1)
        db.transition(row.key, JobState.FAILED, error="refused (test)")
    result = CliRunner().invoke(cli, ["retry", str(spec), "--failed"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"1 job(s) back to pending; `comfysweep run {spec} --emulator` submits them\n"
    )
