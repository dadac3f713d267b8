"""Several runners on one PostgreSQL store share one budget and one concurrency, in the database;
a dead runner's jobs and reservations are taken over, never submitted again.

Runs when COMFYSWEEP_TEST_POSTGRES_URL is set (each test gets a schema of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runner as runner_module
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep
from tests.test_ledger import (  # noqa: F401  (collected again here, against PostgreSQL)
    PRICES,
    estimate,
    priced_jobs,
    test_a_claim_reserves_each_jobs_own_estimate_and_refuses_what_does_not_fit,
    test_an_exact_fit_is_taken_despite_float_rounding,
    test_an_invalid_cost_keeps_the_estimate,
    test_every_attempt_is_kept_and_spend_is_their_sum,
    test_released_when_never_sent_or_refused_settled_at_the_cost_or_the_estimate,
    test_reservations_survive_closing_the_store,
    test_the_budget_settings_are_recorded_for_readers,
    test_the_shared_concurrency_refuses_a_claim_as_busy,
    test_unknown_and_lost_stay_reserved_and_a_retry_charges_the_estimate,
    test_with_a_cap_and_no_estimate_nothing_is_claimed,
)
from tests.test_store import MODEL
from tests.test_store_postgres import admin, target  # noqa: F401  (fixtures)

from .sweeps import write_spec
from .test_budget import ONE_JOB, SPEC, billed
from .waiting import PATIENCE, DrivenClock, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture
def store(target: str) -> Any:  # noqa: F811
    with Store.open(target) as s:
        s.sync_jobs(priced_jobs(), MODEL)
        yield s


def test_runners_on_their_own_connections_never_reserve_past_the_cap(target: str) -> None:  # noqa: F811
    with Store.open(target) as s:
        s.sync_jobs(priced_jobs(), MODEL)  # $0.25, $0.50, $0.75, $0.25
    taken: list[str] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            with Store.open(target) as mine:
                while (claim := mine.claim_within(estimate, cap=1.0)).row is not None:
                    taken.append(claim.row.key)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Which jobs fit depends on who skipped whose locked row ($0.25 + $0.75 fits as well as
    # $0.25 + $0.50 + $0.25): every job at most once, the first always, the cap never passed.
    assert "job-a" in taken
    assert len(set(taken)) == len(taken)
    reserved = sum(PRICES[key.removeprefix("job-")] for key in taken)
    with Store.open(target, readonly=True) as s:
        assert s.ledger().reserved_usd == pytest.approx(reserved)
    assert reserved <= 1.0


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_two_runners_share_one_budget(tmp_path: Path, target: str) -> None:  # noqa: F811
    # main: each runner kept the cap alone, so a $1.00 cap billed $1.52 with two of them.
    clock = DrivenClock(frozen=True)  # jobs stay queued until the test lets time run
    spec = write_spec(tmp_path, body=SPEC)
    with Emulator(EmulatorConfig(speed=2000.0, workers=8, clock=clock)) as emu:

        def go() -> Any:
            return run_sweep(
                spec,
                base_url=emu.base_url,
                token=emu.token,
                store=target,
                overrides=Overrides(poll_interval=0.02, max_cost=1.00),
                retry=RetryPolicy(wait=False),
            )

        first, first_out = in_thread(go)
        wait_for(lambda: len(emu.ledger()["jobs"]) >= 3, "the first runner's three submits")
        second, second_out = in_thread(go)
        wait_for(
            lambda: not second.is_alive() or len(emu.ledger()["jobs"]) > 3,
            "the second runner stopping, or submitting",
        )
        clock.release()
        first.join(PATIENCE)
        second.join(PATIENCE)
        assert billed(emu) <= 1.00
        assert billed(emu) == pytest.approx(3 * ONE_JOB)
    for out in (first_out, second_out):
        (report,) = out
        assert not isinstance(report, BaseException), report
        assert report.stop_kind == "budget"
    assert "--max-cost 2.03" in second_out[0].stop_reason


def test_a_dead_runners_jobs_are_taken_over_never_resubmitted(
    tmp_path: Path,
    target: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Look every tick, not every few (raising=False: main has no such look, and fails below).
    monkeypatch.setattr(runner_module, "_ADOPT_EVERY", 1, raising=False)
    clock = DrivenClock(frozen=True)
    body = SPEC.replace("seed: [1, 2, 3, 4]", "seed: [1, 2, 3]").replace(": 3\n", ": 2\n")
    spec = write_spec(tmp_path, body=body)  # six jobs, two in flight at once (store-wide)
    with Emulator(EmulatorConfig(speed=2000.0, workers=8, clock=clock)) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", target]
        dead = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with Store.open(target) as watcher:

                def queued() -> list[Any]:
                    return list(watcher.jobs([JobState.QUEUED, JobState.RUNNING]))

                first = wait_for(lambda: len(queued()) == 2 and queued(), "two jobs queued")
                dead_run = first[0].run_id
                live, live_out = in_thread(
                    lambda: run_sweep(
                        spec,
                        base_url=emu.base_url,
                        token=emu.token,
                        store=target,
                        overrides=Overrides(poll_interval=0.02),
                        retry=RetryPolicy(wait=False),
                    )
                )
                wait_for(lambda: watcher.ledger().concurrency == 2 and live.is_alive(), "start")
                assert len(emu.ledger()["jobs"]) == 2  # the shared concurrency holds the live one
                dead.send_signal(signal.SIGKILL)
                dead.wait()
                wait_for(
                    lambda: all(r.run_id != dead_run for r in queued()),
                    "the live runner taking over the dead one's jobs",
                )
                clock.release()
                live.join(PATIENCE)
        finally:
            dead.kill()
            dead.wait()
            if dead.stderr is not None:
                dead.stderr.close()
        ledger = emu.ledger()
    (report,) = live_out
    assert not isinstance(report, BaseException), report
    assert report.complete, report
    assert set(ledger["submissions_by_input"].values()) == {1}  # taken over, never resubmitted
    assert len(ledger["jobs"]) == 6
    assert max(ledger["peak_in_flight"].values()) <= 2  # one concurrency for both runners


def test_runners_with_different_caps_each_keep_their_own_against_the_shared_books(
    tmp_path: Path,
    target: str,  # noqa: F811
) -> None:
    # Which cap wins: each runner checks its own --max-cost against the one ledger, so a lower
    # cap submits nothing past it and the total never passes the highest cap in use.
    clock = DrivenClock(frozen=True)  # jobs stay queued (reserved) until the test lets time run
    spec = write_spec(tmp_path, body=SPEC)
    with Emulator(EmulatorConfig(speed=2000.0, workers=8, clock=clock)) as emu:

        def go(cap: float) -> Any:
            return run_sweep(
                spec,
                base_url=emu.base_url,
                token=emu.token,
                store=target,
                overrides=Overrides(poll_interval=0.02, max_cost=cap, concurrency=8),
                retry=RetryPolicy(wait=False),
            )

        first, first_out = in_thread(lambda: go(1.00))
        wait_for(lambda: len(emu.ledger()["jobs"]) >= 3, "the first runner's three submits")
        low = go(0.60)  # $0.76 reserved already: nothing fits under $0.60
        assert low.stop_kind == "budget"
        assert "$0.76 reserved of the $0.60 cap" in low.stop_reason
        assert len(emu.ledger()["jobs"]) == 3
        high, high_out = in_thread(lambda: go(1.30))
        wait_for(
            lambda: not high.is_alive() or len(emu.ledger()["jobs"]) >= 5,
            "the $1.30 runner submitting, or stopping",
        )
        clock.release()
        first.join(PATIENCE)
        high.join(PATIENCE)
        assert billed(emu) == pytest.approx(5 * ONE_JOB)  # $1.27: under the highest cap, $1.30
    for out in (first_out, high_out):
        (report,) = out
        assert not isinstance(report, BaseException), report
    assert first_out[0].stop_kind == "budget"
    assert high_out[0].stop_kind == "budget"
    assert "--max-cost 2.03" in high_out[0].stop_reason


def test_a_dead_runners_reservations_hold_the_cap_for_the_runner_that_takes_over(
    tmp_path: Path,
    target: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The dead runner's two queued jobs stay reserved ($0.51 of $1.00): the live one takes them
    # over (never resubmits them) and submits only what fits beside them: one job, $0.76 billed.
    monkeypatch.setattr(runner_module, "_ADOPT_EVERY", 1)
    clock = DrivenClock(frozen=True)
    body = SPEC.replace("seed: [1, 2, 3, 4]", "seed: [1, 2, 3]").replace(": 3\n", ": 2\n")
    spec = write_spec(tmp_path, body=body)  # six jobs, two in flight at once (store-wide)
    with Emulator(EmulatorConfig(speed=2000.0, workers=8, clock=clock)) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", target]
        command += ["--max-cost", "1.00"]
        dead = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with Store.open(target) as watcher:

                def queued() -> list[Any]:
                    return list(watcher.jobs([JobState.QUEUED, JobState.RUNNING]))

                first = wait_for(lambda: len(queued()) == 2 and queued(), "two jobs queued")
                dead_run = first[0].run_id
                dead.send_signal(signal.SIGKILL)
                dead.wait()
                assert watcher.ledger().reserved_usd == pytest.approx(2 * ONE_JOB)
                live, live_out = in_thread(
                    lambda: run_sweep(
                        spec,
                        base_url=emu.base_url,
                        token=emu.token,
                        store=target,
                        overrides=Overrides(poll_interval=0.02, max_cost=1.00),
                        retry=RetryPolicy(wait=False),
                    )
                )
                wait_for(
                    lambda: all(r.run_id != dead_run for r in queued()),
                    "the live runner taking over the dead one's jobs",
                )
                clock.release()
                live.join(PATIENCE)
        finally:
            dead.kill()
            dead.wait()
            if dead.stderr is not None:
                dead.stderr.close()
        ledger = emu.ledger()
        assert billed(emu) == pytest.approx(3 * ONE_JOB)
    (report,) = live_out
    assert not isinstance(report, BaseException), report
    assert report.stop_kind == "budget"
    assert set(ledger["submissions_by_input"].values()) == {1}  # taken over, never resubmitted
    with Store.open(target, readonly=True) as s:
        books, attempts = s.ledger(), s.attempts()
    assert books.in_flight == 0
    assert books.spent_usd == pytest.approx(sum(a.charge_usd or 0.0 for a in attempts))
    assert books.spent_usd == pytest.approx(3 * ONE_JOB)


def test_two_runner_processes_racing_for_the_last_dollars_stay_within_the_cap(
    tmp_path: Path,
    target: str,  # noqa: F811
) -> None:
    # Two processes start at once on one store, each with the same $1.00 cap: between them they
    # submit no more than fits ($0.76, three jobs), and never the same job twice.
    spec = write_spec(tmp_path, body=SPEC)
    with Emulator(EmulatorConfig(speed=2000.0, workers=8)) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", target]
        command += ["--max-cost", "1.00", "--poll-interval", "0.02"]
        with Store.open(target) as s:  # made before the race, so both find it ready
            s.set_meta("created", True)
        runners = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=PATIENCE) for p in runners]
        codes = [p.returncode for p in runners]
        ledger = emu.ledger()
        assert billed(emu) == pytest.approx(3 * ONE_JOB)
    assert codes == [3, 3], outs  # both stopped by the budget
    assert set(ledger["submissions_by_input"].values()) == {1}
    with Store.open(target, readonly=True) as s:
        books, attempts = s.ledger(), s.attempts()
    assert books.spent_usd == pytest.approx(sum(a.charge_usd or 0.0 for a in attempts))
    assert books.spent_usd == pytest.approx(3 * ONE_JOB)
    assert books.reserved_usd == pytest.approx(0.0)


def test_jobs_held_at_nothing_are_reserved_once_on_postgresql(tmp_path: Path, target: str) -> None:  # noqa: F811
    from orchestrator import budget
    from orchestrator.estimate import forecast
    from orchestrator.grid import iter_jobs
    from orchestrator.models import get_model
    from orchestrator.spec import load_spec

    loaded = load_spec(write_spec(tmp_path, body=SPEC))
    model = get_model(loaded.model)
    price = budget.Price(0.05, "second")
    estimate = budget.estimator(model, price)
    with Store.open(target) as db:
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        row = db.claim(1)[0]  # claimed with no price: held at $0
        db.transition(row.key, JobState.UNKNOWN)
        assert len(list(db.pending_inputs())) == 7
        assert db.unpriced(estimate) == (pytest.approx(ONE_JOB), 0.0)
        ahead = forecast(db, model, price, concurrency=3, cap_usd=1.0, job_seconds=None)
        assert ahead.reserved_usd == pytest.approx(ONE_JOB)
        assert db.reserve_unpriced(estimate) == pytest.approx(ONE_JOB)
        assert db.reserve_unpriced(estimate) == 0.0  # once: a second runner's look adds nothing
        assert db.ledger().reserved_usd == pytest.approx(ONE_JOB)
