"""Real MP4 outputs: H.264 (yuv420p) with exactly the job's width, height, frame count and fps.

The picture is a cheap pattern (a gradient, a moving bar, a pulse) whose colours and motion come
from a hash of the prompt, the seed and the image, mixed with the decoded image's mean colour when
the image is a ``data:`` URI. Files are cached by exactly those parameters plus the shape, so a
cached file always has the metadata the job asked for. 480x480x81 encodes in ~0.05 s and
1280x720x141 in ~0.3 s on 2 cores (ultrafast preset, frames built in YUV with numpy).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from orchestrator.canonical import canonical_json
from orchestrator.emulator.farm import resolution

__all__ = ["MediaCache", "Rendered", "decode_data_uri", "render_mp4", "video_shape"]

_VERSION = "emulator-media-1"


def decode_data_uri(value: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URI; None if ``value`` is not a data: URI.

    Raises ValueError when it is a data: URI that is not valid base64.
    """
    if not value.startswith("data:"):
        return None
    header, sep, payload = value[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError("data: URI must be base64 (data:<type>;base64,<data>)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data: URI payload is not valid base64") from None


def video_shape(inputs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Width, height, frames and fps of the video a job's inputs ask for."""
    width, height = resolution(inputs)
    return width, height, int(inputs.get("25_value", 81)), int(inputs.get("38_value", 16))


def _mean_colour(data: bytes) -> tuple[float, float, float]:
    """The decoded image's mean RGB, or (for bytes PyAV cannot decode) the raw bytes' mean."""
    try:
        with av.open(io.BytesIO(data), "r") as container:
            frame = next(container.decode(video=0))
        pixels = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        return float(pixels[0]), float(pixels[1]), float(pixels[2])
    except (av.error.FFmpegError, StopIteration, ValueError):
        raw = np.frombuffer(data[: len(data) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
        mean = raw.mean(axis=0) if len(raw) else np.zeros(3)
        return float(mean[0]), float(mean[1]), float(mean[2])


def render_mp4(path: Path, inputs: Mapping[str, Any]) -> None:
    """Encode the job's video to ``path``."""
    width, height, frames, fps = video_shape(inputs)
    digest = hashlib.sha256(_picture_material(inputs).encode()).digest()
    red, green, blue = float(digest[0]), float(digest[1]), float(digest[2])
    image = str(inputs.get("118_image", ""))
    data = decode_data_uri(image)
    if data is not None:
        mean = _mean_colour(data)
        red, green, blue = ((c + m) / 2 for c, m in zip((red, green, blue), mean, strict=True))
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    u = int(np.clip(128 + 0.564 * (blue - luma), 16, 240))
    v = int(np.clip(128 + 0.713 * (red - luma), 16, 240))
    base = np.empty((height * 3 // 2, width), dtype=np.uint8)
    ramp = np.linspace(32 + digest[3] % 64, 96 + luma / 2, width)
    base[:height] = ramp.astype(np.uint8)
    base[height : height + height // 4] = u  # the U plane, then the V plane (rows of width)
    base[height + height // 4 :] = v
    bar, step = max(2, width // (6 + digest[4] % 10)), 1 + digest[5] % 9
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = base.copy()
            x = (index * step * width // 97) % width
            frame[: height // 2, x : x + bar] = 235
            frame[height // 2 : height, :] //= 1 + (index % 8 == 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _picture_material(inputs: Mapping[str, Any]) -> str:
    """What the picture depends on: prompt, seed, image, and the shape of the file."""
    shape = video_shape(inputs)
    keys = ("56_text", "98_seed", "118_image")
    return canonical_json([_VERSION, list(shape), [inputs.get(k) for k in keys]])


@dataclass(frozen=True)
class Rendered:
    """A cached MP4: where it is, its size and its strong ETag."""

    path: Path
    size: int
    etag: str


class MediaCache:
    """Renders each distinct video once into ``folder`` (thread-safe, one render per key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Rendered] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.renders = 0

    def get(self, inputs: Mapping[str, Any]) -> Rendered:
        """The job's video, rendered now unless cached (call from a worker thread)."""
        key = hashlib.sha256(_picture_material(inputs).encode()).hexdigest()[:32]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                return self._done[key]
            path = self.folder / f"{key}.mp4"
            if not path.exists():
                fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".mp4.part")
                os.close(fd)
                try:
                    render_mp4(Path(tmp), inputs)
                    os.replace(tmp, path)
                finally:
                    Path(tmp).unlink(missing_ok=True)
                self.renders += 1
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._done[key] = Rendered(path, len(body), etag)
            return self._done[key]
