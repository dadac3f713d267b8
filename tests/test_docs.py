"""The README documents every command and every spec key the code accepts."""

from __future__ import annotations

from pathlib import Path

from orchestrator.cli import cli
from orchestrator.spec import RunSettings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_command_is_in_the_readme() -> None:
    for name in cli.commands:
        assert f"comfysweep {name}" in README, name


def test_every_run_setting_is_in_the_readme() -> None:
    for name in RunSettings.model_fields:
        assert f"`run.{name}`" in README, name


def test_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "comfysweep run sweeps/quickstart.yaml --emulator" in first_screen
    assert "pip install -e '.[dev]' && ./check" in first_screen
