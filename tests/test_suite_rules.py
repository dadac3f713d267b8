"""The suite's own rules: a failing example replays, and no test trips on a slow machine's clock."""

from __future__ import annotations

from pathlib import Path

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

TESTS = Path(__file__).parent


def test_hypothesis_keeps_its_example_database_and_has_no_deadline() -> None:
    assert isinstance(settings.default.database, DirectoryBasedExampleDatabase)
    assert settings.default.deadline is None


def test_no_test_turns_the_example_database_off() -> None:
    offenders = [
        path.relative_to(TESTS).as_posix()
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "test_suite_rules.py" and "database=None" in path.read_text()
    ]
    assert offenders == []
