"""Sweep specs that the run tests share."""

from __future__ import annotations

from pathlib import Path

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
"""


def write_spec(tmp_path: Path, name: str = "grid", body: str = SPEC) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body.format(name=name, output=tmp_path / "results"))
    return path
