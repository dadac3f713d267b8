"""Tell someone: run.notify, a URL (a POST) or a shell command (JSON on stdin); never the token."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ComfysweepError
from orchestrator.notify import Notifier
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .waiting import wait_for

ONE_JOB = 0.05 * 81 / 16


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


class _Hook:
    """A local webhook: keeps every request it receives (path, headers, body)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?topic=sweeps"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    server = _Hook()
    yield server
    server.close()


def run(spec: Path, emu: Emulator, **settings: Any) -> Any:
    settings.setdefault("poll_interval", 0.02)
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(**settings))


def test_a_url_receives_the_summary_as_a_post_without_the_token(
    tmp_path: Path, emulator: Emulator, hook: _Hook
) -> None:
    spec = write_spec(tmp_path)
    report = run(spec, emulator, notify=hook.url)
    assert report.complete
    (post,) = hook.received
    payload = json.loads(post["body"])
    assert payload["event"] == "end"
    assert payload["counts"] == {"done": 4}
    assert payload["outcome"] == "complete"
    assert payload == {"event": "end", **report.account}
    assert post["path"] == "/hook?topic=sweeps"
    assert post["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in post["headers"]
    assert emulator.token not in json.dumps(post)


def test_the_budget_is_told_when_it_stops_the_run_and_again_at_the_end(
    tmp_path: Path, emulator: Emulator, hook: _Hook
) -> None:
    spec = write_spec(tmp_path)
    report = run(spec, emulator, notify=hook.url, concurrency=1, max_cost=ONE_JOB * 1.5)
    assert report.stop_kind == "budget"
    events = [json.loads(post["body"]) for post in hook.received]
    assert [e["event"] for e in events] == ["budget", "end"]
    assert events[0]["text"].startswith("budget reached")
    assert events[0]["stop_kind"] == "budget"
    assert events[0]["outcome"] == "running"  # the jobs in flight still end
    assert events[1]["outcome"] == "stopped (budget)"


def test_a_command_reads_the_summary_on_stdin_and_has_no_token_in_its_environment(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", emulator.token)
    monkeypatch.setenv("RUNCOMFY_TOKEN", emulator.token)
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("ALIAS_OF_THE_KEY", emulator.token)
    monkeypatch.setenv("SWEEP_NOTE", "kept")
    spec = write_spec(tmp_path)
    out, env = tmp_path / "got.json", tmp_path / "env.txt"
    command = f"cat > {out}; env > {env}"
    report = run_sweep(
        spec, base_url=emulator.base_url, overrides=Overrides(poll_interval=0.02, notify=command)
    )
    assert report.complete
    payload = json.loads(out.read_text())
    assert payload["event"] == "end"
    assert payload["counts"] == {"done": 4}
    names = {line.split("=", 1)[0] for line in env.read_text().splitlines() if "=" in line}
    assert "SWEEP_NOTE" in names
    assert not names & {"RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN", "HF_TOKEN", "ALIAS_OF_THE_KEY"}
    assert emulator.token not in env.read_text()
    assert emulator.token not in out.read_text()


def test_a_failing_notifier_is_one_logged_line_never_fatal(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    report = run(spec, emulator, notify="echo 'no route to pager' >&2; exit 3")
    assert report.complete
    log = (tmp_path / "results" / "grid" / "run.log").read_text()
    (line,) = [line for line in log.splitlines() if "notify" in line and "failed" in line]
    assert line.endswith("notify echo failed: exit 3: no route to pager")


def test_a_refused_post_and_an_unreachable_url_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.parse("http://127.0.0.1:9/nobody-listens")
    assert notifier is not None
    with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    (record,) = caplog.records
    assert record.getMessage().startswith("notify http://127.0.0.1 failed: ")


def test_a_hanging_command_is_given_up_after_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.parse("sleep 60")
    assert notifier is not None
    notifier.timeout = 0.2
    with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    (record,) = caplog.records
    assert record.getMessage() == "notify sleep failed: no answer within 0.2 s"


def test_the_token_never_reaches_the_payload(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    notifier = Notifier.parse(f"cat > {out}", token="tok-123456")
    assert notifier is not None
    assert notifier.send({"event": "end", "top_errors": [{"error": "bad token tok-123456"}]})
    assert "tok-123456" not in out.read_text()
    assert json.loads(out.read_text())["top_errors"][0]["error"] == "bad token ***"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://x", "run.notify (--notify): only http(s) URLs or shell commands, got ftp://"),
        ("http://", "run.notify (--notify): the URL has no host: 'http://'"),
        ("   ", "run.notify (--notify): empty; give an http(s) URL or a shell command"),
        ("echo 'open", "run.notify (--notify): not a shell command (No closing quotation)"),
        ("http://xn--a.invalid/", "run.notify (--notify): not a valid URL: Codepoint U+0080"),
        ("http://a..b/", "run.notify (--notify): not a valid URL: encoding with 'idna' codec"),
        ("http:/hooks.example/x", "run.notify (--notify): the URL has no host"),
        ("HTTPS:hooks.example", "run.notify (--notify): the URL has no host"),
        ("http://hooks.example:99999/", "run.notify (--notify): not a valid URL: port 99999"),
        ("http://hooks example/", "run.notify (--notify): not a valid URL: it holds a space"),
    ],
)
def test_a_malformed_notify_is_one_line_before_anything_is_paid(
    tmp_path: Path, emulator: Emulator, value: str, message: str
) -> None:
    with pytest.raises(ComfysweepError) as caught:
        Notifier.parse(value)
    assert str(caught.value).startswith(message)
    spec = write_spec(tmp_path)
    env = {"RUNCOMFY_MODEL_API_BASE": emulator.base_url, "RUNCOMFY_API_TOKEN": emulator.token}
    result = CliRunner().invoke(cli, ["run", str(spec), "--notify", value], env=env)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {message}")
    assert emulator.ledger()["jobs"] == []
    assert not (tmp_path / "results").exists()


def test_a_url_holding_the_token_is_refused() -> None:
    with pytest.raises(ComfysweepError, match="holds the API token"):
        Notifier.parse("https://hooks.example/x?key=tok-123456", token="tok-123456")


def test_the_runner_tells_the_notifier_of_a_stall(tmp_path: Path) -> None:
    from orchestrator.runner import Runner

    heard: list[tuple[str, str]] = []
    runner = Runner.__new__(Runner)
    runner.on_event = lambda event, text: heard.append((event, text))
    runner._notify("stall", "nothing moved for 10 min")
    assert heard == [("stall", "nothing moved for 10 min")]

    def broken(event: str, text: str) -> None:
        raise OSError("pipe")

    runner.on_event = broken
    runner._notify("stall", "again")  # never raises


def test_a_stall_sends_the_account_so_far(tmp_path: Path) -> None:
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec
    from orchestrator.store import Store
    from orchestrator.summary import Invocation, RunAccount

    spec = load_spec(write_spec(tmp_path))
    out = tmp_path / "stall.json"
    with Store.open(tmp_path / "s.db") as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(spec), spec.model)
        notifier = Notifier.parse(f"cat > {out}")
        how = Invocation("grid.yaml")
        morning = RunAccount(db, how, "grid", tmp_path, 2.0, notifier)
        morning.event("stall", "nothing progressed for 600 s")
        assert notifier is not None
        notifier.drain()
    payload = json.loads(out.read_text())
    assert payload["event"] == "stall"
    assert payload["text"] == "nothing progressed for 600 s"
    assert payload["outcome"] == "running"
    assert payload["counts"] == {"pending": 4}
    assert payload["cap_usd"] == 2.0


def test_a_command_pouring_out_stderr_is_read_in_bounded_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """300 MB on stderr, then a last line: only the tail is kept (communicate() kept it all)."""
    import resource

    notifier = Notifier.parse("yes | head -c 300000000 >&2; echo 'disk full' >&2; exit 3")
    assert notifier is not None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 100_000, f"the notifier's stderr took {grown} KiB"
    (record,) = caplog.records
    assert record.getMessage() == "notify yes failed: exit 3: disk full"


def test_a_command_leaving_a_child_holding_its_pipes_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.parse("sleep 60 & exit 0")
    assert notifier is not None
    notifier.timeout = 0.2
    with caplog.at_level(logging.INFO, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is True


def test_a_webhook_trickling_its_answer_is_given_up_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each byte comes well within httpx's per-read timeout: only a total deadline ends it."""
    import socket

    done = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            while not done.is_set():
                try:
                    conn.sendall(b"H")
                except OSError:
                    return
                done.wait(0.02)  # the server's own pace, not a test waiting for a moment

    threading.Thread(target=trickle, daemon=True).start()
    notifier = Notifier.parse(f"http://127.0.0.1:{server.getsockname()[1]}/hook")
    assert notifier is not None
    notifier.timeout = 0.3
    sent: list[bool] = []
    worker = threading.Thread(target=lambda: sent.append(notifier.send({"event": "end"})))
    try:
        with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
            worker.start()
            wait_for(lambda: sent, "the notifier to give up")
    finally:
        done.set()
        server.close()
        worker.join()
    assert sent == [False]
    (record,) = caplog.records
    assert record.getMessage() == "notify http://127.0.0.1 failed: no answer within 0.3 s"


def test_a_notifier_raising_the_unexpected_is_still_one_logged_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in a library")

    monkeypatch.setattr("httpx.Client.post", broken)
    notifier = Notifier.parse("http://127.0.0.1:9/hook")
    assert notifier is not None
    with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    (record,) = caplog.records
    assert record.getMessage() == "notify http://127.0.0.1 failed: a bug in a library"


def test_a_run_that_cannot_start_tells_the_notifier_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    """An overnight run refused before its first submit (here: the store of another sweep)."""
    from orchestrator.errors import StoreError

    spec = write_spec(tmp_path)
    assert run(spec, emulator, notify=None).complete
    other = write_spec(tmp_path, name="other")
    told = tmp_path / "told.jsonl"
    store = tmp_path / "results" / "grid" / "comfysweep.db"
    with pytest.raises(StoreError, match="belongs to sweep 'grid'") as caught:
        run_sweep(
            other,
            base_url=emulator.base_url,
            token=emulator.token,
            store=store,
            overrides=Overrides(notify=f"cat >> {told}; echo >> {told}"),
        )
    (line,) = told.read_text().splitlines()  # one notice
    notice = json.loads(line)
    assert notice["event"] == "end"
    assert notice["sweep"] == "other"
    assert notice["outcome"] == "stopped by an error"
    assert notice["stop_reason"] == str(caught.value)
    assert emulator.token not in line


def test_an_error_after_the_start_is_told_once(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.errors import StoreError

    async def broken(self: Any) -> Any:
        raise StoreError("store s.db: disk I/O error")

    monkeypatch.setattr("orchestrator.runner.Runner._submit_loop", lambda self, jobs: broken(self))
    spec = write_spec(tmp_path)
    told = tmp_path / "told.jsonl"
    with pytest.raises(StoreError, match="disk I/O error"):
        run(spec, emulator, notify=f"cat >> {told}; echo >> {told}")
    (line,) = told.read_text().splitlines()
    assert json.loads(line)["counts"] == {"pending": 4}  # the account's notice, not a second one


def test_a_declined_run_tells_no_one(tmp_path: Path, emulator: Emulator) -> None:
    from orchestrator.estimate import Declined

    spec = write_spec(tmp_path)
    told = tmp_path / "told.json"
    with pytest.raises(Declined):
        run_sweep(
            spec,
            base_url=emulator.base_url,
            token=emulator.token,
            confirm=lambda question: False,
            overrides=Overrides(confirm_above=0.0, notify=f"cat > {told}"),
        )
    assert not told.exists()
    assert emulator.ledger()["jobs"] == []


def test_a_failing_command_repeating_the_token_is_logged_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.parse("echo 'rejected key tok-123456' >&2; exit 1", token="tok-123456")
    assert notifier is not None
    with caplog.at_level(logging.WARNING, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    (record,) = caplog.records
    assert record.getMessage() == "notify echo failed: exit 1: rejected key ***"


def test_the_log_names_a_command_without_its_variable_assignments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`HOOK_KEY=s3cr3t curl ...`: the log says `curl`, never the assignment and its secret."""
    notifier = Notifier.parse("HOOK_KEY=s3cr3t sh -c 'exit 2'")
    assert notifier is not None
    with caplog.at_level(logging.INFO, logger="comfysweep.notify"):
        assert notifier.send({"event": "end"}) is False
    (record,) = caplog.records
    assert record.getMessage() == "notify sh failed: exit 2"
