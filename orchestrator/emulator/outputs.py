"""What each emulated model makes, what it costs, and the real file the emulator renders for it.

Every model but vace-fun (media.py draws its videos from its own inputs) is drawn here from its
inputs, so the cells of a sweep differ the way its inputs do:

- **video** (MP4, H.264 yuv420p, ``VIDEO_FPS`` frames a second, no audio track): ``duration``
  seconds (an integer, or a string such as ``"5"`` or ``"5s"``; ``"auto"`` and a missing value
  are 5 s), at the asked ``aspect_ratio`` (exact) and ``resolution`` (``480p``/``720p``/``1080p``,
  or the ``1080p`` in the model id; 720p otherwise) scaled down ``SCALE`` times: its short side
  is the resolution / SCALE, rounded to the nearest size whose sides are even and exactly in the
  ratio (1080p 16:9 -> 384x216, 720p 16:9 -> 256x144, 480p 16:9 -> 160x90); ``auto`` and
  ``adaptive`` are the model's ratio nearest the first input image's when that is a ``data:``
  URI, else 16:9.
  The picture is media.py's (gradient, disc, scrolling band, burned-in text), with the model's own
  inputs as the words, a LoRA's scale as the hue, and every other input in a hash of colours;
- **image** (PNG, or JPEG when ``output_format`` asks for ``jpeg``/``jpg``): as many pixels as a
  ``1K`` (1024x1024) or ``2K`` image of the asked ratio, scaled down SCALE times (1K 1:1 -> 205x205,
  1K 16:9 -> 272x153); ``auto`` is as for a video, else 1:1. The same picture elements, drawn
  with Pillow;
- **audio** (WAV, 16-bit mono at ``AUDIO_RATE``, or MP3 when ``output_format`` asks): ``duration``
  seconds of notes whose pitch follows the tags and seed, and whose tempo and melody follow every
  other input (a hash).

Billing: vace-fun's unchanged (farm.py); the others ``base_price_usd`` per second of output (video,
audio) or per output (an image), from the catalog. Simulated GPU time (divided by the speed): video
30 s + 6 s per second of output at 720p (scaled by the real pixel count), image 8 s, audio
5 s + a quarter of its length.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from orchestrator import magic
from orchestrator.canonical import canonical_json
from orchestrator.emulator import farm
from orchestrator.emulator.catalog import Offer
from orchestrator.emulator.media import (
    WORDS,
    decodable,
    decode_data_uri,
    render_mp4,
    video_shape,
)
from orchestrator.lettering import fit, font

__all__ = [
    "AUDIO_RATE",
    "SCALE",
    "VIDEO_FPS",
    "Output",
    "gpu_seconds",
    "job_cost",
    "output_of",
    "render",
]

SCALE = 5  # an emulated picture has 1/SCALE of the real one's width and height
VIDEO_FPS = 16
AUDIO_RATE = 16_000
_VERSION = "emulator-outputs-1"
_VACE = "community/wan-2-2/vace-fun"
_SHORT_SIDE = {"480p": 480, "540p": 540, "720p": 720, "1080p": 1080, "1440p": 1440, "2160p": 2160}
_IMAGE_SIDE = {"1k": 1024, "2k": 2048, "4k": 4096}


@dataclass(frozen=True)
class Output:
    """The file a job makes: its kind, extension, type, length and (emulated) picture size."""

    kind: str  # video | image | audio
    extension: str  # mp4 | png | jpg | wav | mp3
    seconds: float = 0.0  # of video or audio
    width: int = 0
    height: int = 0
    fps: int = 0
    real_pixels: int = 0  # what the real model's picture would have

    @property
    def content_type(self) -> str:
        return magic.MIME_TYPES[self.extension]


def output_of(offer: Offer, inputs: Mapping[str, Any]) -> Output:
    """What a job of ``offer``'s model with these (complete) inputs makes."""
    if offer.model_id == _VACE:
        width, height, frames, fps = video_shape(inputs)
        return Output("video", "mp4", frames / fps, width, height, fps, width * height)
    kind = offer.model.output_kind
    ratio = _ratio(inputs.get("aspect_ratio"), (0, 0))
    if ratio == (0, 0):  # auto, adaptive or none
        ratio = _image_ratio(offer, inputs) or ((16, 9) if kind == "video" else (1, 1))
    fmt = str(inputs.get("output_format", "")).lower()
    if kind == "image":
        side = _IMAGE_SIDE.get(str(inputs.get("resolution", "1K")).lower(), 1024)
        k = max(1, round(side / SCALE / math.sqrt(ratio[0] * ratio[1])))
        real = round(side / math.sqrt(ratio[0] * ratio[1]))
        extension = "jpg" if fmt in ("jpeg", "jpg") else "png"
        return Output("image", extension, 0.0, ratio[0] * k, ratio[1] * k, 0, _area(ratio, real))
    seconds = _seconds(inputs.get("duration"))
    if kind == "audio":
        return Output("audio", "mp3" if fmt == "mp3" else "wav", seconds)
    short = _short_side(offer.model_id, inputs.get("resolution"))
    k = max(2, round(short / SCALE / min(ratio) / 2) * 2)
    width, height = ratio[0] * k, ratio[1] * k
    real = _area(ratio, short / min(ratio))
    return Output("video", "mp4", seconds, width, height, VIDEO_FPS, real)


