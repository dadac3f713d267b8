"""The protocol, endpoint by endpoint, state by state, error code by error code (plain httpx)."""

from __future__ import annotations

import re

import httpx
import pytest

from orchestrator.canonical import input_sha256
from orchestrator.models import get_model
from tests.emulator.conftest import INPUTS, MODEL, Api, MakeApi

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def test_submit_answers_the_documented_urls(api: Api) -> None:
    response = api.submit()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "status_url", "result_url", "cancel_url"}
    rid = body["request_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", rid)
    assert body["status_url"] == f"{api.base}/requests/{rid}/status"
    assert body["result_url"] == f"{api.base}/requests/{rid}/result"
    assert body["cancel_url"] == f"{api.base}/requests/{rid}/cancel"
    assert api.base.endswith("/v1")


def test_job_walks_queue_progress_completed(slow_api: Api) -> None:
    first, second, third = (slow_api.request_id(**{"98_seed": n}) for n in (1, 2, 3))
    status = slow_api.status(first)
    assert status["status"] == "in_progress"
    assert "queue_position" not in status
    assert status["status_url"].endswith(f"/requests/{first}/status")
    assert status["result_url"].endswith(f"/requests/{first}/result")
    assert slow_api.status(second)["queue_position"] == 0
    assert slow_api.status(third) | {"status_url": "", "result_url": ""} == {
        "request_id": third,
        "status": "in_queue",
        "queue_position": 1,
        "status_url": "",
        "result_url": "",
    }
    queued = slow_api.result(third)
    assert queued["status"] == "in_queue"
    assert queued["queue_position"] == 1
    assert "output" not in queued
    assert "finished_at" not in queued
    slow_api.finish()
    assert slow_api.status(first)["status"] == "completed"
    assert "queue_position" not in slow_api.status(third)


def test_result_of_a_finished_job(api: Api) -> None:
    rid = api.request_id()
    api.finish()
    result = api.result(rid)
    assert result["status"] == "succeeded"
    assert result["request_id"] == rid
    assert result["model_id"] == MODEL
    assert TIME.match(result["created_at"])
    assert TIME.match(result["finished_at"])
    assert result["created_at"] < result["finished_at"]
    assert re.fullmatch(
        r"http://127\.0\.0\.1:\d+/outputs/[\w-]{20,}/[\w-]+\.mp4", result["output"]["video"]
    )
    assert "cost" not in result


def test_include_cost_is_the_price_per_second_of_video(api: Api) -> None:
    rid = api.request_id(**{"25_value": 141, "38_value": 24})
    api.finish()
    assert api.result(rid, cost=True)["cost"] == pytest.approx(0.05 * 141 / 24, abs=1e-6)


def test_cost_is_null_until_the_job_ends(slow_api: Api) -> None:
    slow_api.request_id()
    rid = slow_api.request_id()
    assert slow_api.result(rid, cost=True)["cost"] is None


def test_cancel_a_queued_job_and_not_a_running_one(slow_api: Api) -> None:
    running, queued = slow_api.request_id(), slow_api.request_id(**{"98_seed": 9})
    answer = slow_api.http.post(f"{slow_api.base}/requests/{queued}/cancel")
    assert answer.status_code == 200
    assert answer.json() == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
    assert slow_api.status(queued)["status"] == "cancelled"
    result = slow_api.result(queued)
    assert result["status"] == "cancelled"
    assert TIME.match(result["finished_at"])
    again = slow_api.http.post(f"{slow_api.base}/requests/{queued}/cancel").json()
    assert again["outcome"] == "cancelled"
    refused = slow_api.http.post(f"{slow_api.base}/requests/{running}/cancel").json()
    assert refused == {"request_id": running, "status": "in_progress", "outcome": "not_cancellable"}
    slow_api.finish()
    finished = slow_api.http.post(f"{slow_api.base}/requests/{running}/cancel").json()
    assert finished["outcome"] == "not_cancellable"
    ledger = slow_api.emu.ledger()
    costs = {j["request_id"]: j["cost"] for j in ledger["jobs"]}
    assert costs[queued] == 0
    assert costs[running] > 0


def test_fifo_across_workers(slow_api: Api) -> None:
    ids = [slow_api.request_id(**{"98_seed": n}) for n in range(4)]
    seconds = 20 + 480 * 480 * 81 * 4 / 3.5e6
    assert slow_api.clock is not None
    slow_api.clock.advance(seconds * 2 + 0.001)
    states = [slow_api.status(r)["status"] for r in ids]
    assert states == ["completed", "completed", "in_progress", "in_queue"]


