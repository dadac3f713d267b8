"""The budget cap holds against the emulator's own books, in every case issue 9 measured.

Each test reads what the emulator billed (its ledger, every job it created run to its end) and
checks item 1's rule: with every price known before submit, spent <= cap; otherwise never more
than what was honestly reserved when the cap was reached.
"""

from __future__ import annotations

import io
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator import budget
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.errors import SpecError
from orchestrator.models import get_model
from orchestrator.retry import RetryPolicy
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, retry_jobs, run_sweep

from .sweeps import run_until_killed, write_spec
from .waiting import wait_for

DRIVER = Path(__file__).with_name("kill_driver.py")
ONE_JOB = 0.05 * 81 / 16  # the emulator's price of the sweeps' usual job: $0.253125
NO_WAITS = RetryPolicy(wait=False)
_TERMINAL = {"succeeded", "failed", "cancelled", "forgotten"}

SPEC = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  seed: [1, 2, 3, 4]
  steps: [4, 8]
run:
  concurrency: 3
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""
# Jobs of four prices, the cheapest first: $0.169, $0.3375, $0.29375, $0.5875 (x2 seeds).
PRICED = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  steps: 4
axes:
  seed: [1, 2]
  frames: [81, 141]
  fps: [24, 12]
run:
  concurrency: 4
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""


def emulator(faults: dict[str, Any] | None = None) -> Emulator:
    profile = FaultProfile.parse({"seed": 7, "faults": faults or {}})
    return Emulator(EmulatorConfig(speed=2000.0, workers=8, faults=profile))


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with emulator() as e:
        yield e


def run(spec: Path, emu: Emulator, *, cap: float | None = None, **kwargs: Any) -> Any:
    overrides = Overrides(poll_interval=0.02, max_cost=cap)
    return run_sweep(
        spec, base_url=emu.base_url, token=emu.token, overrides=overrides, retry=NO_WAITS, **kwargs
    )


def billed(emu: Emulator) -> float:
    """What the emulator billed, once every job it created has ended (unknown ones too)."""

    def ended() -> dict[str, Any] | None:
        ledger = emu.ledger()
        return ledger if all(j["status"] in _TERMINAL for j in ledger["jobs"]) else None

    return float(wait_for(ended, "every created job ending")["billed_usd"])


def spent(spec: Path) -> float:
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        return db.spent()


# -- the cap against the emulator's books ----------------------------------------------------------


def test_jobs_of_different_prices_are_each_reserved_at_their_own(
    tmp_path: Path, emu: Emulator
) -> None:
    # main reserved every job at the first (cheapest) one's price: $1.00 billed $1.39.
    spec = write_spec(tmp_path, body=PRICED)
    report = run(spec, emu, cap=1.00)
    assert report.stop_kind == "budget"
    assert billed(emu) <= 1.00
    assert billed(emu) == pytest.approx(0.16875 + 0.3375 + 0.29375)  # the next, $0.5875, waits
    assert spent(spec) == pytest.approx(billed(emu))


def test_a_kill_between_submits_keeps_its_jobs_reserved_on_resume(
    tmp_path: Path, emu: Emulator
) -> None:
    # Killed after the third submit was answered: main resumed those jobs unreserved.
    capped = SPEC.replace("  concurrency", "  max_cost: 0.80\n  concurrency")
    spec = write_spec(tmp_path, body=capped)
    run_until_killed(DRIVER, spec, emu, "submit-sent", "3")
    assert len(emu.ledger()["jobs"]) == 3
    report = run(spec, emu, cap=0.80)
    assert report.stop_kind == "budget"
    assert billed(emu) <= 0.80
    assert len(emu.ledger()["jobs"]) == 3


def test_retries_and_force_count_every_attempt(tmp_path: Path) -> None:
    # main counted only each job's last cost: a $1.30 cap billed $1.52 over retry and --force.
    one_at_a_time = SPEC.replace("seed: [1, 2, 3, 4]", "seed: [1, 2]").replace(": 3\n", ": 1\n")
    spec = write_spec(tmp_path, body=one_at_a_time)
    with emulator({"fail_string": {"rate": 1.0, "limit": 2}}) as emu:
        first = run(spec, emu, cap=1.30)
        assert (first.counts["failed"], first.counts["done"]) == (2, 2)
        assert retry_jobs(spec, ["failed"]) == 2
        second = run(spec, emu, cap=1.30)
        assert second.stop_kind == "budget"
        third = run(spec, emu, cap=1.30, force=True)
        assert third.stop_kind == "budget"
        assert billed(emu) <= 1.30
        assert billed(emu) == pytest.approx(5 * ONE_JOB)
        assert spent(spec) == pytest.approx(billed(emu))
        assert third.spent_usd == pytest.approx(billed(emu))


