"""What a new user hit following the README, each pinned by a test."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.grid import iter_jobs
from orchestrator.progress import Snapshot
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store

from .reportdata import sample_videos, synthetic_sweep
from .sweeps import write_spec
from .test_report_browser import browser, until

__all__ = ["browser"]  # the module's fixture, shared


def test_a_bulk_cancel_does_not_count_in_the_rate_status_shows(tmp_path: Path) -> None:
    # `cancel --where` on 42 pending jobs made status say 286 jobs/min and an ETA of 12 s for a
    # run doing 60 a minute: a cancelled job is no work finished.
    spec = load_spec(write_spec(tmp_path))
    with Store.open(tmp_path / "s.db") as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(spec), spec.model)
        keys = [row.key for row in db.jobs()]
        db.cancel_pending(keys[:2], request=False)
        assert db.finish_times(scan=1000) == ([], None)


def test_a_bulk_cancel_does_not_count_in_the_rate_a_run_prints() -> None:
    snapshot = Snapshot(counts={"pending": 60, "done": 10})
    snapshot.worked_at_start = snapshot.worked
    snapshot.counts = {"pending": 18, "done": 10, "cancelled": 42}
    assert snapshot.per_minute() == 0.0
    assert snapshot.eta_seconds() is None
    assert snapshot.finished == 52  # the progress line still counts them as finished
    snapshot.counts = {"pending": 17, "done": 11, "cancelled": 42}
    assert snapshot.per_minute() > 0.0
    assert JobState.CANCELLED.value == "cancelled"


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromedriver")
def test_a_seed_on_the_y_axis_reads_as_one_number(tmp_path: Path, browser: Any) -> None:
    # The cfg-steps-grid report put seed 112046624 on two lines, "11204" over "6624".
    folder = tmp_path / "seeds"
    shape = {"seed": [1120466624, 2481976026], "cfg": [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]}
    synthetic_sweep(folder, shape, sample_videos(tmp_path / "samples", 1))
    result = CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")])
    assert result.exit_code == 0, result.output
    browser.set_window_size(900, 800)
    browser.get((folder / "report.html").as_uri() + "#x=cfg&y=seed")
    until(browser, "document.querySelectorAll('th.ylabel .label').length === 2", "2 row labels")
    lines = browser.execute_script(
        "return Array.from(document.querySelectorAll('th.ylabel .label')).map(function (e) {"
        " var r = document.createRange(); r.selectNodeContents(e);"
        " return new Set(Array.from(r.getClientRects()).map(function (c) {"
        "  return Math.round(c.top); })).size; })"
    )
    assert lines == [1, 1]


def test_a_filter_takes_a_number_as_the_spec_wrote_it(tmp_path: Path) -> None:
    # cfg-steps-grid.yaml says `shift: [5, 8]`; `report --video --filter shift=5` said "no job
    # has that value (it has 5.0, 8.0)".
    folder = tmp_path / "shifts"
    shape = {"seed": [1, 2], "steps": [4, 8], "shift": [5.0, 8.0]}
    synthetic_sweep(folder, shape, sample_videos(tmp_path / "samples", 1))
    store = str(folder / "comfysweep.db")
    ok = CliRunner().invoke(cli, ["report", "--store", store, "--filter", "shift=5"])
    assert ok.exit_code == 0, ok.output
    assert '"shift":"5.0"' in (folder / "report.html").read_text().replace(" ", "")
    bad = CliRunner().invoke(cli, ["report", "--store", store, "--filter", "shift=6"])
    assert bad.exit_code == 1
    assert bad.stderr == "Error: --filter shift=6: no job has that value (it has 5.0, 8.0)\n"


def test_a_mosaic_cell_without_a_job_says_no_job_as_the_page_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page marks a combination the sweep has not got "no job"; report --video said "empty".
    from orchestrator.report import mosaic

    folder = tmp_path / "holes"
    jobs = synthetic_sweep(
        folder, {"seed": [1, 2], "steps": [4, 8]}, sample_videos(tmp_path / "samples", 1)
    )
    seen: list[str] = []
    monkeypatch.setattr(
        mosaic,
        "write_mosaic",
        lambda out, rows, **_: seen.extend(c.state for row in rows for c in row),
    )
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(folder / "comfysweep.db")) as raw, raw:
        raw.execute("DELETE FROM jobs WHERE key = ?", (jobs[-1].key,))
    store = str(folder / "comfysweep.db")
    result = CliRunner().invoke(cli, ["report", "--store", store, "--video"])
    assert result.exit_code == 0, result.output
    assert sorted(seen) == ["done", "done", "done", "no job"]


def test_the_page_names_its_own_icon_so_the_served_page_logs_no_404(tmp_path: Path) -> None:
    # `report --serve` in Chromium: "favicon.ico - Failed to load resource: 404" in the console.
    folder = tmp_path / "icon"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 1))
    result = CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")])
    assert result.exit_code == 0, result.output
    head = (folder / "report.html").read_text().split("</head>")[0]
    assert '<link rel="icon" href="data:,">' in head
