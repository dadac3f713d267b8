"""`comfysweep run` end to end against the embedded emulator: files, manifest, ledger, resume."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import av
import httpx
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.errors import SpecError
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep, sweep_status

from .sweeps import SPEC, write_spec

FAST = Overrides(poll_interval=0.02)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def run(spec: Path, emu: Emulator, **kwargs: Any) -> Any:
    kwargs.setdefault("overrides", FAST)
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, **kwargs)


def manifest(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_sweep_ends_with_real_videos_a_manifest_and_one_charge_each(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    report = run(spec, emulator)
    assert report.complete, report
    folder = tmp_path / "results" / "grid"
    entries = manifest(folder)
    assert len(entries) == 4
    seeds = set()
    for entry in entries:
        assert entry["state"] == "done"
        assert entry["request_id"]
        assert entry["cost_usd"]
        assert entry["cost_usd"] > 0
        (output,) = entry["outputs"]
        path = folder / output["path"]
        data = path.read_bytes()
        assert len(data) == output["size"]
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (480, 480)
            assert stream.average_rate == 16
            assert sum(1 for _ in container.decode(stream)) == 81
        seeds.add(entry["inputs"]["seed"])
    assert seeds == {1, 2}
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}
    metadata = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    assert {m["file_name"] for m in metadata} == {e["outputs"][0]["path"] for e in entries}
    assert not list((folder / ".partial").iterdir())


def test_running_again_pays_nothing_and_editing_submits_only_new_keys(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    assert run(spec, emulator).complete
    assert len(emulator.ledger()["jobs"]) == 4
    spec.write_text(spec.read_text().replace("steps: [4, 8]", "steps: [4, 8, 12]"))
    assert run(spec, emulator).complete
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 6
    assert set(ledger["submissions_by_input"].values()) == {1}


def test_force_renders_again(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    assert run(spec, emulator, force=True).complete
    assert set(emulator.ledger()["submissions_by_input"].values()) == {2}


def test_missing_output_is_downloaded_again_without_paying(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    assert run(spec, emulator).complete
    folder = tmp_path / "results" / "grid"
    victim = folder / manifest(folder)[0]["outputs"][0]["path"]
    victim.unlink()
    assert run(spec, emulator).complete
    assert victim.exists()
    assert len(emulator.ledger()["jobs"]) == 4


def test_budget_stops_submitting_and_the_next_run_continues(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    catalog = httpx.get(
        f"{emulator.base_url}/models/community/wan-2-2/vace-fun",
        headers={"Authorization": f"Bearer {emulator.token}"},
    ).json()
    assert catalog["price_unit"] == "second"
    one_job = catalog["base_price_usd"] * 81 / 16
    budget = Overrides(concurrency=1, max_cost=one_job * 1.5, poll_interval=0.02)
    report = run(spec, emulator, overrides=budget)
    assert report.stop_reason
    assert "budget" in report.stop_reason
    assert report.counts["done"] == 1
    assert report.counts["pending"] == 3
    assert report.spent_usd == pytest.approx(one_job)
    assert sweep_status(spec)["counts"]["pending"] == 3
    assert run(spec, emulator).complete
    assert len(emulator.ledger()["jobs"]) == 4
    assert len(manifest(tmp_path / "results" / "grid")) == 4


NO_WAITS = RetryPolicy(wait=False)


def fault_run(tmp_path: Path, fault: str, **params: Any) -> tuple[Any, dict[str, Any], Path]:
    profile = FaultProfile.parse({"seed": 7, "faults": {fault: {"rate": 1.0, **params}}})
    config = EmulatorConfig(speed=2000.0, workers=4, faults=profile)
    spec = write_spec(tmp_path, name=fault)
    with Emulator(config) as emu:
        report = run(spec, emu, retry=NO_WAITS)
        return report, emu.ledger(), spec


@pytest.mark.parametrize(
    ("fault", "settings", "expected"),
    [
        # Refusals before anything was created are retried, even on a submit.
        ("rate_limit", {"endpoints": ["submit"], "limit": 3, "retry_after": 0}, {"done": 4}),
        # A 5xx answer to a submit leaves its outcome open: unknown, never resent.
        ("http_503", {"endpoints": ["submit"], "limit": 1}, {"done": 3, "unknown": 1}),
        ("proxy_html", {"endpoints": ["submit"], "limit": 1}, {"done": 3, "unknown": 1}),
        # Reads are retried through every transient fault.
        ("http_500", {"endpoints": ["status"], "limit": 3}, {"done": 4}),
        ("http_503_bare", {"endpoints": ["result"], "limit": 3}, {"done": 4}),
        ("proxy_html", {"endpoints": ["status", "result"], "limit": 3}, {"done": 4}),
        ("error_200", {"endpoints": ["status"], "limit": 2}, {"done": 4}),
        ("truncated_download", {"limit": 2}, {"done": 4}),
        # An output that is gone, and stays gone in a fresh result, is expired.
        ("early_expiry", {}, {"expired": 4}),
    ],
)
def test_request_faults_end_in_the_designed_state(
    tmp_path: Path, fault: str, settings: dict[str, Any], expected: dict[str, int]
) -> None:
    report, ledger, _ = fault_run(tmp_path, fault, **settings)
    assert {k: v for k, v in report.counts.items() if v} == expected
    assert set(ledger["submissions_by_input"].values()) == {1}
    # These 5xx faults create nothing: the unknown job was never made, and it was not resent.
    assert len(ledger["jobs"]) == 4 - expected.get("unknown", 0)


def test_expired_and_unknown_jobs_say_why(tmp_path: Path) -> None:
    report, _, _ = fault_run(tmp_path, "early_expiry")
    assert report.counts["expired"] == 4
    with Store.open(tmp_path / "results" / "early_expiry" / "comfysweep.db") as db:
        expired = list(db.jobs([JobState.EXPIRED]))
        assert len(expired) == 4
        for row in expired:
            (event,) = [e for e in db.events(row.key) if e.to_state == "expired"]
            assert event.detail
            assert "expired" in event.detail
    report, _, _ = fault_run(tmp_path, "drop_after_create", limit=1)
    assert report.counts["unknown"] == 1
    with Store.open(tmp_path / "results" / "drop_after_create" / "comfysweep.db") as db:
        (row,) = db.jobs([JobState.UNKNOWN])
        (event,) = [e for e in db.events(row.key) if e.to_state == "unknown"]
        assert event.detail
        assert "answer was lost" in event.detail, event.detail


def test_a_restart_that_forgets_jobs_makes_them_lost(tmp_path: Path) -> None:
    report, _, _ = fault_run(tmp_path, "restart", endpoints=["result"], limit=1)
    assert report.counts["lost"] >= 1
    assert report.counts["lost"] + report.counts["done"] == 4
    with Store.open(tmp_path / "results" / "restart" / "comfysweep.db") as db:
        row = next(db.jobs(["lost"]))
        (event,) = [e for e in db.events(row.key) if e.to_state == "lost"]
        assert event.detail
        assert "no longer knows" in event.detail


@pytest.mark.parametrize(
    ("fault", "state"),
    [
        ("fail_string", "failed"),
        ("fail_object", "failed"),
        ("fail_list", "failed"),
        ("bare_output", "done"),
        ("spell_processing", "done"),
        ("spell_pending", "done"),
        ("spell_succeeded", "done"),
        ("spell_completed", "done"),
    ],
)
def test_job_faults_end_in_the_designed_state(tmp_path: Path, fault: str, state: str) -> None:
    report, _, _ = fault_run(tmp_path, fault)
    assert report.counts[state] == 4, report


def test_failed_jobs_keep_the_error_message(tmp_path: Path) -> None:
    _, _, _spec = fault_run(tmp_path, "fail_object")
    entries = manifest(tmp_path / "results" / "fail_object")
    assert all(e["error"] for e in entries)
    with Store.open(tmp_path / "results" / "fail_object" / "comfysweep.db") as db:
        row = next(db.jobs([JobState.FAILED]))
        assert any(e.detail for e in db.events(row.key) if e.to_state == "failed")


def test_dropped_submit_becomes_unknown_and_is_never_resent(tmp_path: Path) -> None:
    report, ledger, _spec = fault_run(tmp_path, "drop_after_create")
    # Three answers lost in a row stop the sweep (a fourth may already have been on its way).
    assert report.counts["unknown"] >= 3
    assert report.counts["unknown"] + report.counts["pending"] == 4
    assert report.fatal
    assert "submits in a row lost their answer" in (report.stop_reason or "")
    assert set(ledger["submissions_by_input"].values()) == {1}
    assert len(ledger["jobs"]) == report.counts["unknown"]


def test_an_unknown_between_successes_does_not_stop_the_sweep(tmp_path: Path) -> None:
    report, ledger, _spec = fault_run(tmp_path, "drop_after_create", limit=1)
    assert (report.counts["unknown"], report.counts["done"]) == (1, 3)
    assert not report.fatal
    assert len(ledger["jobs"]) == 4


def test_bad_token_stops_at_once(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path)
    report = run_sweep(spec, base_url=emulator.base_url, token="wrong", overrides=FAST)
    assert report.fatal
    assert report.counts["pending"] == 4
    assert "token" in (report.stop_reason or "").lower()
    assert emulator.ledger()["jobs"] == []


def test_cli_run_without_token_says_how_to_get_one(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec)], catch_exceptions=False)
    assert result.exit_code == 1
    assert "RUNCOMFY_API_TOKEN" in result.output
    assert "--emulator" in result.output


def test_cli_status_json_counts(tmp_path: Path, emulator: Emulator) -> None:
    spec = write_spec(tmp_path)
    run(spec, emulator)
    result = CliRunner().invoke(cli, ["status", str(spec), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(result.output)["counts"]["done"] == 4


def test_plan_online_reads_the_catalog_price_and_estimates(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path)
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", emulator.base_url)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", emulator.token)
    offline = CliRunner().invoke(cli, ["plan", str(spec), "--json"], catch_exceptions=False)
    assert json.loads(offline.output)["estimated_cost_usd"] is None
    online = CliRunner().invoke(
        cli, ["plan", str(spec), "--json", "--online"], catch_exceptions=False
    )
    assert online.exit_code == 0, online.output
    catalog = httpx.get(
        f"{emulator.base_url}/models/community/wan-2-2/vace-fun",
        headers={"Authorization": f"Bearer {emulator.token}"},
    ).json()
    expected = catalog["base_price_usd"] * 4 * 81 / 16
    assert json.loads(online.output)["estimated_cost_usd"] == pytest.approx(expected, abs=1e-4)
    # Later plans reuse the last price seen, offline.
    again = CliRunner().invoke(cli, ["plan", str(spec), "--json"], catch_exceptions=False)
    assert json.loads(again.output)["estimated_cost_usd"] == pytest.approx(expected, abs=1e-4)


def test_finished_jobs_are_downloaded_before_new_submits(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one download slot and slow downloads, no submit leaves while an output waits."""
    from orchestrator.client import ModelApiClient, RemoteState

    ready: list[str] = []  # request ids whose result said succeeded
    fetching: set[str] = set()
    violations: list[str] = []
    real_result, real_download, real_submit = (
        ModelApiClient.result,
        ModelApiClient.download,
        ModelApiClient.submit,
    )

    async def result(self: ModelApiClient, request_id: str, include_cost: bool = True) -> Any:
        answer = await real_result(self, request_id, include_cost)
        if answer.state is RemoteState.SUCCEEDED and request_id not in ready:
            ready.append(request_id)
        return answer

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        fetching.add(url)
        await anyio.sleep(0.1)
        return await real_download(self, url, dest)

    async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Any:
        if len(ready) > len(fetching):
            violations.append(f"submit while {len(ready) - len(fetching)} output(s) waited")
        return await real_submit(self, model_id, inputs)

    monkeypatch.setattr(ModelApiClient, "result", result)
    monkeypatch.setattr(ModelApiClient, "download", download)
    monkeypatch.setattr(ModelApiClient, "submit", submit)
    spec = write_spec(tmp_path)
    report = run(
        spec, emulator, overrides=Overrides(concurrency=2, downloads=1, poll_interval=0.02)
    )
    assert report.complete
    assert len(ready) == 4
    assert violations == []


