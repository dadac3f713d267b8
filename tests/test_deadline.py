"""`--until`: the run stops submitting in time for the jobs in flight to finish and download."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import prices
from orchestrator.cli import cli
from orchestrator.deadline import Deadline, parse_until
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import SpecError
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .waiting import store_events

TZ = timezone(timedelta(hours=2))
NOW = datetime(2026, 11, 30, 5, 0, tzinfo=TZ)
MODEL = "community/wan-2-2/vace-fun"


@pytest.mark.parametrize(
    ("text", "at", "label"),
    [
        ("06:30", NOW.replace(hour=6, minute=30), "06:30 today"),
        ("04:15", NOW.replace(hour=4, minute=15) + timedelta(days=1), "04:15 tomorrow"),
        ("05:00", NOW + timedelta(days=1), "05:00 tomorrow"),
        ("90m", NOW + timedelta(minutes=90), "06:30 (in 90m)"),
        ("8h", NOW + timedelta(hours=8), "13:00 (in 8h)"),
        ("1h30m", NOW + timedelta(minutes=90), "06:30 (in 1h30m)"),
        ("30h", NOW + timedelta(hours=30), "2026-12-01 11:00 (in 30h)"),
        ("2026-12-01T06:30+02:00", datetime(2026, 12, 1, 6, 30, tzinfo=TZ), "2026-12-01 06:30"),
    ],
)
def test_until_takes_a_time_of_day_a_duration_or_a_date(
    text: str, at: datetime, label: str
) -> None:
    deadline = parse_until(text, now=NOW)
    assert (deadline.at, deadline.label) == (at.timestamp(), label)


FORMS = (
    "give HH:MM (local time), a duration such as 90m, 8h or 1h30m, "
    "or a date and time such as 2026-12-01T06:30"
)
PAST = "2026-11-30T04:59+02:00"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (PAST, f"--until {PAST}: is in the past (it is now 2026-11-30 05:00)"),
        ("25:00", "--until 25:00: not a time of day (00:00 to 23:59)"),
        ("0m", "--until 0m: a duration must be longer than 0"),
        ("99999999h", "--until 99999999h: too far ahead"),
        ("99999999999h", "--until 99999999999h: too far ahead"),
        ("soon", f"--until 'soon': {FORMS}"),
        ("", f"--until '': {FORMS}"),
    ],
)
def test_a_bad_until_is_one_line(text: str, line: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_until(text, now=NOW)
    assert str(caught.value) == line


def test_until_in_the_past_stops_the_cli_before_anything_is_written(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(
        cli, ["run", str(spec), "--emulator", "--until", "2020-01-01T00:00"]
    )
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert re.fullmatch(r"Error: --until 2020-01-01T00:00: is in the past \(it is now .+\)", line)
    assert not (tmp_path / "results").exists()


def test_a_deadline_stops_submitting_once_a_job_would_end_after_it(tmp_path: Path) -> None:
    """Time moves 100 s per finished job; the deadline is 250 s away: three jobs fit, not four."""
    spec = write_spec(tmp_path)
    store = tmp_path / "results" / "grid" / "comfysweep.db"
    start = 1_000_000.0

    def clock() -> float:
        return start + 100 * store_events(store, "succeeded")

    deadline = Deadline(start + 250, "06:30 today", clock)
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(concurrency=1, poll_interval=0.01),
            until=deadline,
        )
        billed = len(emu.ledger()["jobs"])
    assert (billed, report.counts["done"], report.counts["pending"]) == (3, 3, 1)
    assert report.stop_kind == "deadline"
    assert report.messages[0] == (
        "running until 06:30 today: submitting stops in time for the jobs in flight to finish "
        "and download"
    )
    # The clock is at +300 s once the third job is in (the jobs' own times are milliseconds):
    # the deadline has passed. "is near" is said while it is still ahead (the next test).
    assert report.stop_reason == (
        "stopped submitting: the deadline 06:30 today has passed; the jobs in flight finish, "
        "run again to continue"
    )


def test_before_any_job_ends_the_last_runs_median_decides(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        prices.remember_duration(MODEL, 50.0, api_base=emu.base_url)
        deadline = Deadline(1060.0, "06:30 today", lambda: 1000.0)  # 60 s left; 50 s x 1.5 needed
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(), until=deadline
        )
        billed = len(emu.ledger()["jobs"])
    assert (billed, report.counts["pending"]) == (0, 4)
    assert report.stop_reason == (
        "stopped submitting: the deadline 06:30 today is near (a new job needs about 75 s to "
        "finish and download); the jobs in flight finish, run again to continue"
    )


def test_with_nothing_known_the_first_wave_goes_out_and_the_first_to_end_tells(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path)  # concurrency 3, four jobs
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        deadline = Deadline(1000.0, "06:30 today", lambda: 999.999)  # 1 ms left: any job is late
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, until=deadline)
        billed = len(emu.ledger()["jobs"])
    assert (billed, report.counts["done"], report.counts["pending"]) == (3, 3, 1)
    assert report.stop_kind == "deadline"


def test_a_deadline_already_passed_when_submitting_begins_submits_nothing(
    tmp_path: Path,
) -> None:
    """A long sync (or store wait) ate the time: not even the first wave goes out."""
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        deadline = Deadline(1000.0, "06:30 today", lambda: 1000.5)
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, until=deadline)
        billed = len(emu.ledger()["jobs"])
    assert (billed, report.counts["pending"]) == (0, 4)
    assert report.stop_kind == "deadline"
    assert report.stop_reason == (
        "stopped submitting: the deadline 06:30 today has passed; the jobs in flight finish, "
        "run again to continue"
    )


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Europe/Berlin, which moves to summer time at 02:00 on 2026-03-29."""
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("berlin")
@pytest.mark.parametrize(
    ("text", "utc", "label"),
    [
        ("06:30", datetime(2026, 3, 29, 4, 30, tzinfo=UTC), "06:30 tomorrow"),
        ("8h", datetime(2026, 3, 29, 5, 0, tzinfo=UTC), "2026-03-29 07:00 (in 8h)"),
    ],
)
def test_until_across_a_summer_time_change_means_the_wall_clock(
    text: str, utc: datetime, label: str
) -> None:
    """The night the clocks go forward, `--until 06:30` is 06:30 summer time, not 07:30."""
    now = datetime(2026, 3, 28, 22, 0).astimezone()  # 22:00 winter time (+01:00)
    deadline = parse_until(text, now=now)
    assert (deadline.at, deadline.label) == (utc.timestamp(), label)
