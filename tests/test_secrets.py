"""The API token never lands in a file the run writes or a line it prints.

Two runs with a distinctive token: a chaos-style `comfysweep run` (a subprocess) against the
emulator (a subprocess too) under faults, and a run against a server that echoes the token back in
every body it can (error messages, validation details, job errors, extra result fields). Then
every file under the results folder and comfysweep's home, and all that was printed, is searched.
The emulator's own files are the server's, which is given the token, so they are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

from .chaos.harness import emulator_process, run_env
from .sweeps import write_spec
from .test_hostile import NO_WAIT, Request, Server, answer, http, ok

TOKEN = "secret-Tk-0b8d4f6e2a91c375"
SPEC = """\
name: secrets
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
axes:
  seed: [1, 2, 3]
  steps: [4, 8, 12, 16]
run:
  concurrency: 4
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""
FAULTS = {
    "seed": 5,
    "faults": {
        "rate_limit": {"rate": 0.1, "retry_after": 0},
        "http_500": {"rate": 0.05},
        "proxy_html": {"rate": 0.05},
        "drop_after_create": {"rate": 0.1},
        "fail_object": {"rate": 0.1},
        "early_expiry": {"rate": 0.1},
        "truncated_download": {"rate": 0.1},
    },
}


def leaks(folders: list[Path], printed: str) -> list[str]:
    """Every file (and the printed text) that holds the token."""
    found = [
        str(path)
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and TOKEN.encode() in path.read_bytes()
    ]
    return found + (["printed output"] if TOKEN in printed else [])


