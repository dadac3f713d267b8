from __future__ import annotations

import itertools
import json
import math
import os
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator import count_jobs, grid, iter_jobs, load_spec
from orchestrator import plan as planning
from orchestrator.cli import cli
from orchestrator.plan import stream_jobs
from orchestrator.prices import (
    estimate,
    home,
    last_duration,
    last_price,
    remember_duration,
    remember_price,
)

WAN = "community/wan-2-2/vace-fun"
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
QUICKSTART = SWEEPS / "quickstart.yaml"


@dataclass(frozen=True)
class Info:
    """Shaped like the client's ModelInfo, as far as prices go."""

    base_price_usd: float | None
    price_unit: str | None


def plan(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["plan", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def write_spec(folder: Path, body: dict[str, Any]) -> Path:
    base = {"model": WAN, "inputs": {"prompt": "a fox", "image": "https://x.io/a.png"}}
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(base | body, sort_keys=False))
    return path


def test_plan_prints_count_axes_first_jobs_and_unknown_estimates() -> None:
    out = plan(str(QUICKSTART)).stdout
    assert "8 jobs, 0 duplicates collapsed" in out
    assert "axes: seed (2) x steps (2) x cfg (2)" in out
    assert "image=start.png" in out
    first = next(iter_jobs(load_spec(QUICKSTART)))
    assert first.key[:10] in out
    assert (
        "estimated cost: unknown (no catalog price seen yet for community/wan-2-2/vace-fun" in out
    )
    assert "estimated wall time at concurrency 4: unknown" in out
    assert "plan --online" in out


def test_plan_json_is_one_object_with_jobs_and_cost() -> None:
    data = json.loads(plan(str(QUICKSTART), "--json", "--concurrency", "2").stdout)
    assert data["jobs"] == 8
    assert data["estimated_cost_usd"] is None
    assert data["estimated_wall_seconds"] is None
    assert data["axes"] == {"seed": 2, "steps": 2, "cfg": 2}
    assert data["concurrency"] == 2
    assert data["duplicates"] == 0
    assert len(data["first_jobs"]) == 5
    assert data["first_jobs"][0]["inputs"]["image"].startswith("data:image/png;base64,… (")
    assert data["first_jobs"][0]["files"] == {"image": "start.png"}
    assert data["output_seconds"] == 8 * 81 / 16


def test_plan_jobs_streams_every_job_as_jsonl() -> None:
    lines = plan(str(QUICKSTART), "--jobs").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    jobs = list(iter_jobs(load_spec(QUICKSTART)))
    assert [r["key"] for r in records] == [j.key for j in jobs]
    assert records[0]["inputs"]["seed"] == jobs[0].inputs["98_seed"]
    assert records[0]["inputs"]["prompt"] == jobs[0].inputs["56_text"]  # not cut
    assert set(records[0]["inputs"]) >= {"prompt", "image", "seed", "steps", "cfg", "shift"}


def test_plan_jobs_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three jobs out of 195,000 build three jobs, not the grid (counted, not timed)."""
    axes = {"seed": {"count": 1000}, "cfg": [1, 2, 3, 4, 5], "steps": list(range(2, 41))}
    spec = load_spec(write_spec(tmp_path, {"axes": axes}))
    assert count_jobs(spec).jobs == 1000 * 5 * 39
    keys: list[str] = []
    records: list[int] = []
    real_key, real_record = grid.job_key, planning.job_record

    def counted_key(*args: Any) -> str:
        keys.append(real_key(*args))
        return keys[-1]

    def counted_record(job: Any, **kwargs: Any) -> dict[str, Any]:
        records.append(job.index)
        return real_record(job, **kwargs)

    monkeypatch.setattr("orchestrator.grid.job_key", counted_key)
    monkeypatch.setattr("orchestrator.plan.job_record", counted_record)
    tracemalloc.start()
    try:
        first = list(itertools.islice(stream_jobs(spec), 3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["index"] for r in first] == [0, 1, 2]
    assert len(keys) <= 10
    assert records == [0, 1, 2]
    assert peak < 4_000_000  # all 195,000 combinations as dicts would take hundreds of MB


def test_plan_json_of_a_million_jobs(tmp_path: Path) -> None:
    axes = {"seed": {"count": 1000}, "cfg": {"start": 0.1, "stop": 10.0, "step": 0.1}}
    path = write_spec(tmp_path, {"axes": axes | {"shift": list(range(1, 11))}})
    data = json.loads(plan(str(path), "--json").stdout)
    assert data["jobs"] == 1_000_000
    assert data["axes"] == {"seed": 1000, "cfg": 100, "shift": 10}


def test_json_and_jobs_together_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["plan", str(QUICKSTART), "--json", "--jobs"])
    assert result.exit_code == 2
    assert "give --json or --jobs, not both" in result.stderr


def test_a_remembered_price_per_second_gives_a_cost() -> None:
    spec = load_spec(QUICKSTART)
    seen = remember_price(WAN, Info(0.05, "second"))
    assert seen is not None
    assert (home() / "prices.json").is_file()
    assert last_price(WAN) == seen
    guess = estimate(spec, count_jobs(spec))
    assert guess.cost_usd == pytest.approx(0.05 * 8 * 81 / 16)
    assert guess.wall_seconds is None
    data = json.loads(plan(str(QUICKSTART), "--json").stdout)
    assert data["estimated_cost_usd"] == pytest.approx(2.025)
    assert "estimated cost: $2.02" in plan(str(QUICKSTART)).stdout


def test_price_per_output_and_wall_time_at_concurrency() -> None:
    spec = load_spec(QUICKSTART)
    remember_price(WAN, Info(0.4, "output"))
    remember_duration(WAN, 90.0)
    assert last_duration(WAN) == 90.0
    guess = estimate(spec, 8, concurrency=3)
    assert guess.cost_usd == pytest.approx(3.2)
    assert guess.wall_seconds == 90.0 * math.ceil(8 / 3)
    data = json.loads(plan(str(QUICKSTART), "--json", "--concurrency", "8").stdout)
    assert data["estimated_wall_seconds"] == 90.0


def test_prices_are_kept_per_api_host(monkeypatch: pytest.MonkeyPatch) -> None:
    remember_price(WAN, Info(0.05, "second"))
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", "http://127.0.0.1:8123/v1")
    assert last_price(WAN) is None
    assert estimate(load_spec(QUICKSTART), 8).cost_usd is None
    remember_price(WAN, Info(0.0, "output"))
    assert last_price(WAN) is not None
    assert last_price(WAN, api_base="https://model-api.runcomfy.net/v1") is not None


@pytest.mark.parametrize("info", [Info(None, "second"), Info(0.1, "minute"), Info(-1.0, "output")])
def test_no_price_is_never_made_up(info: Info) -> None:
    assert remember_price(WAN, info) is None
    assert last_price(WAN) is None


def test_a_corrupt_cache_means_unknown(tmp_path: Path) -> None:
    home().mkdir(parents=True, exist_ok=True)
    (home() / "prices.json").write_text("{not json")
    assert last_price(WAN) is None
    assert estimate(load_spec(QUICKSTART), 8).cost_usd is None
    remember_price(WAN, Info(0.05, "second"))
    assert last_price(WAN) is not None


def test_home_is_read_at_each_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYSWEEP_HOME", str(tmp_path / "elsewhere"))
    remember_duration(WAN, 30.0)
    assert (tmp_path / "elsewhere" / "prices.json").is_file()
    monkeypatch.delenv("COMFYSWEEP_HOME")
    assert home() == Path(os.path.expanduser("~")) / ".comfysweep"


def test_output_seconds_follow_varying_frames(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {"axes": {"frames": [81, 141], "fps": [16, 24]}}))
    remember_price(WAN, Info(1.0, "second"))
    guess = estimate(spec, count_jobs(spec))
    assert guess.output_seconds == pytest.approx(81 / 16 + 81 / 24 + 141 / 16 + 141 / 24)
    assert guess.cost_usd == pytest.approx(guess.output_seconds)


def test_job_cost_follows_the_price_unit() -> None:
    from orchestrator.client import ModelInfo
    from orchestrator.models import get_model
    from orchestrator.prices import job_cost

    model = get_model("community/wan-2-2/vace-fun")
    inputs = model.complete({"prompt": "x", "image": "a.png", "frames": 141, "fps": 24})
    by_second = ModelInfo(model.model_id, 0.05, "second", {})
    assert job_cost(model, by_second, inputs) == pytest.approx(0.05 * 141 / 24)
    assert job_cost(model, ModelInfo(model.model_id, 0.3, "output", {}), inputs) == 0.3
    assert job_cost(model, ModelInfo(model.model_id, 0.3, "token", {}), inputs) is None
    assert job_cost(model, ModelInfo(model.model_id, None, "second", {}), inputs) is None