def test_an_empty_balance_stops_submitting_with_one_message(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, balance_usd=0.3)) as emu:
        report = run(spec, emu, retry=NO_WAITS)
        ledger = emu.ledger()
    assert report.fatal
    assert "balance" in (report.stop_reason or "").lower()
    assert report.counts["done"] == 1
    assert report.counts["pending"] == 3
    assert len(ledger["jobs"]) == 1


def test_an_input_the_server_refuses_on_the_first_job_stops_the_sweep(tmp_path: Path) -> None:
    # Every input the local schema passes, the server refuses (the refuse_input fault: 422001).
    report, ledger, _ = fault_run(tmp_path, "refuse_input")
    assert report.fatal
    assert "refused" in (report.stop_reason or "")
    assert report.counts["failed"] >= 1
    assert report.counts["pending"] + report.counts["failed"] == 4
    assert ledger["jobs"] == []


def test_a_data_uri_that_is_not_base64_is_refused_before_anything_is_sent(
    tmp_path: Path, emulator: Emulator
) -> None:
    body = SPEC.replace("https://example.com/fox.png", "'data:image/png;base64,@@not-base64@@'")
    spec = write_spec(tmp_path, body=body)
    with pytest.raises(SpecError, match=r"inputs\.image: a data: URI of image/png whose payload"):
        run(spec, emulator, retry=NO_WAITS)
    assert emulator.ledger()["jobs"] == []


