"""A hostile review of `comfysweep report`: each test is a break found, fixed after it failed."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli

from .reportdata import sample_videos, synthetic_sweep


def report(*args: str) -> Result:
    return CliRunner().invoke(cli, ["report", *args])


@pytest.mark.parametrize(("shape", "cells"), [({"seed": [1, 2, 3]}, 3), ({"seed": [1]}, 1)])
def test_video_of_a_sweep_with_one_or_no_varying_input(
    tmp_path: Path, shape: dict[str, list[int]], cells: int
) -> None:
    folder = tmp_path / "sweep"
    synthetic_sweep(folder, shape, sample_videos(tmp_path / "samples", 2))
    result = report("--store", str(folder / "comfysweep.db"), "--video")
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert result.output == f"{folder / 'report.mp4'}: {cells} cells\n"
    with av.open(str(folder / "report.mp4")) as mosaic:
        assert mosaic.streams.video[0].frames > 1