@pytest.mark.parametrize("fault", ["cost_null", "cost_negative", "cost_missing", "cost_nan"])
def test_a_result_without_a_valid_cost_counts_its_estimate(tmp_path: Path, fault: str) -> None:
    # main took a null or negative cost as $0, which switched the cap off: $1.00 billed $2.03.
    spec = write_spec(tmp_path, body=SPEC.replace("concurrency: 3", "concurrency: 1"))
    with emulator({fault: {"rate": 1.0}}) as emu:
        report = run(spec, emu, cap=1.00)
        assert report.stop_kind == "budget"
        assert billed(emu) <= 1.00
        assert spent(spec) == pytest.approx(billed(emu))
    said = [m for m in report.messages if "reported no valid cost" in m]
    assert len(said) == 1, report.messages


def test_unknown_jobs_stay_reserved_run_after_run(tmp_path: Path) -> None:
    # Every submit's answer lost: main counted unknown jobs as $0, five runs at $1.00 billed $4.05.
    spec = write_spec(tmp_path)
    with emulator({"drop_after_create": {"rate": 1.0}}) as emu:
        for _ in range(5):
            report = run(spec, emu, cap=1.00)
        assert report.stop_kind == "budget"
        assert billed(emu) <= 1.00
        assert report.reserved_usd == pytest.approx(billed(emu))  # reserved: may be billed
        assert report.counts["unknown"] == 3
    status = CliRunner().invoke(cli, ["status", str(spec)]).output.splitlines()[0]
    assert status == "grid: 4 jobs, spent $0.00, $0.76 reserved of the $1.00 cap"


def test_with_a_cap_and_no_price_nothing_is_submitted_until_one_is_given(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, body=SPEC.replace("seed: [1, 2, 3, 4]", "seed: [1, 2]"))
    with emulator({"http_500": {"rate": 1.0, "endpoints": ["catalog"]}}) as emu:
        # main sent one job blind: a $0.05 cap paid $0.25.
        report = run(spec, emu, cap=0.05)
        assert emu.ledger()["jobs"] == []
        assert report.stop_kind == "budget"
        assert "--price" in (report.stop_reason or "")
        assert "nothing submitted" in (report.stop_reason or "")
        report = run(spec, emu, cap=0.60, price="0.05/second")
        assert report.stop_kind == "budget"
        assert billed(emu) == pytest.approx(2 * ONE_JOB)
        # The price is kept in the store: a resume without a catalog answer still has it.
        report = run(spec, emu, cap=1.10)
        assert report.complete
        assert billed(emu) == pytest.approx(4 * ONE_JOB)


def test_the_budget_stop_says_what_is_left_and_the_flag_that_finishes(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, body=SPEC.replace("seed: [1, 2, 3, 4]", "seed: [1, 2]"))
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", emu.base_url)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", emu.token)
    stopped = CliRunner().invoke(cli, ["run", str(spec), "--max-cost", "0.60"])
    assert stopped.exit_code == 3, stopped.output
    line = (
        "2 pending: budget reached: $0.00 spent and $0.51 reserved of the $0.60 cap; the next "
        "job ($0.25) does not fit; 2 job(s) left undone, about $0.51; to finish them: "
        f"comfysweep run {spec} --max-cost 1.02"
    )
    assert line in stopped.output.splitlines(), stopped.output
    finished = CliRunner().invoke(cli, ["run", str(spec), "--max-cost", "1.02"])
    assert finished.exit_code == 0, finished.output
    assert billed(emu) <= 1.02


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_cap_that_is_not_positive_is_a_one_line_error(
    tmp_path: Path, emu: Emulator, value: str
) -> None:
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec), "--emulator", "--max-cost", value])
    assert result.exit_code == 2
    assert "--max-cost" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("value", "says"),
    [("cheap", "'cheap' is not a number"), ("0.05/minute", "unknown unit 'minute'")],
)
def test_a_bad_price_is_a_one_line_error_before_anything(
    tmp_path: Path, value: str, says: str
) -> None:
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec), "--emulator", "--price", value])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: --price {value}: {says}; e.g. --price 0.05/second"), line
    assert not (tmp_path / "results").exists()


