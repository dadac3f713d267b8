"""File names made from prompts and URLs cannot escape the results folder, through a real run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

HOSTILE_PROMPTS = [
    "../../../../escaped",
    "/etc/passwd",
    "..",
    ".",
    "./.hidden",
    "nul\x00byte/../..",
    "back\\slash\\..\\..\\up",
    "C:\\Windows\\evil",
    "CON",
    "x" * 3000,
    "é" * 400,  # 800 bytes of UTF-8 in one part
    "new\nline\r\ttab",
]
HOSTILE_IMAGES = [
    "https://example.com/../../etc/shadow.png",
    "https://example.com/a/..",
    "https://example.com/%2e%2e%2f%2e%2e%2fescape.png?x=../../y#../z",
]
SPEC = """\
name: names
model: community/wan-2-2/vace-fun
inputs:
  resolution: 480x480 (1:1)
  frames: 81
  seed: 1
axes:
  prompt: {prompts}
  image: {images}
run:
  concurrency: 8
  output: {output}
  filename: "{{prompt}}/{{image}}/seed-{{seed}}"
  poll_interval: 0.02
"""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=5000.0, workers=8)) as emu:
        yield emu


def test_hostile_prompts_and_urls_stay_inside_the_results_folder(
    tmp_path: Path, emulator: Emulator
) -> None:
    sandbox = tmp_path / "a" / "b" / "c" / "d"  # deep enough that '../../..' would land in tmp_path
    sandbox.mkdir(parents=True)
    spec = sandbox / "names.yaml"
    spec.write_text(
        SPEC.format(
            prompts=json.dumps(HOSTILE_PROMPTS),
            images=json.dumps(HOSTILE_IMAGES),
            output=sandbox / "results",
        )
    )
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
        retry=RetryPolicy(wait=False),
    )
    jobs = len(HOSTILE_PROMPTS) * len(HOSTILE_IMAGES)
    assert report.complete, report
    assert report.counts["done"] == jobs
    folder = (sandbox / "results" / "names").resolve()

    # Nothing was written outside the results folder (the spec file is the only other file).
    outside = [
        p for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(folder)
    ]
    assert outside == [spec]

    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    paths = [o["path"] for e in entries for o in e["outputs"]]
    assert len(paths) == len(set(paths)) == jobs
    for path in paths:
        assert not path.startswith("/")
        assert "\x00" not in path
        assert "\\" not in path
        parts = path.split("/")
        assert ".." not in parts
        assert "." not in parts
        assert all(part and not part.startswith(".") for part in parts), path
        assert all(len(part.encode()) <= 255 for part in parts), path
        target = folder / path
        assert Path(os.path.normpath(target)).is_relative_to(folder)
        assert target.is_file()
        assert target.stat().st_size == next(
            o["size"] for e in entries for o in e["outputs"] if o["path"] == path
        )
    files = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix == ".mp4"
    }
    assert files == set(paths)
