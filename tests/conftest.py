from __future__ import annotations

from pathlib import Path

import pytest


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