def test_the_shipped_grid_fits_its_own_cap() -> None:
    # main's cfg-steps-grid.yaml (113 jobs, $28.60 at the emulator's price) stopped at $25.
    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "cfg-steps-grid.yaml")
    from orchestrator.grid import iter_jobs

    model = get_model(spec.model)
    total = sum(budget.per_job(model, 0.05, "second", job.inputs) or 0 for job in iter_jobs(spec))
    assert spec.run.max_cost is not None
    assert total == pytest.approx(113 * ONE_JOB)
    assert total <= spec.run.max_cost


# -- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "usd", "unit"),
    [
        ("0.05/second", 0.05, "second"),
        ("0.05/s", 0.05, "second"),
        ("$0.25/output", 0.25, "output"),
        ("0.25", 0.25, "output"),
        ("0.25/job", 0.25, "output"),
        ("0", 0.0, "output"),
    ],
)
def test_price_values(text: str, usd: float, unit: str) -> None:
    assert budget.parse_price(text) == budget.Price(usd, unit, "--price")


@pytest.mark.parametrize("text", ["", "x/second", "-1/second", "inf", "0.05/minute", "nan"])
def test_bad_price_values(text: str) -> None:
    with pytest.raises(SpecError, match=r"^--price .*e\.g\. --price 0\.05/second"):
        budget.parse_price(text)


def test_a_jobs_estimate_comes_from_its_own_frames_and_fps() -> None:
    model = get_model("community/wan-2-2/vace-fun")
    second = budget.estimator(model, budget.Price(0.05, "second"))
    assert second({"25_value": 141, "38_value": 12}) == pytest.approx(0.5875)
    assert second({"25_value": 81, "38_value": 24}) == pytest.approx(0.16875)
    assert second({"25_value": 81}) is None  # no fps: no estimate, never a made-up one
    assert budget.estimator(model, budget.Price(0.25, "output"))({}) == 0.25
    assert budget.estimator(model, None)({"25_value": 81, "38_value": 16}) is None


@pytest.mark.parametrize("cost", [None, -1.0, math.nan, math.inf, True])
def test_an_invalid_cost_charges_the_estimate(cost: Any) -> None:
    assert budget.charge(cost, 0.3) == (0.3, False)
    assert budget.charge(0.1, 0.3) == (0.1, True)


def test_the_raised_cap_is_whole_cents_that_fit() -> None:
    assert budget.raised_cap(0.50625, 0.0, 0.50625) == 1.02
    assert budget.raised_cap(1.0, 0.5, 0.5) == 2.0


def test_a_stop_after_the_budgets_holds_back_what_the_budget_let_through(tmp_path: Path) -> None:
    from orchestrator.client import ModelApiClient
    from orchestrator.results import ResultsFolder
    from orchestrator.runner import Runner

    model = get_model("community/wan-2-2/vace-fun")
    with Store.open(tmp_path / "store.db") as db:
        runner = Runner(
            db, ModelApiClient("http://127.0.0.1:9", "t"), ResultsFolder(tmp_path, model, "{key}")
        )
        runner.stop("budget reached", kind="budget")
        assert runner.stopping
        assert not runner._halted  # claimed jobs within the cap still go
        runner.stop("interrupted", kind="interrupted")
        assert runner._halted
        assert (runner._stop_reason, runner._stop_kind) == ("interrupted", "interrupted")


