"""Watching a sweep from any shell: status, show, failures, runs, while a run is live and after."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.models import get_model
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, RunReport, run_sweep
from orchestrator.views import group_failures, normalise_error, pace

from .postgres import fresh_schema
from .sweeps import SPEC, write_spec
from .waiting import PATIENCE, DrivenClock, store_events, wait_for

ROOT = Path(__file__).parents[1]
MODEL = get_model("community/wan-2-2/vace-fun")
FAULTS = {"fail_string": {"rate": 0.5}, "fail_list": {"rate": 0.5}}
ONE_JOB = 0.05 * 81 / 16  # the emulator's price of one of these jobs
HOST = socket.gethostname()
OLD_KEYS = ("sweep", "store", "results", "jobs", "counts", "orphaned", "spent_usd")
OLD_KEYS += ("reserved_usd", "cap_usd")


def emulator(faults: dict[str, Any] | None = None, **config: Any) -> Emulator:
    profile = FaultProfile.parse({"seed": 7, "faults": faults or {}})
    return Emulator(EmulatorConfig(**{"speed": 2000.0, "workers": 4, "faults": profile} | config))


def run(spec: Path, emu: Emulator, **overrides: Any) -> RunReport:
    settings = Overrides(**{"concurrency": 1, "poll_interval": 0.02} | overrides)
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=settings)


def cli_run(*args: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout.splitlines(), result.stderr


def store_of(tmp_path: Path) -> Path:
    return tmp_path / "results" / "grid" / "comfysweep.db"


def friendly(row: Any, name: str) -> Any:
    """A job's input by its friendly name."""
    return row.inputs[MODEL.raw_key(name)]


def rows(tmp_path: Path) -> list[Any]:
    with Store.open(store_of(tmp_path), readonly=True) as db:
        return list(db.jobs())


@pytest.fixture
def failed(tmp_path: Path) -> Path:
    """A finished sweep of 4 jobs where the fault dice failed some, two kinds of error."""
    spec = write_spec(tmp_path)
    with emulator(FAULTS) as emu:
        report = run(spec, emu)
    assert report.counts == {"done": 1, "failed": 3} | {
        s: 0 for s in report.counts if s not in ("done", "failed")
    }
    return spec


def test_status_after_a_run_counts_money_and_groups_failures(failed: Path, tmp_path: Path) -> None:
    code, lines, _ = cli_run("status", str(failed))
    assert code == 0
    assert lines == [
        "grid: 4 jobs, spent $1.01",
        "  done        1",
        "  failed      3",
        "no run live",
        "failures: 3 job(s), 2 kind(s) of error",
        "  2 failed: ExecutionError: VAE decode failed (emulated); NodeError: node 98 raised "
        "(emulated)",
        "  1 failed: Sampler failed: CUDA out of memory (emulated fault)",
    ]


def test_status_json_keeps_its_keys_and_adds_the_views(failed: Path) -> None:
    code, lines, _ = cli_run("status", str(failed), "--json")
    assert code == 0
    info = json.loads("\n".join(lines))
    assert list(info)[: len(OLD_KEYS)] == list(OLD_KEYS)
    assert info["counts"]["failed"] == 3
    assert info["live"] is False
    assert info["run"] is None
    assert info["left"] == 0
    assert info["eta_seconds"] == 0.0
    assert info["rate_per_minute"] > 0  # the last run's pace, over its own short life
    assert info["failures"][1] == {
        "message": "Sampler failed: CUDA out of memory (emulated fault)",
        "count": 1,
        "states": {"failed": 1},
    }
    assert info["failure_kinds"] == 2
    assert info["failed_jobs"] == 3


def test_status_works_inside_the_results_folder_and_says_when_there_is_none(
    failed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "results" / "grid")
    code, lines, _ = cli_run("status")
    assert (code, lines[0]) == (0, "grid: 4 jobs, spent $1.01")
    monkeypatch.chdir(tmp_path)
    code, lines, err = cli_run("status")
    assert code == 1
    assert err.splitlines() == [
        f"Error: no sweep here ({tmp_path} holds no comfysweep.db): give SPEC or --store, "
        "or run this inside a sweep's results folder"
    ]
    code, lines, _ = cli_run("status", "--store", str(store_of(tmp_path)))
    assert (code, lines[0]) == (0, "grid: 4 jobs, spent $1.01")


