"""The chaos suite's figures reach the terminal summary, which shows even under ``pytest -q``."""

from __future__ import annotations

import pytest

from .harness import FIGURES_KEY


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    figures = config.stash.get(FIGURES_KEY, None)
    if figures is not None:
        terminalreporter.write_line(figures.line())
        terminalreporter.write_line(figures.faults_line())