def test_jobs_in_flight_reserved_at_nothing_are_reserved_once_a_price_is_known(
    tmp_path: Path, emu: Emulator
) -> None:
    # Migration 0005 gives a store's jobs in flight and unknown an open attempt at $0 (no price
    # was recorded), as does a claim made while no price was known: a capped resume spent their
    # share again ($0.80 cap, 6 jobs billed, $1.52). The run that knows a price reserves them.
    spec = write_spec(tmp_path)
    run_until_killed(DRIVER, spec, emu, "submit-sent", "3")
    assert len(emu.ledger()["jobs"]) == 3
    with sqlite3.connect(spec.parent / "results" / spec.stem / "comfysweep.db") as db:
        db.execute("UPDATE attempts SET estimate_usd = 0")  # as migration 0005 leaves them
        db.execute("UPDATE ledger SET reserved_usd = 0")
    report = run(spec, emu, cap=0.80)
    assert report.stop_kind == "budget"
    assert "$0.76 now counted for jobs in flight, unknown" in "\n".join(report.messages)
    assert billed(emu) == pytest.approx(3 * ONE_JOB)
    assert len(emu.ledger()["jobs"]) == 3
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        books = db.ledger()
        charged = sum(a.charge_usd or 0.0 for a in db.attempts())
        reserved = sum(a.estimate_usd for a in db.attempts() if a.closed_at is None)
    assert books.spent_usd == pytest.approx(charged)
    assert books.reserved_usd == pytest.approx(reserved)
    assert books.committed_usd == pytest.approx(3 * ONE_JOB)


def test_the_summary_and_the_estimate_count_what_unknown_jobs_hold_reserved(
    tmp_path: Path,
) -> None:
    # Three unknown jobs hold $0.76 of a $1.00 cap. main's estimate said the cap 'covers every
    # job left' and summary.md said 'raise the cap: --max-cost 1.00', which submitted nothing.
    spec = write_spec(tmp_path)
    with emulator({"drop_after_create": {"rate": 1.0}}) as emu:
        run(spec, emu, cap=1.00)
        said = io.StringIO()
        report = run(spec, emu, cap=1.00, out=said)
        assert report.stop_kind == "budget"
        assert (
            "cap: $1.00, $0.00 spent, $0.76 reserved; covers 0 of 1 pending job(s), 1 left "
            "undone (`--max-cost 1.02` covers all)"
        ) in said.getvalue().splitlines()
        assert "- spent: $0.00 of a $1.00 cap, $0.76 reserved (jobs that may still be billed)" in (
            said.getvalue().splitlines()
        )
        (step,) = [s for s in report.account["next"] if s.startswith("raise the cap")]
        assert step.endswith(" --max-cost 1.02`"), step
        assert f"--max-cost {budget.raised_cap(0.0, 0.759375, ONE_JOB):.2f}" in str(
            report.stop_reason
        )
        report = run(spec, emu, cap=1.02)  # the cap summary.md names: every job goes
        assert report.counts["pending"] == 0
        assert report.stop_kind is None
        assert billed(emu) <= 1.02


@pytest.mark.parametrize("how", ["interrupted", "cancelled", "cancelled-downloading"])
def test_a_claimed_job_waiting_on_a_429_pause_is_held_back_by_a_stop(
    tmp_path: Path, emu: Emulator, how: str
) -> None:
    # main sent a claimed job once the 429 pause ended, after Ctrl-C said 'no new submits'; a
    # second Ctrl-C left it submitting, counted unknown (maybe billed) by the next run.
    import anyio.lowlevel

    from orchestrator.client import ModelApiClient
    from orchestrator.grid import iter_jobs
    from orchestrator.pacing import Pacer
    from orchestrator.results import ResultsFolder
    from orchestrator.runner import Runner

    loaded = load_spec(write_spec(tmp_path))
    model = get_model(loaded.model)
    estimate = budget.estimator(model, budget.Price(0.05, "second"))
    pacer = Pacer()
    client = ModelApiClient(emu.base_url, emu.token, pacer=pacer)
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        runner = Runner(db, client, ResultsFolder(tmp_path, model, "{key}"), estimate=estimate)
        claim = db.claim_within(estimate, cap=1.00)
        assert claim.row is not None
        assert db.ledger().reserved_usd == pytest.approx(ONE_JOB)
        if how == "cancelled-downloading":  # a finished job's download goes first
            runner._download_backlog = 1
        else:
            pacer.paused_until = time.monotonic() + 3600  # a 429 paused the client for an hour

        async def main() -> None:
            assert claim.row is not None
            runner._remote += 1
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(runner._submit, claim.row)
                    await anyio.lowlevel.checkpoint()  # it waits in the pause now
                    if how.startswith("cancelled"):  # a second Ctrl-C, an error ending the run
                        tasks.cancel_scope.cancel()
                    else:
                        runner.stop("interrupted", kind="interrupted")

        anyio.run(main)
        row = db.get(claim.row.key)
        assert row is not None
        assert row.state.value == "pending"
        assert db.ledger().reserved_usd == pytest.approx(0.0)
        assert [a.charge_usd for a in db.attempts()] == [0.0]
    assert client.requests_sent == 0
    assert emu.ledger()["jobs"] == []


