"""A hostile review of LoRAs as object inputs and of prompt templates (issue 11): each test
failed before the fix committed with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import templates
from orchestrator.sources import Problem
from orchestrator.templates import Template


def wildcards(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "wildcards"
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("text", ["a{2$$a|a}", "{2$$a|a}", "x {2$$b|b} y"])
def test_a_part_that_makes_no_text_is_one_line_not_a_runtime_error(
    tmp_path: Path, text: str
) -> None:
    template = Template(text, wildcards(tmp_path, {}), "wildcards")
    assert template.count() == 0
    with pytest.raises(Problem, match=r"^template makes no prompt$"):
        template.expand()
    templates._build_parser()
