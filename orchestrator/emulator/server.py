"""Running the emulator: in-process on a free loopback port (``Emulator``), or in the foreground."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from orchestrator.emulator.app import EmulatorApp, EmulatorState, create_app
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.errors import EmulatorError

__all__ = ["Emulator", "bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; raises EmulatorError in one line when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it keep-alive answers stall ~40 ms on Nagle plus delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EmulatorError(f"port {port} on {host} is already in use") from None
        raise EmulatorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def _server(app: EmulatorApp, log_level: str = "warning") -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


class Emulator:
    """The emulator in a background thread: ``with Emulator(config) as emu: emu.base_url``."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or EmulatorConfig(), **overrides)
        self.state: EmulatorState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""
        self.app: EmulatorApp | None = None

    @property
    def token(self) -> str:
        return self.config.tokens[0]

    @property
    def origin(self) -> str:
        """The base URL without ``/v1``: where outputs and ``/_emulator/`` live."""
        return self.base_url.removesuffix("/v1")

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Listen (on the configured port, or the one used before a restart) and serve."""
        port = int(self.base_url.rsplit(":", 1)[1].split("/")[0]) if self.base_url else 0
        sock = bind(self.config.host, port or self.config.port)
        if self.state is None:
            self.state = EmulatorState(self.config)
        self.base_url = _base_url(sock)
        self.app = create_app(self.state)
        server = _server(self.app)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 120.0  # generous: a busy machine starts uvicorn slowly
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise EmulatorError("the emulator did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving (open connections are closed); the state stays for a restart."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10.0)
        self._server = self._thread = None

    def close(self) -> None:
        self.stop()
        if self.state is not None:
            self.state.close()
            self.state = None

    def restart(self, forget: bool = True) -> None:
        """Restart the server on the same port; ``forget`` loses every job (ids then 404001).

        Without ``forget``, a configured ``state_path`` is re-read, as a new process would.
        """
        self.stop()
        if self.state is not None:
            if forget:
                self.state.farm.forget()
            if self.config.state_path is not None:
                self.state.close()
                self.state = None
        self.start()

    def reset(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        """Serve a fresh state (no jobs, fresh accounts and dice) on the same port, at once.

        Much faster than a new Emulator; for tests and benchmarks, with no request in flight.
        """
        if self.app is None:
            raise EmulatorError("the emulator is not running")
        self.config = replace(config or self.config, **overrides)
        self.state = EmulatorState(self.config)
        self.app.swap(self.state).close()

    def ledger(self) -> dict[str, Any]:
        """The ``/_emulator/ledger`` document."""
        response = httpx.get(f"{self.origin}/_emulator/ledger", timeout=30.0)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def requests(self) -> dict[str, int]:
        """The ``/_emulator/requests`` document: requests served so far, by endpoint."""
        response = httpx.get(f"{self.origin}/_emulator/requests", timeout=30.0)
        response.raise_for_status()
        data: dict[str, int] = response.json()
        return data


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(config: EmulatorConfig, log_level: str = "warning") -> None:
    """Serve in the foreground until interrupted; the base URL is stdout's first line."""
    sock = bind(config.host, config.port)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s emulator %(levelname)s %(message)s",
    )
    state = EmulatorState(config)
    # uvicorn re-raises the stopping signal once it has shut down; make that a clean exit so
    # the state is closed (and the temporary media folder removed) instead of dying by signal.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    try:
        print(_base_url(sock), flush=True)
        _server(create_app(state), log_level).run(sockets=[sock])
    finally:
        state.close()
