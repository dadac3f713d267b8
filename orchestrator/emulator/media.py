"""Real MP4 outputs: H.264 (yuv420p) with exactly the job's width, height, frame count and fps.

The picture shows what the job asked for, so cells of a sweep's report differ the way the inputs do:

- burned-in text (top left): seed, steps, cfg, shift, a sampler if the inputs name one, and the
  start of the prompt;
- the background: a gradient whose colour comes from a hash of the prompt, the seed and the image,
  mixed with the decoded image's mean colour when the image is a ``data:`` URI;
- cfg sets the hue of a disc and of a striped band at the bottom (47 degrees per unit);
- steps set the detail and the pace: the band has steps / 2 stripes, scrolling a pixel a frame
  (per 480 pixels of width), so more steps pass more stripes a second;
- shift sets the stripes' slant and where the disc sits (right and down as shift grows).

Files are cached by exactly those inputs plus the shape, so a cached file always has the metadata
the job asked for. The text is drawn once per video (Pillow, its built-in font) and blended into
each frame with numpy; frames are built in YUV. 480x480x81 encodes in ~0.06 s and 1280x720x141 in
~0.3 s on 2 cores (ultrafast preset), as fast as the plain pattern before it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from orchestrator.canonical import canonical_json
from orchestrator.emulator.farm import resolution
from orchestrator.lettering import Font, fit, font

__all__ = [
    "MAX_DECODED_PIXELS",
    "WORDS",
    "MediaCache",
    "Rendered",
    "decodable",
    "decode_data_uri",
    "render_mp4",
    "text_overlay",
    "video_shape",
]

_VERSION = "emulator-media-2"
# A look's key for the words burned in instead of vace-fun's (seed, steps...): outputs.py draws
# another model's video through this module with its own inputs as the words.
WORDS = "_emulator_words"


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


# An input image is decoded for its colour only up to this many pixels (its header says): a
# small PNG may claim 40000x40000, which would take gigabytes and minutes to decode.
MAX_DECODED_PIXELS = 32_000_000


def decodable(data: bytes) -> bool:
    """Whether an input image is small enough to decode, by its header; True where Pillow
    cannot read the header (PyAV may, and bounds its own sizes)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return False
    except (OSError, ValueError, SyntaxError, EOFError):
        return True
    return width * height <= MAX_DECODED_PIXELS


