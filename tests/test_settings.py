"""Each run setting is declared once: the spec, the flags and the runner share its bounds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import orchestrator.client
import orchestrator.prices
import orchestrator.sweep
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import SpecError
from orchestrator.runner import Runner, RunOptions
from orchestrator.settings import RunSettings, flags
from orchestrator.store import RETRYABLE
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import SPEC, write_spec

OUT_OF_BOUNDS = [
    ("--downloads", "256"),  # the spec caps it at 64
    ("--downloads", "0"),
    ("--max-cost", "0"),
    ("--max-cost", "-1"),
    ("--concurrency", "0"),
    ("--poll-interval", "0"),
    ("--timeout", "601"),
    ("--max-cost", "inf"),  # not a number a cap can be: NaN and infinities pass every range
    ("--max-cost", "1e400"),
    ("--max-cost", "nan"),
    ("--poll-interval", "nan"),
    ("--timeout", "nan"),
]


@pytest.mark.parametrize(("flag", "value"), OUT_OF_BOUNDS)
def test_a_flag_out_of_the_spec_bounds_is_a_usage_error_naming_it(
    tmp_path: Path, flag: str, value: str
) -> None:
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec), "--emulator", flag, value])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert flag in errors[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()  # refused before anything was created


def test_a_flag_and_the_spec_have_the_same_bounds() -> None:
    """At each edge, what `run:` refuses the flag refuses, and what it takes the flag takes."""
    options = {p.name: p for p in cli.commands["run"].params}
    for flag in flags():
        if flag.kind is str:  # choices or free text: tests/test_order.py, tests/test_failures.py
            continue
        assert flag.low is not None
        step = 1 if flag.kind is int else 1e-6
        edges = [flag.low - step, flag.low, flag.low + step]
        if flag.high is not None:
            edges += [flag.high - step, flag.high, flag.high + step]
        for value in map(flag.kind, edges):
            try:
                RunSettings.model_validate({flag.name: value})
                spec_takes = True
            except ValueError:
                spec_takes = False
            try:
                options[flag.name].type.convert(value, None, None)
                flag_takes = True
            except click.BadParameter:
                flag_takes = False
            assert spec_takes == flag_takes, (flag.option, value)


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (Overrides(downloads=256), "--downloads"),
        (Overrides(max_cost=0), "--max-cost"),
        (Overrides(poll_interval=0), "--poll-interval"),
        (Overrides(timeout=0), "--timeout"),
    ],
)
def test_overrides_from_python_get_the_same_checks(
    tmp_path: Path, overrides: Overrides, flag: str
) -> None:
    spec = write_spec(tmp_path)
    with pytest.raises(SpecError, match=f"^{flag}: "):
        run_sweep(spec, emulator=True, overrides=overrides)
    assert not (tmp_path / "results").exists()


def test_every_flag_is_an_override_and_every_override_a_flag() -> None:
    assert {f.name for f in dataclasses.fields(Overrides)} == {f.name for f in flags()}
    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    for flag in flags():
        assert f"{flag.option} {flag.metavar}" in help_text


def test_defaults_are_written_once() -> None:
    settings, options = RunSettings(), RunOptions()
    for name in RunSettings.model_fields:
        assert getattr(options, name) == getattr(settings, name)
    assert settings.timeout == orchestrator.client.DEFAULT_TIMEOUT
    assert not hasattr(orchestrator.prices, "DEFAULT_API_BASE")  # the client's DEFAULT_BASE
    assert orchestrator.sweep.RETRYABLE is RETRYABLE


def test_the_runner_options_are_checked_too() -> None:
    with pytest.raises(ValueError, match="downloads"):
        RunOptions(downloads=256)


def test_a_flag_overrides_the_spec_which_overrides_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_options(monkeypatch)
    body = SPEC.replace("  concurrency: 3\n", "  concurrency: 3\n  downloads: 2\n")
    spec = write_spec(tmp_path, body=body)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(concurrency=5, timeout=7.5),
        )
    assert report.complete
    (options,) = seen
    assert options.concurrency == 5  # the flag, over the spec's 3
    assert options.downloads == 2  # the spec, over the default
    assert options.poll_interval == 0.02  # the spec's, as is against a real API
    assert options.timeout == 7.5
    assert options.max_cost is None  # the default


@pytest.mark.parametrize(
    ("spec_poll", "flag_poll", "expected"),
    [
        ("40", None, 40 / 2000),  # the spec's interval, at the emulator's speed
        ("40", 100.0, 100 / 2000),  # a flag, likewise
        ("2.0", None, 0.01),  # never below the floor
    ],
)
def test_the_emulator_scales_the_spec_poll_interval_by_its_speed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spec_poll: str,
    flag_poll: float | None,
    expected: float,
) -> None:
    seen = _record_options(monkeypatch)
    spec = write_spec(
        tmp_path, body=SPEC.replace("poll_interval: 0.02", f"poll_interval: {spec_poll}")
    )
    config = EmulatorConfig(speed=2000.0, workers=4)
    report = run_sweep(spec, emulator=config, overrides=Overrides(poll_interval=flag_poll))
    assert report.complete
    (options,) = seen
    assert options.poll_interval == pytest.approx(expected)


def _record_options(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    seen: list[RunOptions] = []
    real_init = Runner.__init__

    def init(self: Runner, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        seen.append(self.options)

    monkeypatch.setattr(Runner, "__init__", init)
    return seen


@pytest.mark.parametrize(("value", "shown"), [(".inf", "inf"), (".nan", "nan"), ("-.inf", "-inf")])
def test_a_non_finite_run_setting_in_the_spec_is_one_line(
    tmp_path: Path, value: str, shown: str
) -> None:
    spec = write_spec(tmp_path, body=SPEC + f"  max_cost: {value}\n")
    result = CliRunner().invoke(cli, ["plan", str(spec)])
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(f"run.max_cost: must be a finite number, got {shown}\n")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--speed", "inf"), ("--balance", "nan"), ("--balance", "1e400"), ("--output-ttl", "nan")],
)
def test_a_non_finite_emulator_flag_is_a_usage_error(flag: str, value: str) -> None:
    result = CliRunner().invoke(cli, ["emulator", "--port", "0", flag, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.stderr
