"""Say it before paying: what is left, its cost and wall time, the cap, and the question."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator import cli as cli_module
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.estimate import Declined, forecast, forecast_lines, question
from orchestrator.grid import iter_jobs
from orchestrator.models import get_model
from orchestrator.prices import Price, remember_duration
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import SPEC, write_spec

WAN = "community/wan-2-2/vace-fun"
# Two frame counts: a job costs 0.05 x 81/16 = $0.253 or 0.05 x 141/16 = $0.441.
MIXED = SPEC.replace("  frames: 81\n", "").replace(
    "axes:\n  seed: [1, 2]\n", "axes:\n  frames: [81, 141]\n  seed: [1, 2]\n"
)
PRICE = Price(0.05, "second", "2026-11-30T00:00:00+00:00")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def synced(tmp_path: Path, body: str = MIXED) -> Store:
    spec = load_spec(write_spec(tmp_path, body=body))
    db = Store.open(tmp_path / "s.db")
    db.sync_jobs(iter_jobs(spec), spec.model)
    return db


def test_forecast_prices_each_job_from_its_frames_and_says_what_the_cap_cuts(
    tmp_path: Path,
) -> None:
    db = synced(tmp_path)
    with db:
        assert len(list(db.jobs())) == 8  # 2 frames x 2 seeds x 2 steps
        ahead = forecast(db, get_model(WAN), PRICE, concurrency=3, cap_usd=1.00, job_seconds=20.0)
    assert forecast_lines(ahead) == [
        "left: 8 of 8 job(s) (8 pending); 0 done",
        "estimated cost: $2.78 ($0.25 to $0.44 a job)",
        "estimated wall time: 0m20s at concurrency 3 (20 s a job, 1 round(s))",
        "cap: $1.00, $0.00 spent; covers 3 of 8 pending job(s), 5 left undone "
        "(`--max-cost 2.78` covers all)",
    ]
    # What the 3 jobs the cap covers cost, in claim order (breadth): $0.253, $0.253, $0.441.
    assert ahead.payable_usd == pytest.approx(2 * 0.253125 + 0.440625)
    assert question(ahead) == "Submit 3 of 8 job(s) (the $1.00 cap stops there) for about $0.95?"


def test_forecast_counts_in_flight_jobs_and_what_was_spent(tmp_path: Path) -> None:
    db = synced(tmp_path, SPEC)
    with db, db.lock(owner="test"):
        first, second = db.claim(2)
        db.transition(first.key, JobState.QUEUED, request_id="req-1")
        db.transition(second.key, JobState.QUEUED, request_id="req-2")
        db.transition(second.key, JobState.SUCCEEDED, cost=0.25, result={"urls": []})
        ahead = forecast(db, get_model(WAN), PRICE, concurrency=8, cap_usd=None, job_seconds=None)
    assert forecast_lines(ahead) == [
        "left: 4 of 4 job(s) (2 pending, 2 in flight, resumed); 0 done",
        "estimated cost: $0.76 ($0.25 a job)",
        "estimated wall time: unknown (no run of this model seen yet)",
        "cap: none (`--max-cost USD` sets one)",
    ]
    assert ahead.spent_usd == 0.25


def test_forecast_without_a_price_says_so(tmp_path: Path) -> None:
    db = synced(tmp_path, SPEC)
    with db:
        ahead = forecast(
            db, get_model(WAN), None, concurrency=2, cap_usd=2.0, job_seconds=None,
            price_note="no catalog price seen yet for x",
        )  # fmt: skip
    assert forecast_lines(ahead)[1:] == [
        "estimated cost: unknown (no catalog price seen yet for x)",
        "estimated wall time: unknown (no run of this model seen yet)",
        "cap: $2.00, $0.00 spent; how many jobs it covers is unknown without a price",
    ]


def run(spec: Path, emu: Emulator, **kwargs: Any) -> Any:
    kwargs.setdefault("overrides", Overrides(poll_interval=0.02))
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, **kwargs)


def test_a_run_says_the_estimate_before_the_first_submit(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path, body=MIXED)
    remember_duration(WAN, 30.0, api_base=emulator.base_url)
    stream = _Stream(emulator)
    report = run(spec, emulator, out=stream, overrides=Overrides(poll_interval=0.02))
    assert report.complete
    assert stream.lines[:4] == [
        "left: 8 of 8 job(s) (8 pending); 0 done",
        "estimated cost: $2.78 ($0.25 to $0.44 a job)",
        "estimated wall time: 1m30s at concurrency 3 (30 s a job, 3 round(s))",
        "cap: none (`--max-cost USD` sets one)",
    ]
    assert stream.jobs_when_said == [0, 0, 0, 0]  # nothing submitted before it was said


class _Stream:
    """A stream that records, with each line, how many jobs the emulator had seen by then."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.lines: list[str] = []
        self.jobs_when_said: list[int] = []
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line and len(self.lines) < 4:
                self.jobs_when_said.append(len(self.emulator.ledger()["jobs"]))
            self.lines.append(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_declining_submits_nothing_and_pays_nothing(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path, body=MIXED)
    asked: list[str] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False

    with pytest.raises(Declined, match="not confirmed: nothing submitted, nothing paid"):
        run(spec, emulator, confirm=no, overrides=Overrides(poll_interval=0.02, confirm_above=1.0))
    assert asked == ["Submit 8 job(s) for about $2.78?"]
    assert emulator.ledger()["jobs"] == []
    assert emulator.ledger()["billed_usd"] == 0


def test_below_the_threshold_or_with_yes_nothing_is_asked(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path, body=MIXED)

    def never(question: str) -> bool:
        raise AssertionError(f"asked {question!r}")

    assert run(spec, emulator, confirm=never, yes=True, overrides=Overrides(confirm_above=1.0))
    assert len(emulator.ledger()["jobs"]) == 8
    spec2 = write_spec(tmp_path, name="other", body=MIXED)
    assert run(spec2, emulator, confirm=never).complete  # $3.03 < the default $5.00


def cli_env(emulator: Emulator) -> dict[str, str]:
    return {"RUNCOMFY_MODEL_API_BASE": emulator.base_url, "RUNCOMFY_API_TOKEN": emulator.token}


def test_cli_asks_on_a_terminal_and_declining_exits_nonzero(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, body=MIXED)
    monkeypatch.setattr(cli_module, "_terminal", lambda: True)
    result = CliRunner().invoke(
        cli, ["run", str(spec), "--confirm-above", "1"], input="n\n", env=cli_env(emulator)
    )
    assert result.exit_code == 1, result.output
    assert "Submit 8 job(s) for about $2.78? [y/N]" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: not confirmed: nothing submitted, nothing paid (`--yes` skips the question; "
        "`--confirm-above USD` raises its threshold, now $1.00)"
    )
    assert emulator.ledger()["jobs"] == []


def test_cli_never_asks_without_a_terminal(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path, body=MIXED)
    result = CliRunner().invoke(
        cli, ["run", str(spec), "--confirm-above", "1"], env=cli_env(emulator)
    )
    assert result.exit_code == 0, result.output
    assert "estimated cost: $2.78 ($0.25 to $0.44 a job)" in result.stdout.splitlines()
    assert "[y/N]" not in result.output
    assert len(emulator.ledger()["jobs"]) == 8


def test_plan_shows_what_is_left_once_the_store_exists(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path, body=MIXED)
    price = json.loads(CliRunner().invoke(cli, ["plan", str(spec), "--json"]).stdout)
    assert price["left"] is None  # no store yet: the whole spec
    one_job = 0.05 * 81 / 16
    report = run(spec, emulator, overrides=Overrides(max_cost=one_job * 1.5, concurrency=1))
    assert report.counts["done"] == 1
    result = CliRunner().invoke(cli, ["plan", str(spec), "--json"])
    left = json.loads(result.stdout)["left"]
    assert left["done"] == 1
    assert left["left"] == 7
    assert left["spent_usd"] == pytest.approx(one_job, abs=1e-4)
    assert json.loads(result.stdout)["jobs"] == 8  # the whole spec's fields stay
    text = CliRunner().invoke(cli, ["plan", str(spec)]).stdout
    assert "spent so far: $0.25" in text
    assert "left: 7 of 8 job(s) (7 pending); 1 done" in text


def test_plan_with_a_store_not_created_yet_shows_the_whole_spec(tmp_path: Path) -> None:
    """`--store new.db` before the first run: the plan, not "no store at new.db"."""
    spec = write_spec(tmp_path, body=MIXED)
    new = tmp_path / "new.db"
    result = CliRunner().invoke(cli, ["plan", str(spec), "--json", "--store", str(new)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["left"] is None
    assert not new.exists()  # a plan creates nothing
    status = CliRunner().invoke(cli, ["status", str(spec), "--store", str(new)])
    assert status.exit_code == 1
    assert status.output.splitlines() == [
        f"Error: {new}: no store yet; `comfysweep run` creates it"
    ]


def test_a_price_in_an_unknown_unit_is_not_said_to_be_missing(tmp_path: Path) -> None:
    db = synced(tmp_path, SPEC)
    with db:
        ahead = forecast(
            db, get_model(WAN), Price(0.3, "gpu-hour", "2026-11-30T00:00:00+00:00"),
            concurrency=2, cap_usd=None, job_seconds=None,
            price_note="no catalog price seen yet for x",
        )  # fmt: skip
    assert forecast_lines(ahead)[1] == (
        "estimated cost: unknown (a price of $0.3 per gpu-hour prices none of these jobs)"
    )