@pytest.mark.parametrize("migrated", [False, True])
def test_retry_unknown_keeps_the_old_attempt_charged_while_the_new_one_is_reserved(
    tmp_path: Path, migrated: bool
) -> None:
    # Every submit is created and billed, its answer lost: three unknown jobs hold $0.76 of the
    # $0.80 cap. `retry --unknown` charges each its estimate (it may be billed) and the retried
    # jobs are reserved again, so nothing more fits. A store from before the ledger held them at
    # $0: main charged $0 on retry, and the resume billed 3 more jobs ($1.52 on a $0.80 cap).
    spec = write_spec(tmp_path)
    with emulator({"drop_after_create": {"rate": 1.0}}) as emu:
        run(spec, emu, cap=0.80)
        assert len(emu.ledger()["jobs"]) == 3
        if migrated:
            with sqlite3.connect(spec.parent / "results" / spec.stem / "comfysweep.db") as db:
                db.execute("UPDATE attempts SET estimate_usd = 0")  # as migration 0005 left them
                db.execute("UPDATE ledger SET reserved_usd = 0")
        assert retry_jobs(spec, ["unknown"]) == 3
        report = run(spec, emu, cap=0.80)
        assert report.stop_kind == "budget"
        assert billed(emu) == pytest.approx(3 * ONE_JOB)
        assert report.spent_usd == pytest.approx(billed(emu))  # charged: they may be billed
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        charges = [a.charge_usd for a in db.attempts()]
        assert db.ledger().spent_usd == pytest.approx(sum(c or 0.0 for c in charges))


def test_plan_prices_what_is_left_as_the_run_reserves_under_the_last_cap(tmp_path: Path) -> None:
    # The catalog down, the run priced its jobs with --price and stopped at --max-cost 0.60:
    # main's plan said the cost was unknown (no catalog price seen) and that there was no cap.
    from orchestrator.sweep import sweep_left

    spec = write_spec(tmp_path)
    with emulator({"error_200": {"rate": 1.0, "endpoints": ["catalog"]}}) as emu:
        report = run(spec, emu, cap=0.60, price="0.25/output")
        assert report.stop_kind == "budget"
        assert billed(emu) == pytest.approx(2 * ONE_JOB)
    left = sweep_left(spec)
    assert left is not None
    assert (left.pending, left.cost_usd, left.cap_usd) == (2, 0.50, 0.60)
    assert left.spent_usd == pytest.approx(report.spent_usd)
    result = CliRunner().invoke(cli, ["plan", str(spec)])
    assert "spent so far: $0.51" in result.output, result.output
    assert "`--max-cost 1.01` covers all" in result.output, result.output