def test_status_from_another_thread_and_process_while_a_run_is_live(tmp_path: Path) -> None:
    """The run holds the store's lock and writes; status reads beside it, never blocked."""
    spec = write_spec(tmp_path)
    db_path = store_of(tmp_path)
    clock = DrivenClock(frozen=True)  # no job ends until released: the run stays live
    reports: list[RunReport] = []
    with emulator(workers=1, clock=clock) as emu:
        worker = threading.Thread(target=lambda: reports.append(run(spec, emu)))
        worker.start()
        try:
            wait_for(lambda: store_events(db_path, "queued") >= 1, "the first job queued")
            code, lines, _ = cli_run("status", str(spec))
            elsewhere = subprocess.run(
                [sys.executable, "-m", "orchestrator", "status", "--json"],
                cwd=db_path.parent,
                capture_output=True,
                text=True,
                timeout=PATIENCE,
            )
        finally:
            clock.release()
            worker.join()
    assert reports[0].complete
    first = rows(tmp_path)[0].key
    assert code == 0
    assert lines[0] == "grid: 4 jobs, spent $0.00, $0.25 reserved"
    assert re.fullmatch(
        rf"run 1 live: comfysweep run grid, pid {os.getpid()} on {HOST}, started \d+s ago",
        lines[-3],
    ), lines
    assert lines[-2] == "ETA unknown for 4 job(s) left (no job ended yet)"
    assert re.fullmatch(rf"oldest in flight: {first[:12]} (queued|running) for \d+s", lines[-1])
    assert elsewhere.returncode == 0, elsewhere.stderr
    info = json.loads(elsewhere.stdout)
    assert info["live"] is True
    assert (info["run"]["pid"], info["run"]["host"], info["run"]["state"]) == (
        os.getpid(),
        HOST,
        "live",
    )
    assert info["oldest_in_flight"]["key"] == first
    assert info["eta_note"] == "no job ended yet"


def test_status_says_when_the_cap_stops_the_sweep(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    with emulator() as emu:
        report = run(spec, emu, max_cost=ONE_JOB * 1.5)
    assert report.stop_kind == "budget"
    code, lines, _ = cli_run("status", str(spec))
    assert code == 0
    assert lines[:4] == [
        "grid: 4 jobs, spent $0.25 of the $0.38 cap",
        "  pending     3",
        "  done        1",
        "no run live",
    ]
    assert re.fullmatch(
        r"rate when it last ran: \d+\.\d jobs/min over \d+s; "
        r"the \$0\.38 cap stops the sweep with 3 job\(s\) never submitted",
        lines[4],
    ), lines
    info = json.loads(cli_run("status", str(spec), "--json")[1][0])
    assert (info["cap_pays_for"], info["eta_seconds"]) == (0, None)


def test_watch_prints_one_block_per_refresh(failed: Path) -> None:
    _, once, _ = cli_run("status", str(failed))
    code, lines, _ = cli_run("status", str(failed), "--watch", "0.01", "--max-refresh", "3")
    assert code == 0
    assert lines == [*once, "", *once, "", *once]


def test_watch_takes_seconds_and_says_so_when_given_the_spec(failed: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--watch", str(failed)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--watch': '{failed}' is not a number of seconds "
        "(put SPEC before --watch, or give --watch its seconds)"
    )


def test_watch_ends_on_ctrl_c_with_exit_0(failed: Path) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "status", str(failed), "--watch", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "grid: 4 jobs, spent $1.01\n"  # the first block
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=PATIENCE)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert "Traceback" not in err