@pytest.mark.timeout(300)  # two runs in subprocesses under faults: slow on a busy machine
def test_a_chaos_style_run_writes_and_prints_no_token(tmp_path: Path) -> None:
    home = Path(os.environ["COMFYSWEEP_HOME"])  # the isolated home conftest sets
    spec = tmp_path / "secrets.yaml"
    spec.write_text(SPEC.format(output=tmp_path / "results"))
    with emulator_process(tmp_path / "emulator", FAULTS, speed=2000, workers=4, token=TOKEN) as emu:
        env = {**run_env(emu.base_url, TOKEN), "COMFYSWEEP_HOME": str(home)}
        printed = ""
        for _ in range(2):  # the second run resumes what faults left
            done = subprocess.run(
                [sys.executable, "-m", "orchestrator", "run", str(spec), "--poll-interval", "0.02"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            printed += done.stdout + done.stderr
            assert done.returncode in (0, 3), done.stderr
        status = subprocess.run(
            [sys.executable, "-m", "orchestrator", "status", str(spec), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        printed += status.stdout + status.stderr
        assert sum(emu.ledger()["faults_fired"].values()) > 0
    counts = json.loads(status.stdout)["counts"]
    assert counts["done"] > 0
    assert counts["unknown"] + counts["failed"] + counts["expired"] > 0  # the faults did bite
    folder = tmp_path / "results" / "secrets"
    assert (folder / "run.log").stat().st_size > 0
    assert leaks([tmp_path / "results", home], printed) == []


def echo_server(server: Server) -> None:
    """Script ``server`` to echo the caller's Authorization header wherever a body allows."""

    def said(request: Request) -> str:
        return f"you sent {request.headers.get('authorization', '')!r}"

    async def submit(request: Request) -> bytes:
        body = json.loads(request.body)
        if body.get("98_seed") == 3:  # refused, with the header in the message and the detail
            detail = [{"loc": ["body", "56_text"], "msg": said(request), "input": said(request)}]
            message = {"error_code": 422001, "error_message": said(request), "detail": detail}
            return http(422, json.dumps(message))
        return ok({"request_id": f"r{body['98_seed']}-{body['47_value']}", "note": said(request)})

    async def status(request: Request) -> bytes:
        return ok({"status": "completed", "echo": said(request)})

    async def result(request: Request) -> bytes:
        rid = request.path.split("/")[3]
        if rid.startswith("r2"):  # a failed job whose error repeats the header
            error = {"type": "AuthDebug", "message": said(request), "trace": [said(request)]}
            return ok({"request_id": rid, "status": "failed", "error": error, "cost": 0.1})
        url = f"{server.origin}/files/{rid}.mp4"
        extra = {"debug": said(request), "headers_seen": [said(request)]}
        return ok({"request_id": rid, "status": "succeeded", "output": {"video": url}, **extra})

    server.script.update(submit=submit, status=status, result=result)
    server.script["catalog"] = answer(http(500, '{"error_message": "no catalog"}'))


@pytest.fixture
def echo() -> Iterator[Server]:
    server = Server()
    echo_server(server)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_a_server_echoing_the_token_cannot_make_us_store_or_print_it(
    tmp_path: Path, echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(os.environ["COMFYSWEEP_HOME"])
    spec = write_spec(tmp_path, name="echo")
    spec.write_text(spec.read_text().replace("seed: [1, 2]", "seed: [1, 2, 3]"))
    report = run_sweep(
        spec,
        base_url=f"{echo.origin}/v1",
        token=TOKEN,
        overrides=Overrides(poll_interval=0.01, timeout=60.0),
        retry=RetryPolicy(wait=False, attempts=2),
    )
    assert report.counts["failed"] == 4, report  # seed 3 refused (2 jobs), seed 2 failed (2)
    assert report.counts["done"] == 2, report
    assert any(TOKEN in r.headers.get("authorization", "") for r in echo.requests)
    captured = capsys.readouterr()
    printed = captured.out + captured.err + " ".join(report.messages) + str(report.stop_reason)
    assert leaks([tmp_path / "results", home], printed) == []


def header_echo(request: Request, where: str) -> bytes:
    """An answer whose headers repeat the token: in Content-Type or in a line without a colon.

    The API's own origin serves downloads too, and knows the token: it echoes it there as well.
    """
    said = f"Bearer {TOKEN}"
    if where == "content-type":
        head = f"HTTP/1.1 200 X\r\nContent-Type: text/plain; echo={said}\r\nContent-Length: 2\r\n"
    else:  # a header line without a colon: httpx's error message repeats it
        head = f"HTTP/1.1 200 X\r\nyou sent {said}\r\nContent-Length: 2\r\n"
    return (head + "Connection: close\r\n\r\nhi").encode()


@pytest.fixture
def header_server() -> Iterator[Server]:
    server = Server()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("endpoint", "where"),
    [  # a run polls the result endpoint alone (pacing.py): status is never asked
        ("result", "content-type"),
        ("submit", "header-line"),
        ("result", "header-line"),
        ("download", "header-line"),
    ],
)
def test_a_token_echoed_in_a_response_header_is_never_stored_logged_or_printed(
    tmp_path: Path,
    header_server: Server,
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
    where: str,
) -> None:
    async def echo(request: Request) -> bytes:
        return header_echo(request, where)

    header_server.script[endpoint] = echo
    home = Path(os.environ["COMFYSWEEP_HOME"])
    spec = write_spec(tmp_path, name="headers")
    report = run_sweep(
        spec,
        base_url=f"{header_server.origin}/v1",
        token=TOKEN,
        overrides=Overrides(poll_interval=0.01, timeout=2.0),
        retry=NO_WAIT,
        stream=sys.stderr,
    )
    assert report.counts["done"] < 4, report  # the echo did hit
    log = (tmp_path / "results" / "headers" / "run.log").read_text()
    assert "***" in log  # the token's place, scrubbed
    captured = capsys.readouterr()
    printed = captured.out + captured.err + " ".join(report.messages) + str(report.stop_reason)
    assert leaks([tmp_path / "results", home], printed) == []


def test_cli_prints_no_token_echoed_in_a_malformed_header_line(
    tmp_path: Path, header_server: Server
) -> None:
    async def echo(request: Request) -> bytes:
        return header_echo(request, "header-line")

    header_server.script["submit"] = echo
    spec = write_spec(tmp_path, name="cli")
    env = {
        **os.environ,
        "RUNCOMFY_MODEL_API_BASE": f"{header_server.origin}/v1",
        "RUNCOMFY_API_TOKEN": TOKEN,
    }
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # lost answers in a row stop the sweep
    said = ("illegal header line", "Invalid header token")  # httpx's transport (h11), aiohttp's
    assert any(words in done.stderr for words in said)
    assert "Traceback" not in done.stderr
    assert leaks([tmp_path / "results"], done.stdout + done.stderr) == []
