"""The kill loop: a 300-job sweep under seeded faults, SIGKILLed at random moments, then audited.

The books that must balance afterwards: the emulator's ledger (what was created and billed), the
store (what the runner believes), and the results folder (what is on disk). Nothing may be created
twice, every billed output is on disk with the manifest's size and sha256 (or recorded expired
with a reason), and every ``unknown`` job is explained by a kill or a fault.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.canonical import input_sha256
from orchestrator.store import JobRow, JobState, Store

from ..waiting import PATIENCE, store_events, wait_for
from .harness import FIGURES_KEY, TOKEN, Figures, emulator_process, run_env, start_run

# Generous: a loaded machine may take several times the minute or two an idle one does.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

SEED = 20261125
KILLS = 18
# Just above the sweep's price (300 jobs x $0.253125 = $75.94): the budget is on, and every
# kill, fault and unknown goes through its books; the cap itself never has to stop the loop.
CAP = 76.00
STEPS = list(range(2, 27))  # 25 values x 3 seeds x 4 cfg = 300 jobs, 3 distinct videos
SPEC = f"""\
name: chaos
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a lighthouse in a storm"
  image: https://example.com/lighthouse.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  seed: [1, 2, 3]
  steps: {STEPS}
  cfg: [1.0, 2.0, 3.0, 4.0]
run:
  concurrency: 16
  downloads: 4
  max_cost: {CAP:.2f}
  output: {{output}}
  poll_interval: 0.02
  rate: 1000
