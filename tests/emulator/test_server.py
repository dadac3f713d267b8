"""Running the emulator: restarts with and without memory, the CLI command, and the farm's
journal replay."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.emulator.farm import Farm
from orchestrator.emulator.ledger import Account
from orchestrator.errors import EmulatorError
from tests.emulator.conftest import FAST, INPUTS, MODEL, ManualClock

CLI = [sys.executable, "-m", "orchestrator", "emulator"]


def _session(base: str, token: str = "emulator-token") -> str:
    auth = {"Authorization": f"Bearer {token}"}
    # Generous: a just-started emulator process may still be setting up when this arrives.
    response = httpx.post(f"{base}/models/{MODEL}", json=INPUTS, headers=auth, timeout=60.0)
    assert response.status_code == 200, response.text
    rid: str = response.json()["request_id"]
    return rid


def test_state_path_keeps_jobs_and_ledger_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "emulator.jsonl"
    clock = ManualClock()
    config = EmulatorConfig(speed=1.0, workers=1, clock=clock, state_path=state)
    with Emulator(config) as emu:
        auth = {"Authorization": f"Bearer {emu.token}"}
        done, cancelled, waiting = (_session(emu.base_url) for _ in range(3))
        httpx.post(f"{emu.base_url}/requests/{cancelled}/cancel", headers=auth)
        before = emu.ledger()
        port = emu.base_url
        emu.restart(forget=False)
        assert emu.base_url == port
        assert emu.ledger() == before
        clock.advance(1e6)
        statuses = [
            httpx.get(f"{emu.base_url}/requests/{r}/result", headers=auth).json()["status"]
            for r in (done, cancelled, waiting)
        ]
        assert statuses == ["succeeded", "cancelled", "succeeded"]
        emu.restart(forget=True)
        gone = httpx.get(f"{emu.base_url}/requests/{done}/status", headers=auth)
        assert gone.json()["error_code"] == 404001
        billed = emu.ledger()["billed_usd"]
    with Emulator(config) as again:  # a new process reading the same journal
        ledger = again.ledger()
        assert ledger["billed_usd"] == billed
        assert len(ledger["jobs"]) == 3
        assert all(j["forgotten"] for j in ledger["jobs"])
        gone = httpx.get(f"{again.base_url}/requests/{done}/status", headers=auth)
        assert gone.status_code == 404


def test_restart_without_state_path_keeps_memory_unless_told(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(speed=FAST)) as emu:
        auth = {"Authorization": f"Bearer {emu.token}"}
        rid = _session(emu.base_url)
        emu.restart(forget=False)
        assert httpx.get(f"{emu.base_url}/requests/{rid}/status", headers=auth).status_code == 200
        emu.restart()
        assert httpx.get(f"{emu.base_url}/requests/{rid}/status", headers=auth).status_code == 404


def test_journal_replay_and_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    clock = ManualClock()

    def farm() -> Farm:
        return Farm(2, 1.0, clock, {"a": Account("a", 10.0)}, 10.0, path)

    first = farm()
    account = first.account("a")
    jobs = [first.submit(account, MODEL, dict(INPUTS), f"sha{n}", frozenset()) for n in range(4)]
    assert first.cancel(jobs[3])
    clock.advance(45.0)
    first.advance()
    first.downloaded(jobs[0])
    first.close()
    with path.open("a") as journal:
        journal.write('{"e": "submit", "at": 1')  # a kill mid-write
    second = farm()
    states = [second.jobs[j.request_id].state for j in jobs]
    assert (
        states == [j.state for j in jobs] == ["succeeded", "succeeded", "in_progress", "cancelled"]
    )
    assert second.jobs[jobs[0].request_id].downloads == 1
    assert second.account("a").balance_usd == pytest.approx(first.account("a").balance_usd)
    second.close()


def test_emulator_properties() -> None:
    with Emulator(speed=FAST, tokens=("t1", "t2")) as emu:
        assert emu.base_url.startswith("http://127.0.0.1:")
        assert emu.base_url.endswith("/v1")
        assert emu.token == "t1"
        assert emu.ledger()["jobs"] == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"speed": 0}, "speed"),
        ({"tokens": ()}, "tokens"),
        ({"tokens": ("has space",)}, "tokens"),
        ({"port": 70000}, "port"),
    ],
)
def test_bad_config_names_the_setting(settings: dict[str, object], message: str) -> None:
    with pytest.raises(EmulatorError, match=f"^{message}"):
        EmulatorConfig(**settings)  # type: ignore[arg-type]


def test_port_in_use_is_one_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(EmulatorError, match=f"port {port} on 127.0.0.1 is already in use"):
            Emulator(port=port).start()
        done = subprocess.run([*CLI, "--port", str(port)], capture_output=True, text=True)
        assert done.returncode == 1
        assert done.stderr == f"Error: port {port} on 127.0.0.1 is already in use\n"
        assert done.stdout == ""
    finally:
        taken.close()


def test_cli_bad_profile_is_one_line(tmp_path: Path) -> None:
    profile = tmp_path / "faults.yaml"
    profile.write_text("faults:\n  slow: {rate: 0.5, delay: -1}\n")
    done = subprocess.run([*CLI, "--port", "0", "--faults", str(profile)], capture_output=True)
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines() == [
        f"Error: {profile}: faults.slow.delay: must be a number >= 0, got -1"
    ]


def test_cli_serves_and_prints_its_base_url_first(tmp_path: Path) -> None:
    args = [*CLI, "--port", "0", "--speed", "1000000", "--token", "cli-token"]
    args += ["--fault", "rate_limit=1@cancel", "--state", str(tmp_path / "state.jsonl")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        base = process.stdout.readline().decode().strip()
        assert base.startswith("http://127.0.0.1:")
        assert base.endswith("/v1")
        rid = _session(base, "cli-token")
        auth = {"Authorization": "Bearer cli-token"}
        result = httpx.get(f"{base}/requests/{rid}/result?include_cost=true", headers=auth)
        assert result.json()["status"] == "succeeded"
        assert result.json()["cost"] > 0
        cancel = httpx.post(f"{base}/requests/{rid}/cancel", headers=auth)
        assert cancel.status_code == 429
        assert httpx.get(f"{base}/requests/{rid}/status").json()["error_code"] == 400004
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"Traceback" not in err
    assert b"fault rate_limit" in err
    assert (tmp_path / "state.jsonl").read_text().count('"e":"submit"') == 1
