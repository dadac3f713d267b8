"""Every fault the emulator injects, seen from a plain httpx client, and the fault profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.emulator import FAULTS, FaultProfile, load_fault_profile, parse_fault_flag
from orchestrator.emulator.faults import FaultDice
from orchestrator.errors import EmulatorError
from tests.emulator.conftest import MODEL, MakeApi, ManualClock
from tests.waiting import wait_for

pytestmark = pytest.mark.chaos


def test_rate_limit_sends_retry_after_and_creates_nothing(make_api: MakeApi) -> None:
    api = make_api({"rate_limit": {"rate": 1.0, "retry_after": 3}})
    response = api.submit()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error_code"]
    assert api.emu.ledger()["jobs"] == []


@pytest.mark.parametrize(
    ("fault", "status", "has_body"),
    [
        ("http_500", 500, True),
        ("http_503", 503, True),
        ("http_500_bare", 500, False),
        ("http_503_bare", 503, False),
    ],
)
def test_server_errors_with_and_without_a_body(
    make_api: MakeApi, fault: str, status: int, has_body: bool
) -> None:
    api = make_api({fault: 1.0})
    response = api.submit()
    assert response.status_code == status
    if has_body:
        assert response.json()["error_code"] == 500001
    else:
        assert response.content == b""
    assert api.emu.ledger()["jobs"] == []


def test_proxy_html_page(make_api: MakeApi) -> None:
    api = make_api({"proxy_html": {"rate": 1.0, "endpoints": ["status"]}})
    rid = api.request_id()
    response = api.http.get(f"{api.base}/requests/{rid}/status")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text


def test_error_code_inside_http_200(make_api: MakeApi) -> None:
    api = make_api({"error_200": {"rate": 1.0, "endpoints": ["submit"]}})
    response = api.submit()
    assert response.status_code == 200
    assert response.json()["error_code"] == 500001
    assert "request_id" not in response.json()
    assert api.emu.ledger()["jobs"] == []


def test_slow_answer_passes_a_client_timeout_and_the_submit_still_happened(
    make_api: MakeApi,
) -> None:
    # The answer is held back far longer than the client waits, even on a busy machine.
    api = make_api({"slow": {"rate": 1.0, "delay": 5.0, "endpoints": ["submit"]}})
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(
            f"{api.base}/models/{MODEL}", json={"56_text": "x", "118_image": "a.png"}, timeout=0.1
        )
    wait_for(lambda: api.emu.ledger()["jobs"], "the job created behind the client's back")
    assert len(api.emu.ledger()["jobs"]) == 1


def test_dropped_connection_after_the_job_was_created(make_api: MakeApi) -> None:
    api = make_api({"drop_after_create": {"rate": 1.0, "limit": 1}})
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.submit()
    api.finish()
    jobs = api.emu.ledger()["jobs"]
    assert len(jobs) == 1
    assert jobs[0]["status"] == "succeeded"
    assert jobs[0]["cost"] > 0  # billed, though the client never learned the id
    assert api.submit().status_code == 200  # limit: 1


@pytest.mark.parametrize(
    ("fault", "shape"),
    [("fail_string", str), ("fail_object", dict), ("fail_list", list)],
)
def test_failed_jobs_in_each_error_shape(make_api: MakeApi, fault: str, shape: type[Any]) -> None:
    api = make_api({fault: 1.0})
    rid = api.request_id()
    api.finish()
    assert api.status(rid)["status"] == "completed"
    result = api.result(rid, cost=True)
    assert result["status"] == "failed"
    assert "output" not in result
    error: Any = result["error"]
    assert isinstance(error, shape)
    if shape is dict:
        assert set(error) == {"type", "message"}
    if shape is list:
        assert all(set(e) == {"type", "message"} for e in error)
    assert result["cost"] > 0


def test_bare_string_output(make_api: MakeApi) -> None:
    api = make_api({"bare_output": 1.0})
    rid = api.request_id()
    api.finish()
    output = api.result(rid)["output"]
    assert isinstance(output, str)
    assert output.endswith(".mp4")
    assert httpx.get(output).status_code == 200


def test_outputs_that_expire_before_download(make_api: MakeApi) -> None:
    api = make_api({"early_expiry": 1.0})
    rid = api.request_id()
    api.finish()
    assert httpx.get(api.result(rid)["output"]["video"]).status_code == 410


def test_truncated_download(make_api: MakeApi) -> None:
    api = make_api({"truncated_download": {"rate": 1.0, "fraction": 0.25, "limit": 1}})
    rid = api.request_id()
    api.finish()
    url = api.result(rid)["output"]["video"]
    chunks: list[bytes] = []
    with httpx.stream("GET", url) as response:
        total = int(response.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError):
            chunks.extend(response.iter_raw())
    assert 0 < sum(map(len, chunks)) < total
    whole = httpx.get(url)
    assert len(whole.content) == total


def test_spellings_pending_processing_succeeded_completed(make_api: MakeApi) -> None:
    clock = ManualClock()
    faults = dict.fromkeys(("spell_pending", "spell_processing", "spell_succeeded"), 1.0)
    api = make_api(faults | {"spell_completed": 1.0}, workers=1, clock=clock, speed=1.0)
    running, queued = api.request_id(), api.request_id()
    assert api.status(running)["status"] == "processing"
    assert api.status(queued)["status"] == "pending"
    assert api.status(queued)["queue_position"] == 0
    api.finish()
    assert api.status(running)["status"] == "succeeded"
    assert api.result(running)["status"] == "completed"
    assert "video" in api.result(running)["output"]


def test_spell_succeeded_says_failed_for_a_failed_job(make_api: MakeApi) -> None:
    api = make_api({"spell_succeeded": 1.0, "fail_object": 1.0})
    rid = api.request_id()
    api.finish()
    assert api.status(rid)["status"] == "failed"


def test_spelling_canceled(make_api: MakeApi) -> None:
    api = make_api({"spell_canceled": 1.0}, workers=1, clock=ManualClock(), speed=1.0)
    api.request_id()
    queued = api.request_id()
    answer = api.http.post(f"{api.base}/requests/{queued}/cancel").json()
    assert answer == {"request_id": queued, "status": "canceled", "outcome": "cancelled"}
    assert api.status(queued)["status"] == "canceled"
    assert api.result(queued)["status"] == "canceled"


def test_restart_fault_forgets_known_ids(make_api: MakeApi) -> None:
    api = make_api({"restart": {"rate": 1.0, "endpoints": ["result"], "limit": 1}})
    rid = api.request_id()
    assert api.status(rid)["status"]
    response = api.http.get(f"{api.base}/requests/{rid}/result")
    assert response.status_code == 404
    assert response.json()["error_code"] == 404001
    assert api.emu.ledger()["faults_fired"]["restart"] == 1


def test_balance_runs_out_mid_sweep_from_the_profile(make_api: MakeApi) -> None:
    api = make_api()
    api.emu.reset(faults=FaultProfile.parse({"balance_usd": 0.3}))
    assert api.submit().status_code == 200
    refused = api.submit(**{"98_seed": 5})
    assert (refused.status_code, refused.json()["error_code"]) == (402, 400002)


def test_faults_strike_only_their_endpoints(make_api: MakeApi) -> None:
    api = make_api({"rate_limit": {"rate": 1.0, "endpoints": ["submit"]}})
    assert api.http.get(f"{api.base}/models/{MODEL}").status_code == 200
    assert api.submit().status_code == 429


def _pattern(make_api: MakeApi, seed: int) -> list[int]:
    api = make_api({"rate_limit": 0.4}, seed=seed)
    return [api.http.get(f"{api.base}/models/categories").status_code for _ in range(30)]


def test_faults_are_deterministic_under_a_seed(make_api: MakeApi) -> None:
    first, again, other = _pattern(make_api, 7), _pattern(make_api, 7), _pattern(make_api, 8)
    assert first == again
    assert first != other
    assert 429 in first
    assert 200 in first


def test_job_faults_follow_their_rate() -> None:
    dice = FaultDice(FaultProfile.parse({"seed": 3, "faults": {"fail_list": 0.25}}))
    hits = sum("fail_list" in dice.job_faults() for _ in range(2000))
    assert 400 < hits < 600
    assert dice.fired() == {"fail_list": hits}


def test_every_documented_fault_is_known() -> None:
    wanted = {
        "rate_limit", "http_500", "http_500_bare", "http_503", "http_503_bare", "proxy_html",
        "error_200", "slow", "drop_after_create", "fail_string", "fail_object", "fail_list",
        "spell_canceled", "spell_succeeded", "spell_completed", "spell_processing",
        "bare_output", "early_expiry", "truncated_download", "restart",
    }  # fmt: skip
    assert wanted <= set(FAULTS)


def test_profile_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(
        "seed: 11\nbalance_usd: 2.5\nfaults:\n"
        "  rate_limit: {rate: 0.1, endpoints: [submit, status], retry_after: 2}\n"
        "  fail_object: 0.05\n  slow: {rate: 0.01, delay: 40, limit: 3}\n"
    )
    profile = load_fault_profile(path)
    assert profile.seed == 11
    assert profile.balance_usd == 2.5
    limit = profile.faults["rate_limit"]
    assert limit.endpoints == {"submit", "status"}
    assert limit.param("retry_after") == 2
    assert profile.faults["fail_object"].rate == 0.05
    assert profile.faults["slow"].limit == 3
    assert profile.faults["slow"].param("delay") == 40


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "must be a mapping"),
        ({"faultz": {}}, "faultz: unknown key"),
        ({"seed": "x"}, "seed: must be a whole number"),
        ({"balance_usd": -1}, "balance_usd: must be a number >= 0"),
        ({"faults": [1]}, "faults: must be a mapping"),
        ({"faults": {"nope": 1}}, "faults.nope: unknown fault"),
        ({"faults": {"slow": 2}}, "faults.slow.rate: must be a number from 0 to 1"),
        ({"faults": {"slow": {"delay": 1}}}, "faults.slow.rate: required"),
        ({"faults": {"slow": {"rate": 1, "dealy": 1}}}, "faults.slow.dealy: unknown setting"),
        ({"faults": {"slow": {"rate": 1, "delay": "long"}}}, "faults.slow.delay: must be"),
        ({"faults": {"http_500": {"rate": 1, "endpoints": ["x"]}}}, "faults.http_500.endpoints"),
        ({"faults": {"fail_list": {"rate": 1, "endpoints": ["submit"]}}}, "fail_list.endpoints"),
        ({"faults": {"restart": {"rate": 1, "limit": 0}}}, "faults.restart.limit"),
        ({"faults": {"truncated_download": {"rate": 1, "fraction": 1}}}, "fraction: must be"),
    ],
)
def test_bad_profiles_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(EmulatorError, match=r"^profile: ") as caught:
        FaultProfile.parse(data, source="profile")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_profile_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("faults: [\n")
    with pytest.raises(EmulatorError, match=r"broken\.yaml: not valid YAML at line 2"):
        load_fault_profile(broken)
    with pytest.raises(EmulatorError, match=r"missing\.yaml: cannot read fault profile"):
        load_fault_profile(tmp_path / "missing.yaml")


def test_fault_flags() -> None:
    spec = parse_fault_flag("rate_limit=0.2@submit,status")
    assert (spec.name, spec.rate, spec.endpoints) == (
        "rate_limit",
        0.2,
        frozenset({"submit", "status"}),
    )
    assert parse_fault_flag("fail_string=1").rate == 1.0
    bad_flags = [
        ("nope", "NAME=RATE"),
        ("slow=x", "not a number"),
        ("x=1", "unknown"),
        ("rate_limit=nan", "from 0 to 1, got nan"),  # NaN passed both bounds
    ]
    for bad, message in bad_flags:
        with pytest.raises(EmulatorError, match=message):
            parse_fault_flag(bad)