def test_a_catalog_price_of_zero_is_no_price_under_a_cap(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog that says $0 for a model that bills: main reserved $0 a job, so every claim fit
    # and a $0.30 cap billed all four jobs in flight ($1.01). A $0 price the user did not give is
    # no price under a cap: nothing is submitted until --price gives one.
    from orchestrator import sweep
    from orchestrator.responses import ModelInfo

    async def free(client: Any, model_id: str) -> ModelInfo:
        return ModelInfo(model_id, 0.0, "second", {})

    monkeypatch.setattr(sweep, "_catalog", free)
    spec = write_spec(tmp_path, body=SPEC.replace("concurrency: 3", "concurrency: 4"))
    report = run(spec, emu, cap=0.30)
    assert report.stop_kind == "budget"
    assert "--price" in str(report.stop_reason)
    assert emu.ledger()["jobs"] == []
    report = run(spec, emu, cap=0.30, price="0.05/second")
    assert billed(emu) == pytest.approx(ONE_JOB)


@pytest.mark.parametrize(
    "point",
    ["submit-sent", "downloading", "journaled"],  # the points a free-running emulator reaches
)
def test_a_kill_at_any_point_leaves_books_that_balance_within_the_cap(
    tmp_path: Path, emu: Emulator, point: str
) -> None:
    capped = SPEC.replace("  concurrency", "  max_cost: 1.30\n  concurrency")
    spec = write_spec(tmp_path, body=capped)
    run_until_killed(DRIVER, spec, emu, point, "2")
    report = run(spec, emu, cap=1.30)
    assert report.stop_kind == "budget"
    assert billed(emu) <= 1.30
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        books, attempts = db.ledger(), db.attempts()
    assert books.in_flight == 0
    assert books.spent_usd == pytest.approx(sum(a.charge_usd or 0.0 for a in attempts))
    still_open = [a.estimate_usd for a in attempts if a.closed_at is None]
    assert books.reserved_usd == pytest.approx(sum(still_open))
    assert books.spent_usd + books.reserved_usd >= billed(emu) - 1e-9  # every billed dollar
    assert books.spent_usd + books.reserved_usd <= 1.30 + 1e-9


def test_automatic_retries_are_new_attempts_reserved_under_the_cap(tmp_path: Path) -> None:
    # Every job fails and is billed; `retries: 5` would send each again and again: the retries
    # are claimed like any job, so the third attempt past $0.80 never goes.
    body = SPEC.replace("concurrency: 3", "concurrency: 2\n  retries: 5")
    spec = write_spec(tmp_path, body=body)
    with emulator({"fail_string": {"rate": 1.0}}) as emu:
        report = run(spec, emu, cap=0.80)
        assert report.stop_kind == "budget"
        assert billed(emu) == pytest.approx(3 * ONE_JOB)
        assert spent(spec) == pytest.approx(billed(emu))
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        assert len(db.attempts()) == 3


@pytest.mark.parametrize("order", ["shuffle", "breadth", "grid"])
def test_every_order_reserves_the_estimate_of_the_job_it_claims(
    tmp_path: Path, emu: Emulator, order: str
) -> None:
    spec = write_spec(
        tmp_path, body=PRICED.replace("concurrency: 4", f"concurrency: 4\n  order: {order}")
    )
    report = run(spec, emu, cap=1.00)
    assert report.stop_kind == "budget"
    assert billed(emu) <= 1.00
    assert spent(spec) == pytest.approx(billed(emu))
    with Store.open(spec.parent / "results" / spec.stem / "comfysweep.db", readonly=True) as db:
        for attempt in db.attempts():
            assert attempt.charge_usd == pytest.approx(attempt.estimate_usd)  # its own price


def test_a_run_stopped_for_want_of_a_price_says_to_give_one_not_to_raise_the_cap(
    tmp_path: Path,
) -> None:
    # main's summary.md said 'raise the cap to go on: run --max-cost USD', which never helps.
    spec = write_spec(tmp_path)
    with emulator({"error_200": {"rate": 1.0, "endpoints": ["catalog"]}}) as emu:
        report = run(spec, emu, cap=0.60)
        assert emu.ledger()["jobs"] == []
    assert report.account is not None
    (step,) = [s for s in report.account["next"] if "go on" in s]
    assert step.startswith("give a price to go on (4 job(s) left, none priced): `comfysweep run")
    assert step.endswith(" --price 0.05/second`"), step


def test_the_estimate_before_paying_leaves_out_what_unknown_jobs_hold(tmp_path: Path) -> None:
    # Three unknown jobs hold $0.76 of a $1.00 cap: main asked 'Submit 5 of 8 job(s) for about
    # $1.00?' and 'covers 3 of 5', though the claim fits none of them.
    from orchestrator.estimate import forecast, question
    from orchestrator.grid import iter_jobs

    loaded = load_spec(write_spec(tmp_path, body=SPEC))
    model = get_model(loaded.model)
    price = budget.Price(0.05, "second")
    estimate = budget.estimator(model, price)
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        for _ in range(3):
            claim = db.claim_within(estimate, cap=1.00)
            assert claim.row is not None
            db.transition(claim.row.key, JobState.UNKNOWN)
        ahead = forecast(db, model, price, concurrency=3, cap_usd=1.00, job_seconds=None)
        assert db.claim_within(estimate, cap=1.00).refused == "budget"
    assert ahead.reserved_usd == pytest.approx(3 * ONE_JOB)
    assert (ahead.pending, ahead.covered, ahead.payable_usd) == (5, 0, 0.0)
    assert question(ahead) == "Submit 0 of 5 job(s) (the $1.00 cap stops there) for about $0.00?"


@pytest.mark.parametrize(
    ("order", "cap"), [("shuffle", 0.55), ("shuffle", 1.15), ("breadth", 0.50)]
)
def test_what_the_cap_covers_is_counted_in_the_order_claims_take(
    tmp_path: Path, order: str, cap: float
) -> None:
    # main counted the covered jobs in grid order while claims follow the run order: with jobs of
    # four prices it said 'covers 2' and the run submitted 1 (shuffle, $0.55), or 3 and 4.
    from orchestrator.estimate import forecast
    from orchestrator.grid import iter_jobs

    body = PRICED.replace("concurrency: 4", f"concurrency: 4\n  order: {order}")
    loaded = load_spec(write_spec(tmp_path, body=body))
    model = get_model(loaded.model)
    price = budget.Price(0.05, "second")
    estimate = budget.estimator(model, price)
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        ahead = forecast(db, model, price, concurrency=4, cap_usd=cap, job_seconds=None)
        claimed = []
        while (claim := db.claim_within(estimate, cap=cap)).row is not None:
            claimed.append(claim.estimate or 0.0)
    assert ahead.covered == len(claimed)
    assert ahead.payable_usd == pytest.approx(sum(claimed))


def test_a_success_without_outputs_is_charged_the_cost_it_reported(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job that succeeded without any output URL is failed, but billed: main dropped its
    # reported cost and charged the estimate ($0.25), so a dearer real charge went uncounted.
    import dataclasses

    from orchestrator.client import ModelApiClient, RemoteState

    real = ModelApiClient.result

    async def no_urls(self: ModelApiClient, request_id: str) -> Any:
        result = await real(self, request_id)
        if result.state is RemoteState.SUCCEEDED:
            return dataclasses.replace(result, urls=[], cost=0.40)
        return result

    monkeypatch.setattr(ModelApiClient, "result", no_urls)
    spec = write_spec(tmp_path)
    report = run(spec, emu)
    assert report.counts["failed"] == 4
    assert report.spent_usd == pytest.approx(4 * 0.40)


@pytest.mark.parametrize("order", ["shuffle", "breadth"])
def test_the_flag_the_budget_stop_names_finishes_a_sweep_of_mixed_prices(
    tmp_path: Path, emu: Emulator, order: str
) -> None:
    import re

    body = PRICED.replace("concurrency: 4", f"concurrency: 4\n  order: {order}")
    spec = write_spec(tmp_path, body=body)
    first = run(spec, emu, cap=0.90)
    assert first.stop_kind == "budget"
    named = re.search(r"--max-cost (\d+\.\d\d)$", str(first.stop_reason))
    assert named is not None, first.stop_reason
    assert first.account is not None
    (step,) = [s for s in first.account["next"] if s.startswith("raise the cap")]
    assert step.endswith(f" --max-cost {named.group(1)}`"), step  # the summary names the same
    second = run(spec, emu, cap=float(named.group(1)))
    assert second.complete, second.stop_reason
    assert billed(emu) <= float(named.group(1))


def test_the_estimate_counts_reservations_as_the_claim_does_when_the_price_changed(
    tmp_path: Path,
) -> None:
    # Two unknown jobs reserved at $0.05/second and one held at $0, the price now $0.10/second:
    # the claim keeps the two at $0.51 and prices the third at $0.51. main's estimate priced all
    # three anew ($1.52) and said the $1.60 cap covered none where the run sends one.
    from orchestrator.estimate import forecast
    from orchestrator.grid import iter_jobs

    loaded = load_spec(write_spec(tmp_path, body=SPEC))
    model = get_model(loaded.model)
    old, new = budget.Price(0.05, "second"), budget.Price(0.10, "second")
    with Store.open(tmp_path / "s.db") as db:
        db.sync_jobs(iter_jobs(loaded), loaded.model)
        for _ in range(2):
            claim = db.claim_within(budget.estimator(model, old), cap=1.60)
            assert claim.row is not None
            db.transition(claim.row.key, JobState.UNKNOWN)
        unpriced = db.claim(1)[0]  # claimed with no price: held at $0
        db.transition(unpriced.key, JobState.UNKNOWN)
        ahead = forecast(db, model, new, concurrency=3, cap_usd=1.60, job_seconds=None)
        db.reserve_unpriced(budget.estimator(model, new))
        taken = 0
        while db.claim_within(budget.estimator(model, new), cap=1.60).row is not None:
            taken += 1
    assert ahead.reserved_usd == pytest.approx(2 * ONE_JOB + 2 * ONE_JOB)
    assert ahead.covered == taken == 1
