"""Sweep specs and drivers that the run tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from .waiting import PATIENCE

SPEC = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  seed: [1, 2]
  steps: [4, 8]
run:
  concurrency: 3
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""


def write_spec(tmp_path: Path, name: str = "grid", body: str = SPEC) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body.format(name=name, output=tmp_path / "results"))
    return path


class Api(Protocol):
    base_url: str

    @property
    def token(self) -> str: ...


def run_until_killed(driver: Path, spec: Path, api: Api, *args: str) -> None:
    """Run ``driver SPEC ARGS...`` against ``api`` in a process that must end by SIGKILL."""
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": api.base_url, "RUNCOMFY_API_TOKEN": api.token}
    proc = subprocess.run(
        [sys.executable, str(driver), str(spec), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
