"""The README documents every command and every spec key the code accepts."""

from __future__ import annotations

from pathlib import Path

from orchestrator.cli import cli
from orchestrator.settings import MIN_POLL_INTERVAL, RunSettings, flags, readme_rows
from orchestrator.sweep import EMULATOR_SPEED

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_command_is_in_the_readme() -> None:
    for name in cli.commands:
        assert f"comfysweep {name}" in README, name


def test_every_run_setting_is_in_the_readme() -> None:
    for name in RunSettings.model_fields:
        assert f"`run.{name}`" in README, name


def test_the_readme_table_of_run_settings_is_the_declared_one() -> None:
    """Each row (meaning, bounds, flag, default) comes from RunSettings: none drifts."""
    lines = README.splitlines()
    for row in readme_rows():
        assert row in lines, f"README.md must have this row, as is:\n{row}"


def test_every_run_flag_is_in_the_readme() -> None:
    (line,) = [line for line in README.splitlines() if "`comfysweep run SPEC" in line]
    for flag in flags():
        assert f"[{flag.option} {flag.metavar}]" in line, flag.option


def test_the_readme_says_how_the_emulator_scales_the_poll_interval() -> None:
    assert f"divides `run.poll_interval` by {EMULATOR_SPEED:g}" in README
    assert f"never below {MIN_POLL_INTERVAL:g} s" in README


def test_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "comfysweep run sweeps/quickstart.yaml --emulator" in first_screen
    assert "pip install -e '.[dev]' && ./check" in first_screen
