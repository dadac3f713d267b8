"""The read-only part of the contract, run against the emulator and, on request, the real API.

Live runs need ``RUNCOMFY_API_TOKEN`` and ``COMFYSWEEP_LIVE=1``. They are read at import time,
because tests/conftest.py hides RUNCOMFY_* from every test. Nothing here submits a job or spends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.emulator.conftest import MODEL, MakeApi

_LIVE_TOKEN = os.environ.get("RUNCOMFY_API_TOKEN") or os.environ.get("RUNCOMFY_TOKEN")
_LIVE = os.environ.get("COMFYSWEEP_LIVE") == "1" and bool(_LIVE_TOKEN)
_LIVE_BASE = os.environ.get("RUNCOMFY_MODEL_API_BASE", "https://model-api.runcomfy.net/v1")


@dataclass
class Target:
    base: str
    http: httpx.Client


@pytest.fixture(
    params=[
        "emulator",
        pytest.param(
            "live",
            marks=[
                pytest.mark.live,
                pytest.mark.skipif(
                    not _LIVE, reason="set RUNCOMFY_API_TOKEN and COMFYSWEEP_LIVE=1"
                ),
            ],
        ),
    ]
)
def target(request: pytest.FixtureRequest, make_api: MakeApi) -> Iterator[Target]:
    if request.param == "live":
        base, token = _LIVE_BASE.rstrip("/"), _LIVE_TOKEN
    else:
        api = make_api()
        base, token = api.base, api.emu.token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(headers=headers, timeout=30.0) as http:
        yield Target(base, http)


def test_catalog_entry_shape(target: Target) -> None:
    response = target.http.get(f"{target.base}/models/{MODEL}")
    assert 200 <= response.status_code < 300
    entry = response.json()
    assert entry["model_id"] == MODEL
    assert entry["price_unit"] in ("second", "output")
    assert isinstance(entry["base_price_usd"], int | float)
    properties = entry["input_schema"]["properties"]
    for key in ("56_text", "118_image", "4_valuex3_value", "25_value", "98_seed"):
        assert key in properties


def test_catalog_list_and_categories(target: Target) -> None:
    listing = target.http.get(f"{target.base}/models", params={"search": "vace", "limit": 5})
    assert 200 <= listing.status_code < 300
    body = listing.json()
    assert {"models", "total", "limit", "offset"} <= set(body)
    assert any(m["model_id"] == MODEL for m in body["models"])
    categories = target.http.get(f"{target.base}/models/categories")
    assert isinstance(categories.json()["categories"], list)


def test_unknown_request_id(target: Target) -> None:
    response = target.http.get(f"{target.base}/requests/comfysweep-no-such-request/status")
    assert response.status_code == 404
    assert response.json()["error_code"] == 404001


def test_wrong_token(target: Target) -> None:
    response = httpx.get(
        f"{target.base}/requests/comfysweep-no-such-request/status",
        headers={"Authorization": "Bearer comfysweep-wrong-token"},
    )
    assert response.status_code == 401
    assert response.json()["error_code"] == 400004