def test_partial_downloads_of_live_runners_are_left_alone(tmp_path: Path) -> None:
    from orchestrator.models import get_model
    from orchestrator.results import ResultsFolder

    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{key}")
    folder.prepare()
    mine = folder.temp_path("a" * 64, 0)  # this process: alive
    mine.write_bytes(b"half")
    dead = folder.partial_dir / f"{'b' * 16}-0~{mine.name.split('~')[1]}~999999999.part"
    dead.write_bytes(b"half")
    other_host = folder.partial_dir / f"{'c' * 16}-0~elsewhere~1.part"
    other_host.write_bytes(b"half")
    legacy = folder.partial_dir / f"{'d' * 16}-0.part"
    legacy.write_bytes(b"half")
    assert folder.prepare() == 2
    assert mine.exists()
    assert other_host.exists()
    assert not dead.exists()
    assert not legacy.exists()


def test_retry_unknown_asks_first_and_resubmits_only_on_purpose(tmp_path: Path) -> None:
    profile = FaultProfile.parse({"faults": {"drop_after_create": {"rate": 1.0, "limit": 1}}})
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, faults=profile)) as emu:
        first = run(spec, emu, retry=NO_WAITS)
        assert first.counts["unknown"] == 1
        cli_runner = CliRunner()
        refused = cli_runner.invoke(cli, ["retry", str(spec), "--unknown"], input="n\n")
        assert refused.exit_code == 1
        assert "may pay twice" in refused.output
        assert sweep_status(spec)["counts"]["unknown"] == 1
        nothing = cli_runner.invoke(cli, ["retry", str(spec)])
        assert nothing.exit_code == 2
        assert "--unknown" in nothing.output
        agreed = cli_runner.invoke(cli, ["retry", str(spec), "--unknown"], input="y\n")
        assert agreed.exit_code == 0, agreed.output
        assert "1 job(s) back to pending" in agreed.output
        again = run(spec, emu, retry=NO_WAITS)
        ledger = emu.ledger()
    assert again.complete
    # The dropped submit had created its job: resubmitting on purpose paid for it twice.
    assert sorted(ledger["submissions_by_input"].values()) == [1, 1, 1, 2]


def test_retry_failed_jobs_runs_them_again(tmp_path: Path) -> None:
    profile = FaultProfile.parse({"faults": {"fail_string": {"rate": 1.0, "limit": 2}}})
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, faults=profile)) as emu:
        assert run(spec, emu, retry=NO_WAITS).counts["failed"] == 2
        result = CliRunner().invoke(cli, ["retry", str(spec), "--failed"])
        assert result.exit_code == 0, result.output
        assert run(spec, emu, retry=NO_WAITS).complete