def test_catalog_model(api: Api) -> None:
    response = api.http.get(f"{api.base}/models/{MODEL}")
    assert response.status_code == 200
    entry = response.json()
    for key in ("model_id", "display_name", "description", "categories", "kind", "model_url"):
        assert key in entry
    assert entry["model_id"] == MODEL
    assert entry["input_schema"] == dict(get_model(MODEL).input_schema)
    assert set(entry["required_inputs"]) == {"56_text", "118_image"}
    assert "25_value" in entry["inputs"]
    assert entry["base_price_usd"] == 0.05
    assert entry["price_unit"] == "second"
    assert "emulator" in entry["pricing_note"].lower()


def test_catalog_list_search_and_pages(api: Api) -> None:
    listing = api.http.get(f"{api.base}/models", params={"search": "vace"}).json()
    assert listing["total"] == 1
    assert listing["limit"] == 50
    assert listing["offset"] == 0
    assert listing["models"][0]["model_id"] == MODEL
    assert "input_schema" not in listing["models"][0]
    with_schema = api.http.get(f"{api.base}/models", params={"include_schema": "true"}).json()
    assert "input_schema" in with_schema["models"][0]
    none = api.http.get(f"{api.base}/models", params={"category": "3d", "kind": "model"})
    assert none.json()["models"] == []
    later = api.http.get(f"{api.base}/models", params={"offset": 50, "limit": 1}).json()
    assert later["models"] == []
    assert later["total"] >= 1
    bad = api.http.get(f"{api.base}/models", params={"limit": 501, "kind": "nope"})
    assert bad.status_code == 422
    locs = [d["loc"] for d in bad.json()["detail"]]
    assert locs == [["query", "limit"], ["query", "kind"]]


def test_catalog_list_with_a_trailing_slash(api: Api) -> None:
    assert api.http.get(f"{api.base}/models/").json()["total"] >= 1


def test_catalog_categories(api: Api) -> None:
    categories = api.http.get(f"{api.base}/models/categories").json()["categories"]
    assert "image-to-video" in categories


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic emulator-token"}],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/models/{MODEL}"),
        ("GET", f"/models/{MODEL}"),
        ("GET", "/models"),
        ("GET", "/models/categories"),
        ("GET", "/requests/abc/status"),
        ("GET", "/requests/abc/result"),
        ("POST", "/requests/abc/cancel"),
    ],
)
def test_missing_or_wrong_token_is_400004(
    api: Api, headers: dict[str, str], method: str, path: str
) -> None:
    response = httpx.request(method, api.base + path, headers=headers, json=INPUTS)
    assert response.status_code == 401
    assert response.json()["error_code"] == 400004


def test_another_accounts_request_is_403001(make_api: MakeApi) -> None:
    api = make_api(tokens=("alice-token", "bob-token"))
    rid = api.request_id()
    bob = {"Authorization": "Bearer bob-token"}
    for method, path in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        response = httpx.request(method, f"{api.base}/requests/{rid}/{path}", headers=bob)
        assert response.status_code == 403
        assert response.json()["error_code"] == 403001
    ledger = api.emu.ledger()
    assert [j["account"] for j in ledger["jobs"]] == ["account1"]


@pytest.mark.parametrize("rid", ["no-such-id", "x" * 129, "bad$id"])
def test_unknown_request_is_404001(api: Api, rid: str) -> None:
    for method, path in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        response = api.http.request(method, f"{api.base}/requests/{rid}/{path}")
        assert response.status_code == 404
        assert response.json()["error_code"] == 404001


def test_unknown_model_is_400001(api: Api) -> None:
    for method in ("POST", "GET"):
        response = api.http.request(method, f"{api.base}/models/community/nope", json=INPUTS)
        assert response.status_code == 400
        assert response.json()["error_code"] == 400001
    assert api.emu.ledger()["jobs"] == []


def test_schema_errors_are_422001_naming_each_field(api: Api) -> None:
    response = api.submit(**{"25_value": 80, "108_cfg": "high", "38_value": 4.0, "bogus": 1})
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == 422001
    assert body["error_message"]
    fields = sorted(d["loc"][1] for d in body["detail"])
    assert fields == ["108_cfg", "25_value", "38_value", "bogus"]
    assert all(d["loc"][0] == "body" and d["msg"] and d["type"] for d in body["detail"])
    assert api.emu.ledger()["jobs"] == []


def test_float_fields_take_integers_and_required_fields_are_named(api: Api) -> None:
    assert api.submit(**{"108_cfg": 4, "41_value": 8}).status_code == 200
    body = api.http.post(f"{api.base}/models/{MODEL}", json={"56_text": "x"}).json()
    assert [d["loc"] for d in body["detail"]] == [["body", "118_image"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "JSON")],
)
def test_malformed_bodies_are_refused_not_crashed(api: Api, content: bytes, message: str) -> None:
    response = api.http.post(f"{api.base}/models/{MODEL}", content=content)
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == 422001
    assert message in body["error_message"]
    assert body["detail"][0]["loc"] == ["body"]