"""
FAULTS: dict[str, Any] = {
    "seed": SEED,
    "faults": {
        "rate_limit": {"rate": 0.04, "retry_after": 0},
        "http_500": {"rate": 0.015},
        "http_503_bare": {"rate": 0.01},
        "proxy_html": {"rate": 0.01},
        "drop_after_create": {"rate": 0.03},
        "fail_string": {"rate": 0.02},
        "fail_object": {"rate": 0.02},
        "early_expiry": {"rate": 0.02},
        "truncated_download": {"rate": 0.04},
        # Slow but within the client's timeout (a timed-out submit is one more unknown); slow
        # submits widen the window in which a kill catches a job created but not yet recorded.
        "slow": {"rate": 0.2, "delay": 0.3, "endpoints": ["submit", "download"]},
        "spell_processing": {"rate": 0.1},
        "spell_completed": {"rate": 0.1},
    },
}
_FINAL = {"done", "failed", "unknown", "expired"}
_NOT_OURS = {"comfysweep.db", "comfysweep.db-wal", "comfysweep.db-shm", "comfysweep.db.lock"}
_CAUSES = [
    ("kill", re.compile(r"interrupted while submitting")),
    ("5xx", re.compile(r"HTTP 5\d\d")),
    ("dropped", re.compile(r"RemoteProtocolError|ReadError|disconnected", re.I)),
    ("timeout", re.compile(r"Timeout", re.I)),
]


def test_kill_loop_pays_once_and_loses_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    spec = tmp_path / "chaos.yaml"
    spec.write_text(SPEC.format(output=tmp_path / "results"))
    folder = tmp_path / "results" / "chaos"
    figures = Figures()
    cut: set[str] = set()  # jobs a kill caught between "submitting" and the request id
    printed = tmp_path / "printed.txt"
    with emulator_process(tmp_path / "emulator", FAULTS, speed=250, workers=4) as emu:
        env = run_env(emu.base_url)
        with printed.open("w") as out:
            # Kill at random moments while work remains: each run is killed after an event
            # seen in its store (a random number of state changes, so often mid-submit, or of
            # jobs done, so mid-stride), plus a random instant; never before the run has
            # started, however slow the machine. A run that ends by itself first (a fatal
            # stop) is simply run again.
            while figures.kills < KILLS:
                to_state = rng.choice([None, "done"])
                progress = rng.randint(1, 30) if to_state is None else rng.randint(1, 6)
                event = f"{progress} state changes" + (f" to {to_state}" if to_state else "")
                target = store_events(folder / "comfysweep.db", to_state) + progress
                proc = start_run(spec, env, out)
                figures.runs += 1
                moved = functools.partial(_ended_or_moved, proc, folder, to_state, target)
                wait_for(moved, f"run {figures.runs} making {event}")
                if proc.poll() is None:
                    time.sleep(rng.uniform(0.0, 0.3))  # a random moment after the event
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    figures.kills += 1
                    cut |= _keys(folder, JobState.SUBMITTING)
                    figures.in_flight_at_kills += len(_keys(folder, *_UNFINISHED[1:]))
                else:
                    proc.wait()
                    assert proc.returncode in (0, 1, 3), printed.read_text()[-3000:]
                    assert _keys(folder, *_UNFINISHED), "the sweep ended before the kills did"
            # The final runs: each exits by itself (a fatal stop such as a 429 streak ends one
            # early, so run again, as a user would, until nothing is left to do).
            for _ in range(4):
                proc = start_run(spec, env, out)
                figures.runs += 1
                assert proc.wait(timeout=PATIENCE * 3) in (0, 1, 3)
                if not _keys(folder, *_UNFINISHED):
                    break
        ledger = emu.ledger()
    figures.submits_cut_by_kills = len(cut)
    text = printed.read_text()
    assert "Traceback" not in text, text[text.find("Traceback") - 300 :][:4000]
    figures.seconds = time.monotonic() - started
    figures.faults_fired = {k: v for k, v in ledger["faults_fired"].items() if v}
    _audit(folder, ledger, figures, cut)
    figures.dump(tmp_path / "chaos-figures.json")
    request.config.stash[FIGURES_KEY] = figures
    print("\n" + json.dumps(figures.__dict__, indent=2, sort_keys=True))
    _assert_no_secret(tmp_path, printed)


_UNFINISHED = (
    JobState.PENDING,
    JobState.SUBMITTING,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
)


def _ended_or_moved(
    proc: subprocess.Popen[str], folder: Path, to_state: str | None, events: int
) -> bool:
    """The run has ended, or its store holds ``events`` state changes (into ``to_state``)."""
    return proc.poll() is not None or store_events(folder / "comfysweep.db", to_state) >= events


def _keys(folder: Path, *states: JobState) -> set[str]:
    db_path = folder / "comfysweep.db"
    if not db_path.exists():
        return set()
    with Store.open(db_path, readonly=True) as db:
        return {row.key for row in db.jobs(states)}


def _audit(folder: Path, ledger: dict[str, Any], figures: Figures, cut: set[str]) -> None:
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        rows = list(db.jobs())
        unknown_details = {
            row.key: _last_detail(db.events(row.key), "unknown")
            for row in rows
            if row.state is JobState.UNKNOWN
        }
        expired_details = {
            row.key: _last_detail(db.events(row.key), "expired")
            for row in rows
            if row.state is JobState.EXPIRED
        }
        figures.states = {k: v for k, v in db.counts().items() if v}
    figures.jobs = len(rows)
    assert figures.jobs == 300
    assert set(figures.states) <= _FINAL, figures.states

    # 1. Nothing was created twice on the remote side.
    by_input = ledger["submissions_by_input"]
    figures.duplicates = sum(n - 1 for n in by_input.values())
    assert figures.duplicates == 0

    # 2. The ledger and the store tell the same story, job by job.
    by_sha = {input_sha256(row.inputs): row for row in rows}
    assert len(by_sha) == len(rows)
    remote = {job["request_id"]: job for job in ledger["jobs"]}
    for row in rows:
        if row.request_id is not None:
            assert row.request_id in remote, row
            assert remote[row.request_id]["input_sha256"] == input_sha256(row.inputs)
    for job in ledger["jobs"]:
        row = by_sha[job["input_sha256"]]
        assert row.request_id in (job["request_id"], None), (row, job)
        if row.request_id is None:
            assert row.state is JobState.UNKNOWN, (row, job)  # created, but its answer was lost

    # 3. Every unknown job is explained by a kill during its submit or by a fault.
    causes: Counter[str] = Counter()
    for key, detail in unknown_details.items():
        cause = next((name for name, rx in _CAUSES if detail and rx.search(detail)), None)
        assert cause is not None, f"unknown job {key[:10]} without a known cause: {detail!r}"
        causes[cause] += 1
    figures.unknown_by_cause = dict(causes)
    assert causes["kill"] == figures.submits_cut_by_kills
    assert {k for k, d in unknown_details.items() if "interrupted" in (d or "")} == cut
    fired = ledger["faults_fired"]
    assert causes["dropped"] <= fired["drop_after_create"]
    assert causes["5xx"] <= fired["http_500"] + fired["http_503_bare"] + fired["proxy_html"]
    assert causes["timeout"] == 0  # every slow answer was within the client's timeout

    # 4. Every billed success is on disk as the manifest says, or recorded expired with a reason.
    manifest = _manifest(folder)
    assert set(manifest) == {row.key for row in rows}
    billed = [job for job in ledger["jobs"] if job["cost"] > 0]
    figures.billed_jobs = len(billed)
    lost = []
    for job in billed:
        row = by_sha[job["input_sha256"]]
        if row.request_id is None:
            figures.billed_but_unknown += 1
        elif job["status"] == "failed":
            assert row.state is JobState.FAILED, row
        elif row.state is JobState.EXPIRED:
            assert "early_expiry" in job["faults"], (row, job)
            assert "expired" in (expired_details[row.key] or ""), row
        elif not _on_disk(folder, row, manifest[row.key]):
            lost.append(row.key)
    figures.lost = len(lost)
    assert lost == []

    # 5. No partial file; the folder holds exactly the manifest's outputs.
    assert list((folder / ".partial").iterdir()) == []
    listed = {o["path"] for entry in manifest.values() for o in entry["outputs"]}
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and ".partial" not in p.parts
    }
    present -= _NOT_OURS | {
        "manifest.jsonl",
        "metadata.jsonl",
        "README.md",
        "run.log",
        "summary.md",
        "summary.json",
    }
    assert present == listed
    for row in rows:
        assert manifest[row.key]["state"] == str(row.state)
        assert bool(manifest[row.key]["outputs"]) == (row.state is JobState.DONE)

    # 6. The budget: billed within the cap, and every billed dollar in the store's books (spent,
    # or still reserved for a job whose outcome is unknown); the running totals are the attempts'.
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        books, attempts = db.ledger(), db.attempts()
    assert ledger["billed_usd"] <= CAP
    assert books.spent_usd + books.reserved_usd >= ledger["billed_usd"] - 1e-6
    assert books.in_flight == 0
    closed = sum(a.charge_usd or 0.0 for a in attempts if a.closed_at is not None)
    assert books.spent_usd == pytest.approx(closed)
    still_open = [a for a in attempts if a.closed_at is None]
    assert books.reserved_usd == pytest.approx(sum(a.estimate_usd for a in still_open))
    assert {a.job_key for a in still_open} <= set(unknown_details)  # only unknown jobs stay open


def _last_detail(events: list[Any], state: str) -> str | None:
    return next((e.detail for e in reversed(events) if e.to_state == state), None)


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    return {entry["key"]: entry for entry in entries}


def _on_disk(folder: Path, row: JobRow, entry: dict[str, Any]) -> bool:
    if row.state is not JobState.DONE or not entry["outputs"]:
        return False
    for output in entry["outputs"]:
        data = (folder / output["path"]).read_bytes()
        if len(data) != output["size"] or hashlib.sha256(data).hexdigest() != output["sha256"]:
            return False
    return True


def _assert_no_secret(tmp_path: Path, printed: Path) -> None:
    """The token is in no file the runs wrote and in nothing they printed."""
    journal = tmp_path / "emulator"  # the server's own files: it is given the token
    hits = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and journal not in p.parents and TOKEN.encode() in p.read_bytes()
    ]
    assert hits == []
    assert TOKEN not in printed.read_text()