def job_cost(offer: Offer, inputs: Mapping[str, Any], made: Output | None = None) -> float:
    """What a job is billed: per second of output, or per output (``made``: its output_of)."""
    if offer.model_id == _VACE:
        return farm.job_cost(inputs)
    if offer.price_unit == "output":
        return offer.base_price_usd
    return offer.base_price_usd * (made or output_of(offer, inputs)).seconds


def gpu_seconds(offer: Offer, inputs: Mapping[str, Any], made: Output | None = None) -> float:
    """Simulated GPU seconds for a job (the module docstring's figures)."""
    if offer.model_id == _VACE:
        return farm.gpu_seconds(inputs)
    made = made or output_of(offer, inputs)
    if made.kind == "image":
        return 8.0
    if made.kind == "audio":
        return 5.0 + made.seconds / 4
    return 30.0 + 6.0 * made.seconds * made.real_pixels / (1280 * 720)


def render(path: Path, offer: Offer, inputs: Mapping[str, Any], made: Output) -> None:
    """Write the job's output file to ``path``."""
    if offer.model_id == _VACE:
        render_mp4(path, inputs)
    elif made.kind == "video":
        render_mp4(path, _look(offer, inputs, made))
    elif made.kind == "image":
        _render_image(path, offer, inputs, made)
    else:
        _render_audio(path, inputs, made)


def material(offer: Offer, inputs: Mapping[str, Any], made: Output) -> str:
    """What a rendered file depends on (its cache key): everything."""
    return canonical_json([_VERSION, offer.model_id, made.extension, dict(inputs)])


# -- shapes -----------------------------------------------------------------------------------


def _ratio(value: Any, default: tuple[int, int]) -> tuple[int, int]:
    """``"16:9"`` as (16, 9) in lowest terms; ``auto``, ``adaptive`` or nonsense as ``default``."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value or ""))
    if not match or not int(match[1]) or not int(match[2]):
        return default
    reduced = Fraction(int(match[1]), int(match[2]))
    return reduced.numerator, reduced.denominator


def _image_ratio(offer: Offer, inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """For ``auto``/``adaptive``: the ratio among the model's ``aspect_ratio`` choices nearest
    to the first input image's, when that image is a ``data:`` URI Pillow can read."""
    choices = [
        _ratio(c, (0, 0)) for c in offer.model.properties.get("aspect_ratio", {}).get("enum", ())
    ]
    choices = [c for c in choices if c != (0, 0)] or [(16, 9), (1, 1), (9, 16)]
    try:
        data = decode_data_uri(_first_image(offer, inputs))
        if data is None:
            return None
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if not width or not height:
        return None
    return min(choices, key=lambda c: abs(math.log(c[0] / c[1] * height / width)))


def _area(ratio: tuple[int, int], k: float) -> int:
    return round(ratio[0] * k * ratio[1] * k)


def _seconds(value: Any, default: float = 5.0) -> float:
    """A ``duration`` input in seconds: 5, 5.0, "5", "5s"; "auto" or none is ``default``."""
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value > 0 else default
    text = str(value).strip().lower().removesuffix("s").strip()
    try:
        seconds = float(text)
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


