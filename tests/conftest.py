from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# No deadline and no "too slow" health check: a loaded machine is 10x slower, and a timing
# failure says nothing about the code. The example database stays the default (.hypothesis/), so
# a failing example replays on the next run; print_blob prints how to replay it anywhere.
# Built on hypothesis's "default" profile, not on what is loaded now: with CI set, hypothesis
# loads its "ci" profile (no database, derandomized), which would drop the replay.
settings.register_profile(
    "comfysweep",
    parent=settings.get_profile("default"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("comfysweep")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point comfysweep's home (price cache, logs) at a fresh folder, and hide real tokens."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("COMFYSWEEP_HOME", str(home))
    for name in ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN", "RUNCOMFY_MODEL_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    return home


# The chaos suite and the kill tests run their runs on the aiohttp transport, whatever the default
# or COMFYSWEEP_HTTP_TRANSPORT says, so its error mapping always meets kills and faults;
# COMFYSWEEP_TEST_CHAOS_TRANSPORT=httpx puts them on httpx's own (one pass either way).
CHAOS_TRANSPORT = os.environ.get("COMFYSWEEP_TEST_CHAOS_TRANSPORT", "aiohttp")


@pytest.fixture(autouse=True)
def _chaos_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("chaos") or request.module.__name__.endswith(".test_kill"):
        monkeypatch.setenv("COMFYSWEEP_HTTP_TRANSPORT", CHAOS_TRANSPORT)