def test_show_tells_a_job_whole_by_prefix(failed: Path, tmp_path: Path) -> None:
    done = next(r for r in rows(tmp_path) if r.state is JobState.DONE)
    with Store.open(store_of(tmp_path), readonly=True) as db:
        (attempt,) = db.attempts(done.key)
    code, lines, _ = cli_run("show", done.key[:6], str(failed))
    assert code == 0
    (path,) = [o["path"] for o in done.outputs]
    size = (tmp_path / "results" / "grid" / path).stat().st_size
    assert lines[:4] == [
        f"job {done.key}",
        f"  state      done, 1 attempt(s), grid index {done.index}",
        f"  request    {done.request_id}",
        "  cost       $0.253",
    ]
    assert "  prompt      a red fox in the snow" in lines
    assert f"  seed        {friendly(done, 'seed')}" in lines
    assert lines[lines.index("attempts") + 1] == (
        f"  #1 run 1, request {attempt.request_id}: estimate $0.253, cost $0.253, "
        "charged $0.253; succeeded"
    )
    moves = [line.split("  ", 2)[2] for line in lines if re.match(r"  \d{4}-\d\d-\d\d ", line)]
    # A fast job may go from queued straight to succeeded: no poll saw it running.
    ran = ["queued -> running", "running -> succeeded"] if "queued -> running" in moves else []
    assert moves == [
        "pending -> submitting  claimed",
        "submitting -> queued",
        *(ran or ["queued -> succeeded"]),
        "succeeded -> done",
    ]
    assert lines[-2:] == ["files", f"  {path}  {size:,} bytes  on disk"]
    (tmp_path / "results" / "grid" / path).unlink()
    code, lines, _ = cli_run("show", done.key, "--store", str(store_of(tmp_path)))
    assert lines[-1] == f"  {path}  {size:,} bytes  MISSING"
    view = json.loads(cli_run("show", done.key[:8], str(failed), "--json")[1][0])
    assert view["files"] == [
        {
            "path": path,
            "size": size,
            "exists": False,
            "size_on_disk": None,
            "sha256": view["files"][0]["sha256"],
        }
    ]
    assert [e["to"] for e in view["events"] if e["to"] != "running"] == [
        *("submitting", "queued", "succeeded", "done")
    ]
    assert view["attempts"][0]["charge_usd"] == pytest.approx(ONE_JOB)


def test_show_a_failed_job_says_its_error_and_rating(failed: Path, tmp_path: Path) -> None:
    bad = next(r for r in rows(tmp_path) if r.state is JobState.FAILED)
    with Store.open(store_of(tmp_path)) as db:
        db.rate(bad.key, "down")
    code, lines, _ = cli_run("show", bad.key[:10], str(failed))
    assert code == 0
    assert "  rating     down" in lines
    assert any(line.startswith("  error      ") and "(emulated" in line for line in lines)
    assert lines[-1] == "files: none"


class _Job:
    def __init__(self, key: str, index: int) -> None:
        self.key, self.index, self.model_id = key, index, "community/wan-2-2/vace-fun"
        self.inputs = {"seed": index}
        self.repeat = 0
        self.sources: dict[str, str] = {}


def test_show_refuses_a_short_unknown_or_ambiguous_key_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as db:
        keys = ["abcd1" + "0" * 59, "abcd2" + "0" * 59, "abcd3" + "0" * 59, "ffff" + "1" * 60]
        db.sync_jobs([_Job(k, i) for i, k in enumerate(keys)], "community/wan-2-2/vace-fun")
    cases = {
        "abc": "Error: job key prefix 'abc' is too short: give at least 4 characters",
        "0123": f"Error: no job '0123' in store {path}",
        "abcd%": f"Error: no job 'abcd%' in store {path}",
        "ABCD": "Error: job key prefix 'ABCD' matches 3 jobs (abcd100000000000, abcd200000000000, "
        "...): give more characters",
    }
    for given, said in cases.items():
        code, lines, err = cli_run("show", given, "--store", str(path))
        assert (code, lines, err.splitlines()) == (1, [], [said])
    code, lines, _ = cli_run("show", "abcd2", "--store", str(path))
    assert (code, lines[0]) == (0, f"job {keys[1]}")


def test_failures_lists_each_job_with_its_varying_inputs(failed: Path, tmp_path: Path) -> None:
    bad = [r for r in rows(tmp_path) if r.state is JobState.FAILED]
    texts = {
        r.key: "Sampler failed: CUDA out of memory (emulated fault)"
        if isinstance(r.error, str)
        else "ExecutionError: VAE decode failed (emulated); NodeError: node 98 raised (emulated)"
        for r in bad
    }
    expected = [
        f"{r.key[:12]}  failed    seed={friendly(r, 'seed')} steps={friendly(r, 'steps')}  "
        + texts[r.key]
        for r in bad
    ]
    code, lines, _ = cli_run("failures", str(failed))
    assert code == 0
    assert lines == [*expected, "3 job(s): 3 failed"]
    # Alike errors together, the commonest first; the same from inside the results folder.
    code, lines, _ = cli_run("failures", "--store", str(store_of(tmp_path)), "--sort", "error")
    common = [line for line in expected if "VAE" in line]
    assert lines == [*common, *[line for line in expected if line not in common], lines[-1]]
    records = [json.loads(line) for line in cli_run("failures", str(failed), "--json")[1]]
    assert [(r["key"], r["inputs"]) for r in records] == [
        (r.key, {"seed": friendly(r, "seed"), "steps": friendly(r, "steps")}) for r in bad
    ]
    code, lines, _ = cli_run("failures", str(failed), "--state", "lost")
    assert (code, lines) == (0, ["no lost jobs"])