def test_data_uri_that_is_not_base64_names_the_field(api: Api) -> None:
    for image in ("data:image/png;base64,@@not-base64@@", "data:image/png,rawtext"):
        response = api.submit(**{"118_image": image})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert [d["loc"] for d in detail] == [["body", "118_image"]]


def test_bare_file_name_image_is_accepted(api: Api) -> None:
    assert api.submit(**{"118_image": "Runcomfy_Example_1290_1.png"}).status_code == 200


def test_body_over_the_cap_is_refused_before_reading(make_api: MakeApi) -> None:
    api = make_api(max_body_bytes=1000)
    big = {"56_text": "x" * 2000, "118_image": "a.png"}
    response = api.http.post(f"{api.base}/models/{MODEL}", json=big)
    assert response.status_code == 413
    assert response.json()["error_code"] == 422001

    def chunks() -> object:
        yield b'{"56_text": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'", "118_image": "a.png"}'

    streamed = api.http.post(f"{api.base}/models/{MODEL}", content=chunks())  # type: ignore[arg-type]
    assert streamed.status_code == 413
    assert api.request_id()  # the server is still fine


def test_64_mib_cap_by_default(api: Api) -> None:
    body = b'{"56_text": "' + b"x" * (64 * 1024 * 1024) + b'", "118_image": "a.png"}'
    response = api.http.post(f"{api.base}/models/{MODEL}", content=body)
    assert response.status_code == 413
    assert "exceeds" in response.json()["error_message"]


def test_out_of_balance_is_400002(make_api: MakeApi) -> None:
    one_job = 0.05 * 81 / 16
    api = make_api(balance_usd=one_job * 2.5)
    first, second = api.request_id(), api.request_id(**{"98_seed": 2})
    third = api.submit(**{"98_seed": 3})
    assert third.status_code == 402
    assert third.json()["error_code"] == 400002
    api.finish()
    ledger = api.emu.ledger()
    assert ledger["billed_usd"] == pytest.approx(one_job * 2, abs=1e-5)
    assert ledger["accounts"]["account1"]["balance_usd"] == pytest.approx(one_job / 2, abs=1e-5)
    assert {j["request_id"] for j in ledger["jobs"]} == {first, second}


def test_ledger_counts_jobs_per_input_and_downloads(api: Api) -> None:
    first = api.request_id()
    api.request_id()
    other = api.request_id(**{"98_seed": 77})
    api.finish()
    url = api.result(first)["output"]["video"]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url).status_code == 200
    ledger = api.emu.ledger()
    complete = get_model(MODEL).complete(INPUTS)
    assert ledger["submissions_by_input"][input_sha256(complete)] == 2
    assert len(ledger["submissions_by_input"]) == 2
    rows = {j["request_id"]: j for j in ledger["jobs"]}
    assert rows[first]["downloads"] == 2
    assert rows[other]["downloads"] == 0
    keys = {"request_id", "account", "model_id", "input_sha256", "status", "cost"}
    assert keys | {"created_at", "finished_at", "downloads"} <= set(rows[first])
    assert rows[first]["status"] == "succeeded"
    assert ledger["billed_usd"] == pytest.approx(sum(r["cost"] for r in rows.values()), abs=1e-5)
    assert ledger["peak_in_flight"]["account1"] >= 1


def test_ledger_hash_ignores_int_versus_float(api: Api) -> None:
    api.request_id(**{"108_cfg": 3.5, "41_value": 8})
    api.request_id(**{"108_cfg": 3.5, "41_value": 8.0})
    assert list(api.emu.ledger()["submissions_by_input"].values()) == [2]


def test_peak_in_flight_counts_queued_and_running(slow_api: Api) -> None:
    for n in range(3):
        slow_api.request_id(**{"98_seed": n})
    slow_api.finish()
    slow_api.request_id()
    assert slow_api.emu.ledger()["peak_in_flight"] == {"account1": 3}


def test_restart_forgets_every_job(api: Api) -> None:
    rid = api.request_id()
    answer = httpx.post(f"{api.emu.origin}/_emulator/restart")
    assert answer.json() == {"forgotten": 1}
    response = api.http.get(f"{api.base}/requests/{rid}/status")
    assert response.status_code == 404
    assert response.json()["error_code"] == 404001
    ledger = api.emu.ledger()
    assert ledger["jobs"][0]["forgotten"] is True
    assert len(ledger["submissions_by_input"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"56_text": "x", "118_image": "a.png"},
        INPUTS,
        INPUTS | {"108_cfg": 4, "41_value": 8, "98_seed": -5},
    ],
)
def test_the_ledgers_completion_equals_the_models(api: Api, body: dict[str, object]) -> None:
    model = get_model(MODEL)
    state = api.emu.state
    assert state is not None
    completed = state.complete(model, dict(body))
    assert completed == model.complete(body)
    assert input_sha256(completed) == input_sha256(model.complete(body))
