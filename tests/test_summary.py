"""The morning account: summary.md (and summary.json) after a run, however it ended."""

from __future__ import annotations

import io
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.errors import StoreError
from orchestrator.retry import RetryPolicy
from orchestrator.summary import Invocation, RunTimes, account, markdown
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec

SUMMARIES = ("summary.md", "summary.json")
ONE_JOB = 0.05 * 81 / 16  # the emulator's price of one of these jobs


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the spec's folder, so the summary's commands name it as `grid.yaml`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNCOMFY_SERVERLESS_API_BASE", raising=False)


def run(emu: Emulator, **kwargs: Any) -> Any:
    kwargs.setdefault("overrides", Overrides(poll_interval=0.02))
    return run_sweep(Path("grid.yaml"), base_url=emu.base_url, token=emu.token, **kwargs)


def summary(tmp_path: Path, name: str = "grid") -> list[str]:
    return (tmp_path / "results" / name / "summary.md").read_text().splitlines()


def test_a_complete_run_writes_its_account(tmp_path: Path, emulator: Emulator) -> None:
    write_spec(tmp_path)
    report = run(emulator)
    assert report.complete
    lines = summary(tmp_path)
    assert lines[0] == "# grid: complete"
    assert "- jobs: 4 done" in lines
    assert "- spent: $1.01" in lines
    assert "- balance: $100.00 before, $98.99 after" in lines
    assert any(line.startswith("- wall time: ") and "4 job(s) finished" in line for line in lines)
    assert any(line.startswith("- queue time: ") for line in lines)
    assert any(line.startswith("- run time: ") for line in lines)
    assert "## Next" not in lines
    data = json.loads((tmp_path / "results" / "grid" / "summary.json").read_text())
    assert data == report.account
    assert data["counts"] == {"done": 4}
    ledger = emulator.ledger()
    assert data["balance_before_usd"] == 100.0
    assert data["balance_after_usd"] == ledger["accounts"]["account1"]["balance_usd"]
    assert data["spent_usd"] == pytest.approx(ledger["billed_usd"], abs=1e-4)
    # Every request counted: 4 submits, 4 downloads, the polls, the catalog and two balances.
    assert data["requests"] >= 4 + 4 + 4 + 1 + 2
    assert data["requests_per_job"] == pytest.approx(data["requests"] / 4, abs=0.01)
    per_job = f"{data['requests_per_job']:g}"
    assert f"- requests: {data['requests']}, {per_job} per finished job" in lines


def test_a_budget_stop_says_the_flag_that_goes_on(tmp_path: Path, emulator: Emulator) -> None:
    write_spec(tmp_path)
    budget = Overrides(concurrency=1, max_cost=ONE_JOB * 1.5, poll_interval=0.02)
    report = run(emulator, overrides=budget, store="s.db")
    assert report.stop_kind == "budget"
    lines = summary(tmp_path)
    assert lines[0] == "# grid: stopped (budget)"
    assert "- spent: $0.25 of a $0.38 cap" in lines
    # What was spent ($0.253) and the three jobs left ($0.759), rounded up to the cent.
    assert lines[-1] == (
        "- raise the cap to go on (3 job(s) left): "
        "`comfysweep run grid.yaml --store s.db --concurrency 1 --poll-interval 0.02 "
        "--max-cost 1.02`"
    )
    assert run(emulator, overrides=Overrides(max_cost=1.02), store="s.db").complete