def test_runs_lists_finished_and_died_runs(failed: Path, tmp_path: Path) -> None:
    db_path = store_of(tmp_path)
    # A run that dies without recording its end (as a SIGKILL would leave it).
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from orchestrator.store import Store\n"
            "db = Store.open(sys.argv[1])\n"
            "held = db.lock('comfysweep run grid')\n"
            "held.__enter__()\n"
            "print(os.getpid(), flush=True)\n"
            "os._exit(0)\n",
            str(db_path),
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        cwd=ROOT,
    )
    assert died.returncode == 0, died.stderr
    pid = int(died.stdout)
    code, lines, _ = cli_run("runs", str(failed))
    assert code == 0
    assert lines[0].split() == [
        *("run", "owner", "pid", "host", "version", "started", "(UTC)", "finished", "sent"),
        *("ended", "spent"),
    ]
    first, second = (line.split() for line in lines[1:])
    assert (first[:3], first[-3:]) == (["1", "comfysweep", "run"], ["4", "4", "$1.01"])
    assert second[:6] == ["2", "comfysweep", "run", "grid", str(pid), HOST]
    assert second[-4:] == ["died", "0", "0", "$0.00"]
    listed = json.loads(cli_run("runs", str(failed), "--json")[1][0])
    assert [(r["id"], r["state"], r["submitted"], r["finished"]) for r in listed] == [
        (1, "finished", 4, 4),
        (2, "died", 0, 0),
    ]
    status = cli_run("status", str(failed))[1]
    assert re.fullmatch(
        rf"no run live; run 2 died without finishing \(pid {pid} on {HOST}, started \d+s ago\)",
        status[3],
    ), status


def test_failures_that_differ_only_by_ids_and_measures_group_together() -> None:
    counted = [
        (JobState.FAILED, "download failed: request 8e5a8f0a-be9c-4818-863b-993ca17d4f42 gone", 2),
        (JobState.EXPIRED, "download failed: request 1fbbb30a-48f4-41e0-8541-0c5a654eae1c gone", 1),
        (JobState.FAILED, {"type": "Timeout", "message": "no answer after 30.5 s"}, 1),
        (JobState.FAILED, {"type": "Timeout", "message": "no answer after 61.2 s"}, 1),
        (JobState.FAILED, "HTTP 502 from the proxy", 1),
        (JobState.LOST, None, 1),
    ]
    groups, kinds = group_failures(counted, top=3)
    assert kinds == 4
    assert [g.as_dict() for g in groups] == [
        {
            "message": "download failed: request <id> gone",
            "count": 3,
            "states": {"expired": 1, "failed": 2},
        },
        {"message": "Timeout: no answer after <n> s", "count": 2, "states": {"failed": 2}},
        {"message": "(lost, no error recorded)", "count": 1, "states": {"lost": 1}},
    ]
    assert normalise_error("HTTP 502 from the proxy") == "HTTP 502 from the proxy"


def test_the_rate_is_a_recent_window_or_the_run_when_younger() -> None:
    end = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    times = [end - timedelta(seconds=s) for s in (5, 20, 50, 100, 700)]
    assert pace(times, end, window=600.0).per_minute == pytest.approx(4 * 60 / 600)
    young = pace(times, end, window=600.0, since=end - timedelta(seconds=60))
    assert (young.per_minute, young.window) == (pytest.approx(3.0), 60.0)
    assert pace([], end).per_minute is None


