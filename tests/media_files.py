"""Small real outputs of every kind, made here (Pillow, PyAV) for the tests of verification,
the results folder, the report and the export: a tone of N seconds, a still of a size."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from orchestrator.store import JobState, Store

__all__ = ["audio_file", "finished_sweep", "image_bytes", "video_file"]

_AUDIO = {  # extension -> (container format, codec, sample format)
    "wav": ("wav", "pcm_s16le", "s16"),
    "mp3": ("mp3", "libmp3lame", "s16p"),
    "flac": ("flac", "flac", "s16"),
    "ogg": ("ogg", "libopus", "flt"),
    "m4a": ("ipod", "aac", "fltp"),
}


def image_bytes(
    fmt: str, width: int, height: int, colour: tuple[int, int, int] = (200, 80, 40)
) -> bytes:
    """A real image: PNG, JPEG, GIF or WEBP."""
    buffer = io.BytesIO()
    picture = Image.new("RGB", (width, height), colour)
    picture.putpixel((0, 0), (0, 0, 0))  # not one colour only: some encoders special-case that
    picture.save(buffer, fmt)
    return buffer.getvalue()


def audio_file(path: Path, seconds: float, *, rate: int = 8000) -> Path:
    """A mono tone of ``seconds`` in the format of ``path``'s extension."""
    fmt, codec, sample_format = _AUDIO[path.suffix.lstrip(".")]
    if codec == "libopus":
        rate = 48000
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        stream.format = sample_format
        total = round(seconds * rate)
        block = 1024
        for start in range(0, total, block):
            count = min(block, total - start)
            t = (np.arange(start, start + count) / rate).astype(np.float32)
            wave = 0.3 * np.sin(2 * math.pi * 440 * t)
            if sample_format.startswith("s16"):
                data = (wave * 32767).astype(np.int16).reshape(1, -1)
            else:
                data = wave.astype(np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_file(path: Path, width: int, height: int, frames: int, fps: int = 16) -> Path:
    """An H.264 MP4 of ``frames`` grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(i * 20) % 256]) * plane.buffer_size)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@dataclass(frozen=True)
class _Job:
    key: str
    index: int
    inputs: dict[str, Any]
    model_id: str
    repeat: int = 0
    sources: dict[str, str] | None = None


def finished_sweep(
    folder: Path, model_id: str, outputs: list[tuple[dict[str, Any], str, bytes]]
) -> Path:
    """A sweep whose jobs are all done, one per (inputs, file name, file bytes); its store."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Job(hashlib.sha256(f"{model_id}{i}".encode()).hexdigest(), i, inputs, model_id)
        for i, (inputs, _, _) in enumerate(outputs)
    ]
    with Store.open(folder / "comfysweep.db") as store:
        store.sync_jobs(jobs, model_id)
        for row in store.claim(len(jobs)):
            _, name, data = outputs[row.index]
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            output = {"path": name, "size": len(data), "sha256": digest, "url": f"u/{name}"}
            store.transition(row.key, JobState.QUEUED, request_id=f"r{row.index}")
            store.transition(row.key, JobState.SUCCEEDED, cost=0.5)
            store.transition(row.key, JobState.DONE, outputs=[output])
    return folder / "comfysweep.db"
