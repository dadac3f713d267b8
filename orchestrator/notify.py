"""Tell someone: the run's summary as JSON, POSTed to a URL or given to a command on stdin.

``run.notify`` (``--notify``) is an http(s) URL (ntfy, Slack and Discord webhooks take a POST) or a
shell command. The notifier never receives the API token: no Authorization header, the token
scrubbed from the payload, and a command's environment without any variable that names a token
or holds its value. A notifier that fails or hangs is one logged line, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from orchestrator.apierrors import TOKEN_VARS
from orchestrator.errors import ComfysweepError

__all__ = ["NOTIFY_TIMEOUT", "Notifier"]

log = logging.getLogger("comfysweep.notify")

NOTIFY_TIMEOUT = 10.0  # seconds a notifier may take before it is given up
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WEB = re.compile(r"^https?:", re.IGNORECASE)
# Variables a notify command never sees: whatever names a token, a secret or a password.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL", re.IGNORECASE)
_WHERE = "run.notify (--notify)"
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Notifier:
    """Where the run's news goes; ``send`` waits for it, ``send_soon`` does not."""

    target: str
    is_url: bool
    token: str | None = None  # the API token: never in a payload, an environment or a URL
    timeout: float = NOTIFY_TIMEOUT
    told_end: bool = False  # the run's end was sent (or tried): said once
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    @classmethod
    def parse(cls, value: str | None, *, token: str | None = None) -> Notifier | None:
        """The notifier ``value`` names, or None; a malformed one raises one line."""
        if value is None:
            return None
        target = value.strip()
        if not target:
            raise ComfysweepError(f"{_WHERE}: empty; give an http(s) URL or a shell command")
        if _SCHEME.match(target) or _WEB.match(target):  # http:/x is a URL mistyped, not a command
            _check_url(target)
            if token and token in target:
                raise ComfysweepError(f"{_WHERE}: the URL holds the API token; it never leaves")
            return cls(target, True, token)
        try:
            words = shlex.split(target)
        except ValueError as exc:
            raise ComfysweepError(f"{_WHERE}: not a shell command ({exc}): {target!r}") from None
        if not words:
            raise ComfysweepError(f"{_WHERE}: empty; give an http(s) URL or a shell command")
        return cls(target, False, token)

    def describe(self) -> str:
        """The notifier as a log line shows it: a URL's origin, a command's first word."""
        if self.is_url:
            url = httpx.URL(self.target)
            return f"{url.scheme}://{url.host}"
        words = shlex.split(self.target)
        # Not a leading VAR=value: it may hold a webhook's secret (HOOK_KEY=... curl ...).
        command = [w for w in words if not _ASSIGNMENT.match(w)]
        return command[0] if command else "command"

    def payload(self, data: Mapping[str, Any]) -> bytes:
        """``data`` as JSON, the token scrubbed wherever a server or a file had put it."""
        text = json.dumps(data, ensure_ascii=False, default=str)
        if self.token:
            text = text.replace(self.token, "***")
        return text.encode()

    def send(self, data: Mapping[str, Any]) -> bool:
        """Deliver ``data`` now; False (and one logged line) when the notifier failed."""
        body = self.payload(data)
        self.told_end = self.told_end or data.get("event") == "end"
        try:
            if self.is_url:
                self._post(body)
            else:
                self._run(body)
        except Exception as exc:  # whatever it was, a notifier is never worth the run's end
            said = _one_line(exc)
            if self.token:  # a command (or a server) may repeat what it was given
                said = said.replace(self.token, "***")
            log.warning("notify %s failed: %s", self.describe(), said)
            return False
        log.info("notified %s (%s)", self.describe(), data.get("event", "end"))
        return True

    def send_soon(self, data: Mapping[str, Any]) -> None:
        """Deliver ``data`` from a thread: the run goes on meanwhile (``drain`` waits)."""
        thread = threading.Thread(target=self.send, args=(dict(data),), daemon=True)
        self._threads.append(thread)
        thread.start()

    def drain(self) -> None:
        """Wait for notifications still on their way (each bounded by its timeout)."""
        for thread in self._threads:
            thread.join(self.timeout + 5.0)
        self._threads.clear()

    def _post(self, body: bytes) -> None:
        # httpx's timeout bounds each read, not the whole answer: a server trickling a byte at a
        # time would hold the run's end for ever. The POST gets ``timeout`` in all, from a thread.
        headers = {"Content-Type": "application/json", "User-Agent": "comfysweep"}
        answer: list[httpx.Response | Exception] = []

        def post() -> None:
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
                    answer.append(http.post(self.target, content=body, headers=headers))
            except Exception as exc:  # said by send(), from this thread's caller
                answer.append(exc)

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        poster.join(self.timeout)
        if not answer:
            raise _Failed(f"no answer within {self.timeout:g} s")
        response = answer[0]
        if isinstance(response, Exception):
            raise response
        if not response.is_success:
            raise _Failed(f"HTTP {response.status_code}")

    def _run(self, body: bytes) -> None:
        # The command is the user's own; the data reaches it only on stdin, never as words.
        # Its own process group, so a timeout ends whatever it started too (a `sleep` holding
        # the pipes open would otherwise keep the run waiting). Only the last bytes of what it
        # says on stderr are kept: a command pouring out gigabytes must not fill the memory.
        proc = subprocess.Popen(
            self.target,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._environment(),
            start_new_session=True,
        )
        said = _Tail()
        helpers = [
            threading.Thread(target=_feed, args=(proc.stdin, body), daemon=True),
            threading.Thread(target=said.read, args=(proc.stderr,), daemon=True),
        ]
        for helper in helpers:
            helper.start()
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise
        finally:
            for helper in helpers:
                helper.join(self.timeout)
                if helper.is_alive():  # something it left behind holds the pipes open
                    _end_group(proc)
                    helper.join(self.timeout)
        if proc.returncode != 0:
            last = said.text().strip().splitlines()
            raise _Failed(f"exit {proc.returncode}" + (f": {last[-1][:200]}" if last else ""))

    def _environment(self) -> dict[str, str]:
        return {
            name: value
            for name, value in os.environ.items()
            if name not in TOKEN_VARS
            and not _SECRET_NAME.search(name)
            and not (self.token and self.token in value)
        }