@pytest.mark.postgres
def test_status_and_runs_on_a_postgresql_store_live_then_died(tmp_path: Path) -> None:
    """A live PostgreSQL run is its session's advisory lock; a run whose session ended died."""
    spec = write_spec(tmp_path)
    clock = DrivenClock(frozen=True)
    reports: list[RunReport] = []
    with fresh_schema("v") as url, emulator(workers=1, clock=clock) as emu:
        worker = threading.Thread(
            target=lambda: reports.append(
                run_sweep(
                    spec,
                    store=url,
                    base_url=emu.base_url,
                    token=emu.token,
                    overrides=Overrides(concurrency=1, poll_interval=0.02),
                )
            )
        )
        worker.start()
        try:
            wait_for(lambda: emu.ledger()["jobs"], "the first job submitted")
            code, lines, _ = cli_run("status", str(spec), "--store", url)
        finally:
            clock.release()
            worker.join()
        assert reports[0].complete
        assert code == 0
        assert lines[0] == "grid: 4 jobs, spent $0.00, $0.25 reserved"
        assert lines[-3].startswith(f"run 1 live: comfysweep run grid, pid {os.getpid()} on ")
        died = subprocess.run(
            [sys.executable, "-c", DIE, url], capture_output=True, text=True, timeout=PATIENCE
        )
        assert died.returncode == 0, died.stderr
        listed = json.loads(cli_run("runs", "--store", url, "--json")[1][0])
        assert [(r["id"], r["state"], r["finished"]) for r in listed] == [
            (1, "finished", 4),
            (2, "died", 0),
        ]
        status = cli_run("status", "--store", url)[1]
        assert status[2].startswith("no run live; run 2 died without finishing")
        assert cli_run("show", rows_of(url)[0].key[:8], "--store", url)[1][0].startswith("job ")


DIE = (
    "import os, sys\n"
    "from orchestrator.store import Store\n"
    "db = Store.open(sys.argv[1])\n"
    "held = db.lock('comfysweep run grid')\n"
    "held.__enter__()\n"
    "os._exit(0)\n"
)


def rows_of(store: str) -> list[Any]:
    with Store.open(store, readonly=True) as db:
        return list(db.jobs())


def test_watch_on_a_terminal_redraws_in_place_until_ctrl_c(failed: Path) -> None:
    """On a terminal the block is redrawn where it stands (rich Live), and Ctrl-C ends it: 0."""
    import pty

    main, child = pty.openpty()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "status", str(failed), "--watch", "0.05"],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(child)
    seen = bytearray()

    def drawn_twice() -> bool:
        seen.extend(os.read(main, 65536))
        return seen.count(b"grid: 4 jobs, spent $1.01") >= 2

    try:
        wait_for(drawn_twice, "the status drawn twice", proc=watcher)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=PATIENCE) == 0
    finally:
        watcher.kill()
        os.close(main)
    assert b"Traceback" not in seen
    assert b"\x1b[" in seen  # cursor moves: redrawn in place, not printed again below


def test_the_rate_reads_only_the_latest_events_and_says_how_far_back(
    failed: Path, tmp_path: Path
) -> None:
    with Store.open(store_of(tmp_path), readonly=True) as db:
        events = sorted(
            (e for r in db.jobs() for e in db.events(r.key)), key=lambda e: e.id, reverse=True
        )
        ended = [e.at for e in events if e.to_state in (JobState.DONE, JobState.FAILED)]
        assert db.finish_times(scan=10_000) == (sorted(ended, reverse=True), None)
        times, horizon = db.finish_times(scan=3)
    assert horizon == events[2].at  # finishes older than this were not read: the window ends here
    assert times == sorted((e.at for e in events[:3] if e.at in ended), reverse=True)


def test_show_shortens_a_data_uri_and_keeps_every_other_input_whole(tmp_path: Path) -> None:
    (tmp_path / "start.png").write_bytes((ROOT / "sweeps" / "start.png").read_bytes())
    long_prompt = "a red fox in the snow, " * 8
    body = SPEC.replace("https://example.com/fox.png", "start.png").replace(
        '"a red fox in the snow"', f'"{long_prompt.strip()}"'
    )
    spec = write_spec(tmp_path, body=body)
    with emulator() as emu:
        assert run(spec, emu).complete
    job = rows(tmp_path)[0]
    uri = friendly(job, "image")
    assert uri.startswith("data:image/png;base64,")
    lines = cli_run("show", job.key, str(spec))[1]
    assert f"  image       start.png, sent as data:image/png;base64,… ({len(uri):,} chars)" in lines
    assert f"  prompt      {long_prompt.strip()}" in lines