def _short_side(model_id: str, resolution: Any) -> int:
    if str(resolution).lower() in _SHORT_SIDE:
        return _SHORT_SIDE[str(resolution).lower()]
    named = re.search(r"(\d{3,4}p)", model_id)
    return _SHORT_SIDE.get(named[1], 720) if named else 720


# -- what the picture shows ---------------------------------------------------------------------

_TEXTS = ("prompt", "lyrics", "negative_prompt")


def _words(offer: Offer, inputs: Mapping[str, Any]) -> list[str]:
    """The inputs as ``name value`` words: every input but the long texts, media by name."""
    words = []
    for key in sorted(inputs):
        if key in _TEXTS:
            continue
        value = inputs[key]
        if offer.model.media_kind(key) is not None:
            values = value if isinstance(value, list) else [value]
            shown = ", ".join(_media_name(v) for v in values)
        elif key == "lora" and isinstance(value, Mapping):
            shown = _lora_label(value)
        else:
            shown = " ".join(str(value).split())
        words.append(f"{key} {shown}")
    return words


def _media_name(value: Any) -> str:
    text = str(value)
    if text.startswith("data:"):
        return f"{text[5:].split(';', 1)[0] or 'data'} ({len(text) * 3 // 4 // 1024} KiB)"
    return text.rstrip("/").rsplit("/", 1)[-1][:32]