def test_an_interrupted_run_says_how_to_resume(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_spec(tmp_path)
    real_submit = ModelApiClient.submit

    async def submit_then_ctrl_c(self: ModelApiClient, *args: Any) -> Any:
        submitted = await real_submit(self, *args)
        signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C once the first job is paid
        return submitted

    monkeypatch.setattr(ModelApiClient, "submit", submit_then_ctrl_c)
    report = run(
        emulator, handle_signals=True, overrides=Overrides(concurrency=1, poll_interval=0.02)
    )
    assert report.stop_kind == "interrupted"
    lines = summary(tmp_path)
    assert lines[0] == "# grid: stopped (interrupted)"
    assert "- jobs: 3 pending, 1 done" in lines
    assert lines[-2:] == [
        "",
        "- resume (3 job(s) left): `comfysweep run grid.yaml --concurrency 1 --poll-interval 0.02`",
    ]


def test_the_resume_command_keeps_the_cap_and_settings_the_run_was_given(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run given --max-cost that stops for another reason: the pasted resume stays capped."""
    write_spec(tmp_path)
    real_submit = ModelApiClient.submit

    async def submit_then_ctrl_c(self: ModelApiClient, *args: Any) -> Any:
        submitted = await real_submit(self, *args)
        signal.raise_signal(signal.SIGINT)
        return submitted

    monkeypatch.setattr(ModelApiClient, "submit", submit_then_ctrl_c)
    given = Overrides(concurrency=1, poll_interval=0.02, max_cost=40.0, notify="true; echo 'x y'")
    report = run(emulator, handle_signals=True, overrides=given, store="my store.db")
    assert report.stop_kind == "interrupted"
    assert summary(tmp_path)[-1] == (
        "- resume (3 job(s) left): `comfysweep run grid.yaml --store 'my store.db' "
        "--concurrency 1 --poll-interval 0.02 --max-cost 40.0 "
        "--notify 'true; echo '\"'\"'x y'\"'\"''`"
    )


def test_the_resume_command_never_reads_a_spec_name_as_a_flag() -> None:
    assert Invocation("-x.yaml").command("run") == "comfysweep run ./-x.yaml"
    assert Invocation("-x.yaml").command("retry", "--failed") == (
        "comfysweep retry ./-x.yaml --failed"
    )


def test_failed_jobs_are_counted_by_error_and_the_retry_is_said(tmp_path: Path) -> None:
    write_spec(tmp_path)
    profile = FaultProfile.parse({"seed": 7, "faults": {"fail_object": {"rate": 1.0}}})
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, faults=profile)) as emu:
        report = run(emu, retry=RetryPolicy(wait=False))
    assert report.counts["failed"] == 4
    lines = summary(tmp_path)
    errors = lines.index("## Top errors")
    assert lines[errors + 2].startswith("- 4 x ")
    assert lines[-1] == "- retry 4 failed: `comfysweep retry grid.yaml --failed`"


def test_an_error_after_the_start_still_writes_the_account(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_spec(tmp_path)

    async def broken(self: Any) -> Any:
        raise StoreError("store s.db: disk I/O error")

    monkeypatch.setattr("orchestrator.runner.Runner._submit_loop", lambda self, jobs: broken(self))
    with pytest.raises(StoreError, match="disk I/O error"):
        run(emulator)
    lines = summary(tmp_path)
    assert lines[0] == "# grid: stopped (error)"
    assert "stopped: store s.db: disk I/O error" in lines
    assert lines[-1] == "- resume (4 job(s) left): `comfysweep run grid.yaml --poll-interval 0.02`"


def test_the_resume_command_masks_a_store_password() -> None:
    how = Invocation("x.yaml", emulator=True, store="postgresql+psycopg://me:***@db/x")
    data = account(
        sweep="x",
        results_dir="r",
        counts={"pending": 2, "done": 1},
        elapsed=3600.0,
        spent_usd=0.5,
        cap_usd=None,
        times=RunTimes(finished=1),
        invocation=how,
    )
    assert data["jobs_per_hour"] == 1.0
    assert markdown(data).splitlines()[-1] == (
        "- resume (2 job(s) left): "
        "`comfysweep run x.yaml --emulator --store 'postgresql+psycopg://me:***@db/x'`"
    )
    from orchestrator.sweep import _shown_store

    assert _shown_store("postgresql+psycopg://me:secret@db/x") == "postgresql+psycopg://me:***@db/x"
    assert _shown_store(Path("s.db")) == "s.db"
    # libpq's query parameters hold passwords too
    assert _shown_store("postgresql+psycopg://me@db/x?password=secret&sslmode=require") == (
        "postgresql+psycopg://me@db/x?password=***&sslmode=require"
    )
    assert "hush" not in str(_shown_store("postgresql+psycopg://me@db/x?sslpassword=hush"))


def test_a_summary_symlink_is_replaced_never_written_through(
    tmp_path: Path, emulator: Emulator
) -> None:
    write_spec(tmp_path)
    folder = tmp_path / "results" / "grid"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "bashrc"
    elsewhere.write_text("keep me\n")
    (folder / "summary.md").symlink_to(elsewhere)
    assert run(emulator).complete
    assert elsewhere.read_text() == "keep me\n"
    assert not (folder / "summary.md").is_symlink()
    assert summary(tmp_path)[0] == "# grid: complete"


def test_a_summary_half_written_by_a_killed_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    from orchestrator.leftovers import HOST as _HOST
    from orchestrator.models import get_model
    from orchestrator.results import ResultsFolder

    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{key}")
    folder.prepare()
    dead = [tmp_path / f".{name}.{_HOST}~999999999~k1ll3d.tmp" for name in SUMMARIES]
    for leftover in dead:
        leftover.write_text("half an account")
    alive = tmp_path / f".summary.md.{_HOST}~{os.getpid()}~wr1t1ng.tmp"  # a runner beside us
    alive.write_text("being written")
    assert folder.prepare() == 2
    assert [p for p in dead if p.exists()] == []
    assert alive.exists()


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stdout_whose_reader_went_still_gets_summary_md_and_the_notifier(
    tmp_path: Path,
) -> None:
    """`comfysweep run ... | head`: the account's print fails; the file and the notifier do not."""
    from orchestrator.grid import iter_jobs
    from orchestrator.notify import Notifier
    from orchestrator.spec import load_spec
    from orchestrator.store import Store
    from orchestrator.summary import RunAccount

    spec = load_spec(write_spec(tmp_path))
    told = tmp_path / "told.json"
    with Store.open(tmp_path / "s.db") as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(spec), spec.model)
        notifier = Notifier.parse(f"cat > {told}")
        morning = RunAccount(db, Invocation("grid.yaml"), "grid", tmp_path, None, notifier)
        morning.stream = _ClosedPipe()
        morning.end(morning.data())
    assert (tmp_path / "summary.md").read_text().startswith("# grid: incomplete")
    assert json.loads(told.read_text())["counts"] == {"pending": 4}


def test_a_notify_command_holding_the_token_is_masked_in_the_resume_command(
    tmp_path: Path, emulator: Emulator
) -> None:
    write_spec(tmp_path)
    told = tmp_path / "told.json"
    command = f"cat > {told}; : {emulator.token}"
    report = run(emulator, overrides=Overrides(poll_interval=0.02, notify=command, max_cost=0.3))
    assert report.stop_kind == "budget"
    for name in ("summary.md", "summary.json"):
        text = (tmp_path / "results" / "grid" / name).read_text()
        assert emulator.token not in text
        assert ": ***" in text
    assert emulator.token not in told.read_text()


def test_a_notify_url_is_never_repeated_in_the_resume_command(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A Slack or Discord webhook's URL is its secret: summary.md never shows it."""
    write_spec(tmp_path)
    hook = "https://hooks.example.invalid/services/T000/B000/secretpart"
    report = run(emulator, overrides=Overrides(poll_interval=0.02, notify=hook, max_cost=0.3))
    assert report.stop_kind == "budget"
    for name in ("summary.md", "summary.json"):
        text = (tmp_path / "results" / "grid" / name).read_text()
        assert "secretpart" not in text
        assert "--max-cost" in text  # the other flags are still repeated


def test_the_top_errors_name_an_error_as_the_max_failures_stop_does(tmp_path: Path) -> None:
    write_spec(tmp_path)
    profile = FaultProfile.parse({"seed": 7, "faults": {"fail_object": {"rate": 1.0}}})
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, faults=profile)) as emu:
        overrides = Overrides(poll_interval=0.02, concurrency=1, max_failures="2")
        report = run(emu, retry=RetryPolicy(wait=False), overrides=overrides)
    assert report.stop_kind == "failures"
    named = (report.stop_reason or "").split("the commonest error (2x): ")[1]
    assert named.startswith("ExecutionError: ")
    lines = summary(tmp_path)
    errors = lines.index("## Top errors")
    assert lines[errors + 2] == f"- 2 x {named}"


