"""Synthetic finished sweeps for the report's tests and benchmark: a store of done jobs whose
outputs are hard links to a few real videos (made by the emulator's renderer)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np

from orchestrator.store import Store

MODEL = "community/wan-2-2/vace-fun"
RAW = {"seed": "98_seed", "steps": "47_value", "cfg": "108_cfg", "shift": "41_value"}


@dataclass(frozen=True)
class Job:
    key: str
    index: int
    model_id: str = MODEL
    inputs: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def sample_videos(folder: Path, n: int, frames: int = 17) -> list[Path]:
    """``n`` small distinct MP4s of ``frames`` frames at 16 fps, made once per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / (f"sample-{i}.mp4" if frames == 17 else f"sample-{i}-{frames}f.mp4")
        if not path.exists():
            _encode(path, i, frames=frames)
        out.append(path)
    return out


def _encode(path: Path, i: int, size: int = 160, frames: int = 17, fps: int = 16) -> None:
    """A moving bar on a colour of its own (H.264, yuv420p): what Chromium plays."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for n in range(frames):
            rgb = np.full((size, size, 3), ((i * 70) % 256, (i * 40 + 90) % 256, 160), np.uint8)
            x = n * size // frames
            rgb[:, x : x + size // 10] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def synthetic_sweep(
    folder: Path, shape: Mapping[str, Sequence[Any]], videos: Sequence[Path], *, copy: bool = False
) -> list[Job]:
    """A results folder at ``folder`` whose store holds one done job per combination of
    ``shape`` (friendly name -> values), each output a hard link to one of ``videos`` (with
    ``copy``, a file of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(shape)
    jobs = []
    for i, combo in enumerate(itertools.product(*shape.values())):
        inputs = {"56_text": "a fox"} | {RAW[n]: v for n, v in zip(names, combo, strict=True)}
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        jobs.append(Job(key, i, inputs=inputs))
    db = folder / "comfysweep.db"
    with Store.open(db) as store:
        store.sync_jobs(jobs, MODEL)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for job in jobs:
        video = videos[job.index % len(videos)]
        name = f"out-{job.index:05d}.mp4"
        if copy:
            shutil.copyfile(video, folder / name)
        else:
            os.link(video, folder / name)
        output = {"path": name, "size": video.stat().st_size, "sha256": "", "url": ""}
        began = start + timedelta(seconds=job.index)
        ended = began + timedelta(seconds=30 + job.index % 17)
        rows.append((json.dumps([output]), _ts(began), _ts(began), _ts(ended), job.key))
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.executemany(
            "UPDATE jobs SET state = 'done', outputs = ?, submitted_at = ?, started_at = ?, "
            "finished_at = ? WHERE key = ?",
            rows,
        )
    return jobs


def _ts(value: datetime) -> str:
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