def _mean_colour(data: bytes) -> tuple[float, float, float]:
    """The decoded image's mean RGB, or (for bytes PyAV cannot decode, or too large to) the raw
    bytes' mean."""
    try:
        if not decodable(data):
            raise ValueError("too large to decode")
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
    scene = _Scene(inputs)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(scene.frame(index), format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def text_overlay(inputs: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """The burned-in text as an alpha mask (0-255, even sides), drawn top left on every frame.

    Pillow's built-in font (no system font needed), sized to the frame: 24 px at 480x480, 9 px
    (about the smallest legible) at 160x90. Long values and the prompt are cut to the width.
    """
    size = max(9, round(min(width, height) / 20))
    face = font(size)
    pad = max(2, size // 3)
    lines = _lines(inputs, face, max(1, width - 2 * pad))
    step = round(size * 1.25)
    text_width = max((face.getlength(line) for line in lines), default=0.0)
    panel_width = min(width, _even(math.ceil(text_width) + 2 * pad))
    panel_height = min(height, _even(len(lines) * step + 2 * pad))
    image = Image.new("L", (panel_width, panel_height), 0)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((pad, pad + row * step), line, fill=255, font=face)
    return np.asarray(image, dtype=np.uint8)


_DEFAULTS = {"47_value": 12.0, "108_cfg": 3.5, "41_value": 8.0}  # the model schema's defaults
_SHOWN = (("seed", "98_seed"), ("steps", "47_value"), ("cfg", "108_cfg"), ("shift", "41_value"))
_SHADE = 0.45  # how much of the picture the text panel lets through


def _even(value: int) -> int:
    return value + value % 2


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return " ".join(text.split())


def _sampler_key(inputs: Mapping[str, Any]) -> str | None:
    return next((key for key in sorted(inputs) if "sampler" in key.lower() and key != WORDS), None)


def _lines(inputs: Mapping[str, Any], font: Font, room: int) -> list[str]:
    """The inputs as ``name value`` words packed into lines ``room`` wide, then the prompt."""
    words = [f"{name} {_show(inputs[key])}" for name, key in _SHOWN if key in inputs]
    sampler = _sampler_key(inputs)
    if sampler is not None:
        words.append(f"sampler {_show(inputs[sampler])}")
    if WORDS in inputs:  # another model's picture: its own words (outputs.py)
        words = [str(word) for word in inputs[WORDS]]
    lines: list[str] = []
    for word in words:
        joined = f"{lines[-1]}  {word}" if lines else word
        if lines and font.getlength(joined) <= room:
            lines[-1] = joined
        else:
            lines.append(fit(word, font, room))
    prompt = " ".join(str(inputs.get("56_text", "")).split())
    if prompt:
        lines.append(fit(prompt, font, room))
    return lines


def _number(inputs: Mapping[str, Any], key: str) -> float:
    """A numeric input for the picture, or the schema's default when absent or not a number."""
    try:
        value = float(inputs.get(key, _DEFAULTS[key]))
    except (TypeError, ValueError):
        return _DEFAULTS[key]
    return min(max(value, 0.0), 1000.0) if math.isfinite(value) else _DEFAULTS[key]


def _hue(degrees: float, radius: float = 100.0) -> tuple[int, int]:
    """The U and V of a saturated colour ``degrees`` around the colour wheel."""
    angle = math.radians(degrees)
    u = 128 + radius * math.cos(angle)
    v = 128 + radius * math.sin(angle)
    return int(np.clip(u, 16, 240)), int(np.clip(v, 16, 240))


def _planes(frame: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of a yuv420p frame's Y, U and V planes."""
    chroma = frame[height:].reshape(2, height // 2, -1)
    return frame[:height], chroma[0], chroma[1]


def _background(inputs: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """A yuv420p gradient coloured by the prompt, the seed and the image (their hash)."""
    digest = hashlib.sha256(_identity(inputs).encode()).digest()
    red, green, blue = float(digest[0]), float(digest[1]), float(digest[2])
    data = decode_data_uri(str(inputs.get("118_image", "")))
    if data is not None:
        mean = _mean_colour(data)
        red, green, blue = ((c + m) / 2 for c, m in zip((red, green, blue), mean, strict=True))
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    frame = np.empty((height * 3 // 2, width), dtype=np.uint8)
    y, u, v = _planes(frame, height)
    y[:] = np.linspace(32 + digest[3] % 64, 96 + luma / 2, width).astype(np.uint8)
    u[:] = int(np.clip(128 + 0.564 * (blue - luma), 16, 240))
    v[:] = int(np.clip(128 + 0.713 * (red - luma), 16, 240))
    return frame


class _Scene:
    """Everything a frame is made of, computed once per video; ``frame(i)`` composes frame i."""

    def __init__(self, inputs: Mapping[str, Any]) -> None:
        width, height, frames, _ = video_shape(inputs)
        steps, cfg, shift = (_number(inputs, key) for key in ("47_value", "108_cfg", "41_value"))
        self.width, self.height, self.frames = width, height, frames
        self.base = _background(inputs, width, height)
        self.hue = _hue(cfg * 47.0)
        # The band: steps / 2 sine stripes in cfg's hue, slanted by shift, scrolling a pixel a
        # frame per 480 of width (so more steps, more stripes passing a second). Faster than
        # that, or a moving disc, costs x264's ultrafast preset bits in every frame: files
        # twice the size, which a tiny results disk in the tests notices.
        band = max(2, height // 4 // 2 * 2)
        self.band_top = height - band
        self.period = max(4, round(width / max(1.0, steps / 2)))
        columns = np.arange(width + self.period)[None, :] + shift / 10 * np.arange(band)[:, None]
        self.stripes = (110 + 70 * np.sin(2 * np.pi * columns / self.period)).astype(np.uint8)
        self.scroll = max(1, width // 480)
        _, u, v = _planes(self.base, height)
        u[self.band_top // 2 :], v[self.band_top // 2 :] = self.hue
        # The disc: cfg's hue, placed by shift (further right and lower as shift grows).
        size = max(4, min(width, height) // 4 // 2 * 2)
        grid = np.arange(size) - (size - 1) / 2
        disc = grid[:, None] ** 2 + grid[None, :] ** 2 <= (size / 2) ** 2
        alpha = text_overlay(inputs, width, height).astype(np.float64) / 255
        place = min(1.0, max(0.0, (shift - 1) / 15))
        low = alpha.shape[0]
        top = low + (max(low, self.band_top - size) - low) * place
        top = max(0, min(height - size, int(top) // 2 * 2))
        left = int((width - size) * (0.2 + 0.6 * place)) // 2 * 2
        y, u, v = _planes(self.base, height)
        y[top : top + size, left : left + size][disc] = 200
        for plane, value in zip((u, v), self.hue, strict=True):
            plane[top // 2 : (top + size) // 2, left // 2 : (left + size) // 2][disc[::2, ::2]] = (
                value
            )
        # The text panel, blended as (picture * keep + add) >> 8 in 16-bit integers.
        self.keep = np.round((1 - alpha) * _SHADE * 256).astype(np.uint16)
        self.add = np.round(alpha * 235 * 256).astype(np.uint16)
        rows, cols = alpha.shape
        chroma = alpha.reshape(rows // 2, 2, cols // 2, 2).max(axis=(1, 3))
        self.keep_chroma = np.round((1 - chroma) * _SHADE * 256).astype(np.uint16)
        self.add_chroma = (128 * (256 - self.keep_chroma)).astype(np.uint16)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as a yuv420p array."""
        frame = self.base.copy()
        y, u, v = _planes(frame, self.height)
        scroll = index * self.scroll % self.period
        y[self.band_top :] = self.stripes[:, scroll : scroll + self.width]
        rows, cols = self.keep.shape
        y[:rows, :cols] = (y[:rows, :cols] * self.keep + self.add) >> 8
        rows, cols = self.keep_chroma.shape
        for plane in (u, v):
            plane[:rows, :cols] = (plane[:rows, :cols] * self.keep_chroma + self.add_chroma) >> 8
        return frame


def _identity(inputs: Mapping[str, Any]) -> str:
    """What the background depends on: prompt, seed, image, and the shape of the file."""
    keys = ("56_text", "98_seed", "118_image")
    return canonical_json([_VERSION, list(video_shape(inputs)), [inputs.get(k) for k in keys]])


def _picture_material(inputs: Mapping[str, Any]) -> str:
    """What the whole picture depends on: the background's inputs, steps, cfg, shift, sampler."""
    keys = ("47_value", "108_cfg", "41_value")
    sampler = _sampler_key(inputs)
    varying = [inputs.get(k) for k in keys] + [sampler, inputs.get(sampler or "")]
    return canonical_json([_identity(inputs), varying])


@dataclass(frozen=True)
class Rendered:
    """A cached output file: where it is, its size and its strong ETag."""

    path: Path
    size: int
    etag: str


class MediaCache:
    """Renders each distinct output once into ``folder`` (thread-safe, one render per key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Rendered] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.renders = 0

    def get(self, inputs: Mapping[str, Any]) -> Rendered:
        """The job's video, rendered now unless cached (call from a worker thread)."""
        return self.made(_picture_material(inputs), "mp4", lambda path: render_mp4(path, inputs))

    def made(self, material: str, extension: str, render: Callable[[Path], None]) -> Rendered:
        """The file ``render`` writes for ``material`` (what it depends on), made once."""
        key = hashlib.sha256(material.encode()).hexdigest()[:32]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                return self._done[key]
            path = self.folder / f"{key}.{extension}"
            if not path.exists():
                fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=f".{extension}.part")
                os.close(fd)
                try:
                    render(Path(tmp))
                    os.replace(tmp, path)
                finally:
                    Path(tmp).unlink(missing_ok=True)
                self.renders += 1
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._done[key] = Rendered(path, len(body), etag)
            return self._done[key]