def test_a_full_disk_says_on_stdout_that_summary_md_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.log is on the same full disk: the line that summary.md is missing goes to stdout."""
    import errno

    from orchestrator import summary as summary_module
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec
    from orchestrator.store import Store
    from orchestrator.summary import RunAccount

    def full(folder: Path, data: Any) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(summary_module, "write", full)
    spec = load_spec(write_spec(tmp_path))
    out = io.StringIO()
    with Store.open(tmp_path / "s.db") as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(spec), spec.model)
        morning = RunAccount(db, Invocation("grid.yaml"), "grid", tmp_path, None, None, out)
        morning.end(morning.data())
    lines = out.getvalue().splitlines()
    assert lines[1] == "# grid: incomplete"
    assert lines[-1] == (
        f"cannot write summary.md in {tmp_path}: No space left on device "
        "(the account above is the only copy)"
    )


def test_a_backtick_in_the_spec_path_does_not_end_the_commands_code_span() -> None:
    data = account(
        sweep="x",
        results_dir="r",
        counts={"pending": 2},
        elapsed=1.0,
        spent_usd=0.0,
        cap_usd=None,
        times=RunTimes(),
        invocation=Invocation("my `x` spec.yaml"),
    )
    assert data["next"] == ["resume (2 job(s) left): `` comfysweep run 'my `x` spec.yaml' ``"]
