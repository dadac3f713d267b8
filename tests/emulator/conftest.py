"""Fixtures for the emulator's contract tests: a running emulator and a plain httpx client.

These tests speak HTTP through httpx only, never through orchestrator/client.py, so the emulator
and the client cannot share a misunderstanding of the protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from tests.waiting import DrivenClock

MODEL = "community/wan-2-2/vace-fun"
FAST = 1e6  # simulated seconds per wall second: an 84 s job takes 84 microseconds
INPUTS: dict[str, Any] = {
    "56_text": "a lighthouse at dusk",
    "118_image": "https://example.com/in.png",
    "4_valuex3_value": "480x480 (1:1)",
    "25_value": 81,
    "38_value": 16,
    "98_seed": 1,
    "47_value": 4,
    "108_cfg": 3.5,
    "41_value": 8.0,
}


class ManualClock:
    """A clock that moves only when told, so a test decides when jobs start and finish."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Api:
    """A started emulator with an authorised httpx client and the protocol's URLs."""

    def __init__(self, emu: Emulator, clock: ManualClock | DrivenClock) -> None:
        self.emu = emu
        self.clock = clock
        self.http = httpx.Client(headers={"Authorization": f"Bearer {emu.token}"}, timeout=10.0)

    @property
    def base(self) -> str:
        return self.emu.base_url

    def submit(self, **changes: Any) -> httpx.Response:
        return self.http.post(f"{self.base}/models/{MODEL}", json=INPUTS | changes)

    def request_id(self, **changes: Any) -> str:
        response = self.submit(**changes)
        assert response.status_code == 200, response.text
        rid: str = response.json()["request_id"]
        return rid

    def status(self, rid: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/requests/{rid}/status")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def result(self, rid: str, *, cost: bool = False) -> dict[str, Any]:
        query = "?include_cost=true" if cost else ""
        response = self.http.get(f"{self.base}/requests/{rid}/result{query}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def finish(self) -> None:
        """Let every job run to its end: move the emulator's clock on, never wait for it.

        A manual clock jumps a day; a live one a minute, which at ``FAST`` is years of simulated
        work yet well inside an output's lifetime.
        """
        self.clock.advance(86400.0 if isinstance(self.clock, ManualClock) else 60.0)

    def close(self) -> None:
        self.http.close()


MakeApi = Callable[..., Api]


@pytest.fixture(scope="session")
def server() -> Iterator[Emulator]:
    """One emulator for the session; each test resets it to a fresh state and config."""
    with Emulator(EmulatorConfig(speed=FAST)) as emu:
        yield emu


@pytest.fixture
def make_api(server: Emulator) -> Iterator[MakeApi]:
    """Reset the shared emulator to ``EmulatorConfig(faults=..., **settings)``; fast by default."""
    made: list[Api] = []

    def make(faults: dict[str, Any] | None = None, **settings: Any) -> Api:
        settings.setdefault("speed", FAST)
        clock = settings.setdefault("clock", DrivenClock())  # live, and finish() moves it on
        profile = FaultProfile.parse({"faults": faults}) if faults else None
        server.reset(EmulatorConfig(faults=profile, **settings))
        made.append(Api(server, clock))
        return made[-1]

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    """A fast emulator: jobs finish as soon as they are looked at."""
    return make_api()


@pytest.fixture
def slow_api(make_api: MakeApi) -> Api:
    """One worker on a manual clock: jobs move only when the test advances the clock."""
    return make_api(workers=1, clock=ManualClock(), speed=1.0)