_TAIL_BYTES = 4096  # what is kept of a notify command's stderr


class _Tail:
    """The last ``_TAIL_BYTES`` of a stream, read to its end."""

    def __init__(self) -> None:
        self._kept = bytearray()

    def read(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError), stream:
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                self._kept += chunk
                del self._kept[:-_TAIL_BYTES]

    def text(self) -> str:
        return self._kept.decode(errors="replace")


def _feed(stream: IO[bytes] | None, body: bytes) -> None:
    """Give ``body`` to a command's stdin; one that never reads it, or exits first, is fine."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError), stream:
        stream.write(body)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _Failed(Exception):
    """The notifier answered, but not with success."""


def _check_url(target: str) -> None:
    try:
        url = httpx.URL(target)
        url.host.encode("idna")  # what the POST does with it: an empty label fails only then
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:  # idna's errors are UnicodeErrors
        raise ComfysweepError(f"{_WHERE}: not a valid URL: {_one_line(exc)}") from None
    if any(c.isspace() for c in target):
        raise ComfysweepError(f"{_WHERE}: not a valid URL: it holds a space: {target!r}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ComfysweepError(f"{_WHERE}: not a valid URL: port {url.port} is not 1 to 65535")
    if url.scheme not in ("http", "https"):
        raise ComfysweepError(f"{_WHERE}: only http(s) URLs or shell commands, got {url.scheme}://")
    if not url.host:
        raise ComfysweepError(f"{_WHERE}: the URL has no host: {target!r}")


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, subprocess.TimeoutExpired):
        text = f"no answer within {exc.timeout:g} s"
    return " ".join(text.split())[:300]
