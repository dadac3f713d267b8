"""Failing jobs: `retries` resubmits remote failures (each a new paid attempt), never a refused
input; `max_failures` stops a run whose jobs keep failing, naming the commonest error."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.errors import SpecError
from orchestrator.failures import FailureLimit
from orchestrator.runner import RunReport
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

SPEC = """\
name: fails
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  steps: {steps}
  seed: {seeds}
run:
  output: {output}
  poll_interval: 0.01
  rate: 1000
  order: grid
  concurrency: 1
"""
OOM = "Sampler failed: CUDA out of memory (emulated fault)"


def write(tmp_path: Path, *, steps: str = "[4, 8]", seeds: str = "[1, 2]") -> Path:
    path = tmp_path / "fails.yaml"
    path.write_text(SPEC.format(output=tmp_path / "results", steps=steps, seeds=seeds))
    return path


def emulator(limit: int | None = None, rate: float = 1.0) -> Emulator:
    fault: dict[str, Any] = {"rate": rate}
    if limit is not None:
        fault["limit"] = limit
    profile = FaultProfile.parse({"faults": {"fail_string": fault}})
    return Emulator(EmulatorConfig(speed=2000.0, workers=2, faults=profile))


def run(spec: Path, emu: Emulator, **overrides: Any) -> RunReport:
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(**overrides))


def rows(spec: Path) -> list[Any]:
    with Store.open(load_spec(spec).results_dir / "comfysweep.db", readonly=True) as store:
        return list(store.jobs())


def details(spec: Path, key: str) -> list[str | None]:
    with Store.open(load_spec(spec).results_dir / "comfysweep.db", readonly=True) as store:
        return [e.detail for e in store.events(key)]


def test_retries_resubmit_a_remote_failure_as_a_new_paid_attempt(tmp_path: Path) -> None:
    spec = write(tmp_path)
    with emulator(limit=2) as emu:  # the first two submits fail remotely, then none
        report = run(spec, emu, retries=2)
        billed = len(emu.ledger()["jobs"])
    assert report.complete, report
    assert billed == 6  # 4 jobs, the first one submitted three times
    first = min(rows(spec), key=lambda r: r.index)
    assert first.attempts == 3
    assert first.state is JobState.DONE
    said = details(spec, first.key)
    assert f"retry 1 of 2: the API reported it failed: {OOM}" in said
    assert f"retry 2 of 2: the API reported it failed: {OOM}" in said


def test_a_job_is_retried_at_most_retries_times(tmp_path: Path) -> None:
    spec = write(tmp_path)
    with emulator(limit=2) as emu:
        report = run(spec, emu, retries=1)
        billed = len(emu.ledger()["jobs"])
    assert report.counts["failed"] == 1
    assert report.counts["done"] == 3
    assert billed == 5
    (failed,) = [r for r in rows(spec) if r.state is JobState.FAILED]
    assert failed.attempts == 2


def test_without_retries_a_failed_job_stays_failed(tmp_path: Path) -> None:
    spec = write(tmp_path)
    with emulator(limit=2) as emu:
        report = run(spec, emu)
        billed = len(emu.ledger()["jobs"])
    assert (report.counts["failed"], report.counts["done"], billed) == (2, 2, 4)


def test_a_refused_input_is_never_retried(tmp_path: Path) -> None:
    spec = write(tmp_path, seeds="[1]")
    # Seed 1's dice let the first submit through and refuse the second (422), once.
    refuse = {"seed": 1, "faults": {"refuse_input": {"rate": 0.5, "limit": 1}}}
    config = EmulatorConfig(speed=2000.0, workers=2, faults=FaultProfile.parse(refuse))
    with Emulator(config) as emu:
        report = run(spec, emu, retries=3)
        ledger = emu.ledger()
    assert ledger["faults_fired"] == {"refuse_input": 1}
    assert (report.counts["done"], report.counts["failed"], len(ledger["jobs"])) == (1, 1, 1)
    (refused,) = [r for r in rows(spec) if r.state is JobState.FAILED]
    assert refused.attempts == 1


def test_max_failures_count_stops_the_run_naming_the_commonest_error(tmp_path: Path) -> None:
    spec = write(tmp_path)
    with emulator() as emu:  # every job fails
        report = run(spec, emu, max_failures="2")
        billed = len(emu.ledger()["jobs"])
    line = (
        "stopped submitting: 2 of 2 finished jobs failed (max_failures 2); "
        f"the commonest error (2x): {OOM}"
    )
    assert line in report.messages
    assert report.stop_kind == "failures"
    assert report.stop_reason == line
    assert (billed, report.counts["failed"], report.counts["pending"]) == (2, 2, 2)


def test_max_failures_share_waits_for_enough_finished_jobs(tmp_path: Path) -> None:
    spec = write(tmp_path, steps="[4, 8, 12]", seeds="[1, 2, 3, 4]")
    with emulator(limit=3) as emu:  # the first three fail: 3 of 3 is no reason to stop yet
        report = run(spec, emu, max_failures="20%")
        billed = len(emu.ledger()["jobs"])
    line = (
        "stopped submitting: 3 of 10 finished jobs failed (max_failures 20%); "
        f"the commonest error (3x): {OOM}"
    )
    assert line in report.messages
    assert (billed, report.counts["pending"]) == (10, 2)


def test_max_failures_in_the_spec_counts_too(tmp_path: Path) -> None:
    spec = write(tmp_path)
    spec.write_text(spec.read_text() + "  max_failures: 1\n")
    with emulator() as emu:
        report = run(spec, emu)
    assert report.stop_kind == "failures"
    assert report.counts["pending"] == 3


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (10, FailureLimit(count=10, text="10")),
        ("0.2", FailureLimit(share=0.2, text="0.2")),
        ("20%", FailureLimit(share=0.2, text="20%")),
        (0.5, FailureLimit(share=0.5, text="0.5")),
    ],
)
def test_max_failures_reads_a_count_or_a_share(value: Any, parsed: FailureLimit) -> None:
    assert FailureLimit.parse(value) == parsed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "a count must be at least 1, got '0'"),
        ("150%", "a share must be above 0% and below 100%, got '150%'"),
        ("1.5", "a share must be above 0 and below 1 (or a whole count), got '1.5'"),
        ("lots", "give a count such as 10, or a share such as 0.2 or 20%, got 'lots'"),
    ],
)
def test_a_bad_max_failures_is_one_line_naming_the_flag(
    tmp_path: Path, value: str, message: str
) -> None:
    spec = write(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec), "--emulator", "--max-failures", value])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: --max-failures: {message}"]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (".nan", "a share must be above 0 and below 1 (or a whole count), got nan"),
        ("true", "give a count such as 10, or a share such as 0.2 or 20%, got True"),
        ("[3]", "give a count such as 10, or a share such as 0.2 or 20%, got [3]"),
    ],
)
def test_a_max_failures_of_another_yaml_type_says_what_is_allowed(
    tmp_path: Path, value: str, message: str
) -> None:
    """Not the union's "run.max_failures.int: must be a whole number" for a NaN or a bool."""
    spec = write(tmp_path)
    spec.write_text(spec.read_text() + f"  max_failures: {value}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert re.fullmatch(
        rf"\S*fails.yaml:\d+:\d+: run.max_failures: {re.escape(message)}", str(caught.value)
    )


def test_a_bad_max_failures_in_the_spec_names_its_place(tmp_path: Path) -> None:
    spec = write(tmp_path)
    spec.write_text(spec.read_text() + "  max_failures: -3\n")
    with pytest.raises(SpecError, match=r"fails.yaml:\d+:\d+: run.max_failures: .*at least 1"):
        load_spec(spec)