def _lora_label(lora: Mapping[str, Any]) -> str:
    name = str(lora.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
    name = name.removesuffix(".safetensors")
    return f"{name} x{float(lora.get('scale', 1.0)):g}"


def _digest(inputs: Mapping[str, Any], *keys: str) -> bytes:
    """A hash of some inputs (all of them when no key is named)."""
    picked = {k: inputs.get(k) for k in keys} if keys else dict(inputs)
    return hashlib.sha256(canonical_json(picked).encode()).digest()


def _first_image(offer: Offer, inputs: Mapping[str, Any]) -> str:
    for key in sorted(inputs):
        value = inputs[key]
        if offer.model.media_kind(key) == "image":
            values = value if isinstance(value, list) else [value]
            if values:
                return str(values[0])
    return ""


def _knobs(inputs: Mapping[str, Any]) -> tuple[float, float, float]:
    """(detail, hue, place) of the picture: a LoRA's scale sets the hue and place, a hash of the
    other inputs the rest, so any change of an input moves something."""
    digest = _digest({k: v for k, v in inputs.items() if k not in _TEXTS and k != "seed"})
    detail = 2.0 + digest[0] % 38
    hue = digest[1] / 25.5
    place = 1.0 + digest[2] / 255 * 15
    lora = inputs.get("lora")
    if isinstance(lora, Mapping):
        scale = lora.get("scale", 1.0)
        scale = float(scale) if isinstance(scale, int | float) else 1.0
        hue, place = scale * 4.0, 1.0 + scale * 7.0
    return detail, hue, place


def _look(offer: Offer, inputs: Mapping[str, Any], made: Output) -> dict[str, Any]:
    """media.py's inputs for a video of this shape that shows these inputs."""
    detail, hue, place = _knobs(inputs)
    return {
        "56_text": str(inputs.get("prompt", inputs.get("tags", ""))),
        # The background's colour: a hash of every input (media.py mixes the image in too).
        "98_seed": _digest(inputs).hex()[:16],
        "118_image": _first_image(offer, inputs),
        "4_valuex3_value": f"{made.width}x{made.height}",
        "25_value": max(1, round(made.seconds * made.fps)),
        "38_value": made.fps,
        "47_value": detail,
        "108_cfg": hue,
        "41_value": place,
        WORDS: _words(offer, inputs),
    }


# -- images -----------------------------------------------------------------------------------


def _render_image(path: Path, offer: Offer, inputs: Mapping[str, Any], made: Output) -> None:
    width, height = made.width, made.height
    digest = _digest(inputs)
    base = np.array([digest[0], digest[1], digest[2]], dtype=np.float64)
    data = decode_data_uri(_first_image(offer, inputs))
    if data is not None:
        base = (base + _mean_rgb(data)) / 2
    ramp = np.linspace(0.45, 1.0, width)[None, :, None]
    pixels = np.broadcast_to(base * ramp, (height, width, 3)).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    draw = ImageDraw.Draw(picture)
    detail, hue, place = _knobs(inputs)
    colour = _hue_rgb(hue * 47.0)
    size = max(4, min(width, height) // 3)
    left = int((width - size) * (0.2 + 0.6 * min(1.0, (place - 1) / 15)))
    top = max(0, height - size - max(2, height // 8))
    draw.ellipse((left, top, left + size, top + size), fill=colour)
    stripes = max(1, int(detail) // 2)
    band = max(2, height // 10)
    for i in range(stripes):
        x = int(width * i / stripes)
        draw.rectangle((x, height - band, x + max(1, width // stripes // 2), height), fill=colour)
    _caption(draw, inputs, _words(offer, inputs), width, height)
    if made.extension == "jpg":
        picture.save(path, format="JPEG", quality=90)
    else:
        picture.save(path, format="PNG")


def _caption(
    draw: ImageDraw.ImageDraw, inputs: Mapping[str, Any], words: list[str], width: int, height: int
) -> None:
    face = font(max(9, round(min(width, height) / 20)))
    pad = max(2, face.size // 3 if hasattr(face, "size") else 3)
    room = max(1, width - 2 * pad)
    lines = [fit(w, face, room) for w in words]
    prompt = " ".join(str(inputs.get("prompt", "")).split())
    if prompt:
        lines.append(fit(prompt, face, room))
    step = round(max(9, min(width, height) / 20) * 1.25)
    for row, line in enumerate(lines):
        if pad + (row + 1) * step > height:
            break
        draw.text((pad + 1, pad + row * step + 1), line, fill=(0, 0, 0), font=face)
        draw.text((pad, pad + row * step), line, fill=(255, 255, 255), font=face)


def _hue_rgb(degrees: float) -> tuple[int, int, int]:
    angle = math.radians(degrees)
    return tuple(  # type: ignore[return-value]
        int(128 + 110 * math.cos(angle - shift)) for shift in (0.0, 2.094, 4.189)
    )


def _mean_rgb(data: bytes) -> np.ndarray:
    if not decodable(data):
        return np.zeros(3)
    try:
        with Image.open(io.BytesIO(data)) as image:
            small = image.convert("RGB").resize((8, 8))
        mean: np.ndarray = np.asarray(small, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return mean
    except (OSError, ValueError):
        return np.zeros(3)


# -- audio ------------------------------------------------------------------------------------

_PENTATONIC = (0, 2, 4, 7, 9, 12, 14, 16)


def _samples(inputs: Mapping[str, Any], seconds: float) -> np.ndarray:
    """A melody: the tags and seed pick the key (pitch), every other input the tempo and notes."""
    key = _digest(inputs, "tags", "seed")
    tune = _digest(inputs)
    root = 196.0 * 2 ** ((key[0] % 12) / 12)  # G3 .. F#4
    length = AUDIO_RATE // (2 + tune[0] % 5)  # a note's samples: 2 to 6 notes a second
    t = np.arange(length) / AUDIO_RATE
    envelope = np.exp(-3.0 * t * AUDIO_RATE / length) * np.minimum(1.0, t * 200)
    notes = np.array(  # one template per scale degree, the melody indexes them
        [
            (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(3 * np.pi * f * t)) * envelope
            for f in (root * 2 ** (d / 12) for d in _PENTATONIC)
        ]
    )
    count = max(1, round(seconds * AUDIO_RATE))
    melody = np.frombuffer(tune * 8, dtype=np.uint8) % len(_PENTATONIC)
    degrees = melody[np.arange(-(-count // length)) % len(melody)]
    result: np.ndarray = (notes[degrees].reshape(-1)[:count] / 1.3 * 0.6 * 32767).astype(np.int16)
    return result


def _render_audio(path: Path, inputs: Mapping[str, Any], made: Output) -> None:
    samples = _samples(inputs, made.seconds)
    if made.extension == "wav":
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(AUDIO_RATE)
            out.writeframes(samples.tobytes())
        return
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=AUDIO_RATE)
        stream.layout = "mono"
        chunk = 1152 * 16
        for start in range(0, len(samples), chunk):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + chunk], format="s16", layout="mono"
            )
            frame.sample_rate = AUDIO_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
