"""Is a downloaded output whole, of the kind its model makes, and the shape the job asked for?

A download without ``Content-Length`` that the connection cut short looks complete to HTTP, so a
file is checked before it takes its final name. Its first bytes say what it is (and so its
extension; then its URL's, then its Content-Type, choose among that kind's spellings), and a file
of another kind than the model makes (an image from a video model) is refused.

Videos: an MP4/MOV (ISO-BMFF) must be tiled exactly by its top-level boxes (a cut file ends inside
one), a Matroska/WebM must hold the Segment its header sizes, then PyAV opens the container
header, which must hold a video stream with the frame count and size the request fixed; a whole
MP4 of the usual layout is read from its index alone, by hand (bmff.py), with the same checks.
Frames come from the header, or from demuxing packets where it has none or where an MP4's last box
runs "to the end of the file" (there a packet the file ends inside is a cut); no frame is decoded.

Images are checked by their format's own structure (PNG's ``IEND`` chunk, JPEG's end marker,
GIF's trailer and WebP's RIFF length prove the file ends where it says), then decoded whole by
Pillow: ffmpeg's image decoders conceal damage, Pillow refuses a truncated image.

Audio (WAV, MP3, FLAC, Ogg, M4A, AAC) is decoded whole by PyAV; a WAV or FLAC must decode to the
length its header gives, and every file to the ``duration`` the job asked for, within a tolerance.

What the request fixes: a shipped model (vace-fun) states exact pixels and frames; a catalog
model states an aspect ratio ("16:9"), a resolution class ("720p": no pixel count to compare) and
a duration in seconds, so for those the aspect ratio and the duration are compared, not pixels.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import av
from PIL import Image

from orchestrator import bmff, magic
from orchestrator.errors import OutputInvalid
from orchestrator.models import Model, known_models

__all__ = ["Shape", "expected_shape", "kind_of_extension", "verify_output"]

VIDEO_EXTENSIONS = frozenset({"mp4", "mov", "m4v", "webm", "mkv", "avi"})
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
AUDIO_EXTENSIONS = frozenset({"wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac"})
# Each format's extensions (its URL's or Content-Type's if one of them, else the first) and kind.
_FORMATS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "bmff": (("mp4", "mov", "m4v"), "video"),
    "matroska": (("mkv", "webm"), "video"),
    "avi": (("avi",), "video"),
    "png": (("png",), "image"),
    "jpeg": (("jpg", "jpeg"), "image"),
    "gif": (("gif",), "image"),
    "webp": (("webp",), "image"),
    "wav": (("wav",), "audio"),
    "mp3": (("mp3",), "audio"),
    "flac": (("flac",), "audio"),
    "ogg": (("ogg", "oga", "opus"), "audio"),
    "m4a": (("m4a",), "audio"),
    "aac": (("aac",), "audio"),
}
_TYPE_EXTENSIONS = {
    **magic.EXTENSIONS,
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mp3": "mp3",
    "audio/x-flac": "flac",
    "audio/x-m4a": "m4a",
    "image/jpg": "jpg",
}
_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)")
_RATIO = re.compile(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds?)?\s*$", re.IGNORECASE)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_M4A_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ")
# How far an output may be from what was asked: models round sizes to their own grids (nano
# banana's 16:9 is 1344x768, 1.6% off) and lengths to whole frames or audio blocks.
ASPECT_TOLERANCE = 0.05  # relative, on width/height
SECONDS_TOLERANCE = (0.5, 0.1)  # seconds, or that fraction of the length asked, whichever is more


@dataclass(frozen=True)
class Shape:
    """What the request fixed about its output; None where it fixed nothing."""

    width: int | None = None
    height: int | None = None
    frames: int | None = None
    aspect: tuple[float, float] | None = None  # (16, 9): where only the ratio is fixed
    seconds: float | None = None  # the length of a video or an audio file


def expected_shape(model: Model, inputs: Mapping[str, Any]) -> Shape:
    """What a job's inputs ask of its output, found by the model's friendly names.

    A shipped model (vace-fun) fixes exact pixels ("480x480 (1:1)") and frames; a catalog model
    an aspect ratio and a duration (its pixels depend on the service: only their ratio is
    compared)."""

    def value(name: str) -> Any:
        return inputs.get(model.raw_key(name) or name)

    width, height = _whole(value("width")), _whole(value("height"))
    size = value("resolution")
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match:
        width, height = int(match[1]), int(match[2])
    if any(m.model_id == model.model_id for m in known_models()):
        return Shape(width, height, _whole(value("frames")))
    aspect = (float(width), float(height)) if width and height else _ratio(value("aspect_ratio"))
    return Shape(aspect=aspect, seconds=_seconds(value("duration")))


def kind_of_extension(ext: str) -> str | None:
    """ "video", "image" or "audio" for an output's extension; None for one of no media kind."""
    ext = ext.lower().lstrip(".")
    return next((kind for names, kind in _FORMATS.values() if ext in names), None)


def verify_output(
    path: Path,
    ext: str,
    shape: Shape,
    *,
    kind: str | None = None,
    content_type: str | None = None,
) -> str:
    """Raise OutputInvalid unless ``path`` is a whole, readable output of ``shape`` and (where
    given) of ``kind`` ("video", "image", "audio": what the model makes); returns the extension
    it takes.

    The file's first bytes say what it is, and so its extension; ``ext`` (from its URL) and then
    ``content_type`` say what it must be when they say nothing known. A file of no kind we
    recognise is refused where ``kind`` is given (audio: unless PyAV decodes it); otherwise it
    is accepted unchecked, named by its URL if that says audio, else ``.bin``: a server never
    names a file ``.exe``.
    """
    typed = _TYPE_EXTENSIONS.get((content_type or "").partition(";")[0].strip().lower(), "")
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        head = handle.read(magic.HEAD_BYTES)
        found = _sniff(head)
        if found is None:
            return _unknown(path, size, ext, typed, shape, kind)
        if found == "bmff" and magic.sound_alone(handle, size):
            found = "m4a"  # its tracks say audio, whatever its brand (ffmpeg's: isom)
        names, made = _FORMATS[found]
        if kind is not None and made != kind:
            raise OutputInvalid(f"is {_a(made)} ({names[0]}), not the {kind} this model makes")
        open_ended, moov = _bmff_boxes(handle, size) if found == "bmff" else (False, None)
        # A whole MP4's index answers without PyAV; an unusual one (or one whose data runs to
        # the end of the file, where only its packets prove it whole) is opened by PyAV.
        index = None if open_ended or moov is None else bmff.video_index(handle, *moov)
        if found == "matroska":
            _matroska_segment(handle, size)
        if found == "wav":
            _riff_length(handle, size, "WAV")
        if found == "ogg":
            _ogg_end(handle, size)
        if found in _IMAGE_CHECKS:
            _check_size(_IMAGE_CHECKS[found](handle, size), shape)
    if made == "image":
        _check_size(_decode_image(path), shape)
    elif made == "audio":
        exact = found in ("wav", "flac") or (found == "mp3" and _mp3_counted(path))
        _check_audio(path, shape, exact_header=exact)
    elif index is not None:
        _check_index(index, shape)
    else:
        _check_video(path, shape, count_packets=found != "bmff", open_ended=open_ended)
    return ext if ext in names else typed if typed in names else names[0]


def _unknown(path: Path, size: int, ext: str, typed: str, shape: Shape, kind: str | None) -> str:
    """A file whose first bytes name no format we know."""
    said = kind or kind_of_extension(ext) or kind_of_extension(typed)
    if said == "audio":
        try:
            _check_audio(path, shape, exact_header=False)
        except OutputInvalid:
            if kind is not None:
                raise
        return ext if ext in AUDIO_EXTENSIONS else typed if typed in AUDIO_EXTENSIONS else "bin"
    if said is not None:
        raise OutputInvalid(f"is not a readable {kind or ext or typed} file ({size} bytes)")
    return "bin"


def _sniff(head: bytes) -> str | None:
    """The format (a key of _FORMATS) the first bytes say, by the one sniffer of inputs too."""
    mime = magic.media_type(head)
    if mime is not None and head[4:8] == b"ftyp":  # every ISO-BMFF: audio by an M4A brand
        return "m4a" if head[8:12] in _M4A_BRANDS else "bmff"
    return _FORMAT_OF_TYPE.get(mime or "")


_FORMAT_OF_TYPE = {
    "video/webm": "matroska",
    "video/x-matroska": "matroska",
    "video/x-msvideo": "avi",
    "image/webp": "webp",
    "audio/wav": "wav",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "video/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/aac": "aac",
}


def _a(kind: str) -> str:
    return {"video": "a video", "image": "an image", "audio": "an audio file"}[kind]


def _bmff_boxes(handle: IO[bytes], size: int) -> tuple[bool, tuple[int, int] | None]:
    """Every top-level box must fit in the file: a cut MP4 ends inside its last one. True when
    the last box says it runs to the end of the file, which a cut cannot show; and where the
    first ``moov`` (the index) is, and its length."""
    pos, open_ended = 0, False
    moov: tuple[int, int] | None = None
    while pos < size:
        handle.seek(pos)
        head = handle.read(16)
        if len(head) < 8:
            raise OutputInvalid(f"is cut short: {size - pos} stray bytes after its last box")
        length, name = struct.unpack(">I4s", head[:8])
        kind = name.decode("latin-1")
        if length == 1:  # a 64-bit size follows
            if len(head) < 16:
                raise OutputInvalid(f"is cut short inside its {kind!r} box header")
            length = struct.unpack(">Q", head[8:16])[0]
        elif length == 0:  # the box runs to the end of the file
            length, open_ended = size - pos, True
        if length < 8:
            raise OutputInvalid(f"has a broken {kind!r} box at byte {pos}")
        if pos + length > size:
            raise OutputInvalid(
                f"is cut short: its {kind!r} box needs {pos + length} bytes, the file has {size}"
            )
        if kind == "moov" and moov is None:
            moov = (pos, length)
        pos += length
    return open_ended, moov


def _matroska_segment(handle: IO[bytes], size: int) -> None:
    """The EBML header and the Segment must fit in the file where they give their size (a
    Matroska/WebM written to a seekable file does): a cut one ends inside its Segment."""
    pos = 0
    for expected in (b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67"):
        handle.seek(pos)
        head = handle.read(12)
        if head[:4] != expected:
            return  # not the layout we know: the container check decides
        length, width = _ebml_size(head[4:])
        if length is None:
            return  # an unknown size (a live stream): nothing to compare
        pos += 4 + width + length
        if pos > size:
            raise OutputInvalid(
                f"is cut short: its Matroska data needs {pos} bytes, the file has {size}"
            )


def _ebml_size(data: bytes) -> tuple[int | None, int]:
    """An EBML variable-size integer: its value (None for "unknown") and its width in bytes."""
    if not data or data[0] == 0:
        return None, 1
    width = 9 - data[0].bit_length()
    if len(data) < width:
        return None, width
    value = int.from_bytes(data[:width], "big") & ((1 << (7 * width)) - 1)
    return (None if value == (1 << (7 * width)) - 1 else value), width


def _check_video(path: Path, shape: Shape, *, count_packets: bool, open_ended: bool) -> None:
    """Open the container header; count packets where it has no frame count, or where an MP4's
    last box runs to the end of the file (a cut there leaves its index listing missing frames)."""
    # A damaged file's metadata need not be text: it is not ours to read, so errors are ignored.
    try:
        with av.open(str(path), "r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise OutputInvalid("holds no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec is None:
                raise OutputInvalid("holds a video stream of no known codec")
            width, height = codec.width, codec.height
            indexed = stream.frames
            frames = indexed
            if count_packets or open_ended or not frames:
                frames = _count_packets(container, stream)
            rate = stream.average_rate or stream.guessed_rate
            seconds = float(frames / rate) if rate else None
            if stream.duration and stream.time_base and not open_ended:
                seconds = float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, UnicodeError) as exc:
        raise OutputInvalid(f"cannot be read as a video: {exc}") from None
    if open_ended and frames < indexed:
        raise OutputInvalid(f"is cut short: {frames} of the {indexed} frames its index lists")
    if shape.frames is not None and frames != shape.frames:
        raise OutputInvalid(f"has {frames} frames, the job asked for {shape.frames}")
    _check_size((width, height), shape)
    _check_seconds(seconds, shape)


def _check_index(index: bmff.VideoIndex, shape: Shape) -> None:
    """The checks of ``_check_video``, on what a whole MP4's index says."""
    if shape.frames is not None and index.frames != shape.frames:
        raise OutputInvalid(f"has {index.frames} frames, the job asked for {shape.frames}")
    _check_size((index.width, index.height), shape)
    _check_seconds(index.seconds, shape)


def _count_packets(container: Any, stream: Any) -> int:
    """The stream's frames as packets, none decoded; a packet the file ends inside is a cut."""
    frames = 0
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise OutputInvalid(f"is cut short: frame {frames + 1} is incomplete")
        frames += 1 if packet.size else 0
    return frames


def _check_audio(path: Path, shape: Shape, *, exact_header: bool) -> None:
    """Decode every sample: the file must hold audio, as long as its header says where the
    header is exact (WAV, FLAC: a cut one decodes shorter), and as long as the job asked."""
    samples = 0
    rate = 0
    try:
        with av.open(str(path), "r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise OutputInvalid("holds no audio stream")
            stream = container.streams.audio[0]
            stream.codec_context.thread_count = 1
            base = stream.time_base
            declared = float(stream.duration * base) if stream.duration and base else None
            for frame in container.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate or rate
    except (av.error.FFmpegError, UnicodeError, ValueError) as exc:
        raise OutputInvalid(f"cannot be decoded as audio: {exc}") from None
    if not samples or not rate:
        raise OutputInvalid("holds no audio samples")
    seconds = samples / rate
    if exact_header and declared is not None and seconds < declared - max(0.05, declared / 100):
        raise OutputInvalid(
            f"is cut short: it decodes to {seconds:.2f} s of the {declared:.2f} s its header gives"
        )
    _check_seconds(seconds, shape)


def _decode_image(path: Path) -> tuple[int, int] | None:
    """Decode the whole image with Pillow (a truncated one raises); returns its size, or None
    for one past Pillow's bomb limit (not decoded: its structure was checked already)."""
    try:
        with warnings.catch_warnings():
            # A very large image is still one a model made: decoded, not refused as a bomb.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.size
    except Image.DecompressionBombError:
        # Pillow refuses even to open it (each open raises again): too big to decode here.
        return None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise OutputInvalid(f"cannot be decoded as an image: {exc}") from None


def _riff_length(handle: IO[bytes], size: int, what: str) -> None:
    """A RIFF file (WAV, WebP) must be as long as its header says (a streamed one says 0 or
    0xFFFFFFFF: nothing to compare)."""
    handle.seek(4)
    (length,) = struct.unpack("<I", handle.read(4))
    if length not in (0, 0xFFFFFFFF) and length + 8 > size:
        raise OutputInvalid(
            f"is cut short: the {what} says {length + 8} bytes, the file has {size}"
        )


def _ogg_end(handle: IO[bytes], size: int) -> None:
    """An Ogg stream's last page carries the end-of-stream flag: a cut one ends before it."""
    handle.seek(max(0, size - 65536))
    tail = handle.read()
    last = tail.rfind(b"OggS")
    if last < 0 or len(tail) < last + 27 or not tail[last + 5] & 0x04:
        raise OutputInvalid("is cut short: the Ogg stream has no end-of-stream page")
    segments = tail[last + 27 : last + 27 + tail[last + 26]]
    if len(segments) < tail[last + 26] or last + 27 + len(segments) + sum(segments) > len(tail):
        raise OutputInvalid("is cut short inside its last Ogg page")


def _mp3_counted(path: Path) -> bool:
    """Whether an MP3's first frame is a Xing/Info frame (its frame count: a cut file decodes
    shorter than its header says); without one, ffmpeg's length is an estimate from the file's
    own size. The tag sits within the first frame's first 64 bytes, after any ID3v2 tag."""
    with open(path, "rb") as handle:
        head = handle.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:
            tag = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
            start = 10 + tag + (10 if head[5] & 0x10 else 0)  # a footer follows when flagged
        handle.seek(start)
        frame = handle.read(64)
    return b"Xing" in frame or b"Info" in frame


def _check_size(size: tuple[int, int] | None, shape: Shape) -> None:
    if size is None:
        return
    exact = shape.width is not None and shape.height is not None
    if exact and size != (shape.width, shape.height):
        got, asked = f"{size[0]}x{size[1]}", f"{shape.width}x{shape.height}"
        raise OutputInvalid(f"is {got}, the job asked for {asked}")
    if shape.aspect is not None and size[0] > 0 and size[1] > 0:
        # One pixel of rounding on the shorter side, or the models' own grids, is the same ratio.
        slack = max(ASPECT_TOLERANCE, 1.5 / min(size))
        wide, high = shape.aspect
        if abs(math.log(size[0] / size[1] * high / wide)) > math.log1p(slack):
            asked = f"{wide:g}:{high:g}"
            raise OutputInvalid(
                f"is {size[0]}x{size[1]}, not the {asked} aspect ratio the job asked for"
            )


def _check_seconds(seconds: float | None, shape: Shape) -> None:
    if seconds is None or shape.seconds is None:
        return
    slack = max(SECONDS_TOLERANCE[0], SECONDS_TOLERANCE[1] * shape.seconds)
    if abs(seconds - shape.seconds) > slack:
        raise OutputInvalid(f"lasts {seconds:.2f} s, the job asked for {shape.seconds:g} s")


def _ratio(value: Any) -> tuple[float, float] | None:
    """ "16:9" as (16, 9); None for "auto", "adaptive" or anything else that fixes no ratio."""
    match = _RATIO.match(value) if isinstance(value, str) else None
    if match is None or not float(match[1]) or not float(match[2]):
        return None
    return float(match[1]), float(match[2])


def _seconds(value: Any) -> float | None:
    """A ``duration`` input in seconds: 5, 5.5, "5" or "5s"; None for "auto" and the like."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 and math.isfinite(value) else None
    match = _SECONDS.match(value) if isinstance(value, str) else None
    return float(match[1]) if match and float(match[1]) > 0 else None


def _png(handle: IO[bytes], size: int) -> tuple[int, int] | None:
    """Walk the chunks to IEND; a cut file ends before it. Returns the IHDR size."""
    pos, dims = 8, None
    while True:
        handle.seek(pos)
        head = handle.read(16)
        if len(head) < 8:
            raise OutputInvalid("is cut short: its PNG chunks end before IEND")
        length, name = struct.unpack(">I4s", head[:8])
        if name == b"IHDR" and len(head) == 16:
            dims = struct.unpack(">II", head[8:16])
        pos += 12 + length
        if pos > size:
            raise OutputInvalid(f"is cut short inside its {name.decode('latin-1')!r} chunk")
        if name == b"IEND":
            return dims


def _jpeg(handle: IO[bytes], size: int) -> tuple[int, int] | None:
    """Read the frame header for the size; the file must end with the EOI marker."""
    handle.seek(max(0, size - 64))
    if not handle.read().rstrip(b"\0").endswith(b"\xff\xd9"):
        raise OutputInvalid("is cut short: the JPEG has no end marker")
    pos = 2
    while pos + 4 <= size:
        handle.seek(pos)
        head = handle.read(9)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker, length = head[1], struct.unpack(">H", head[2:4])[0]
        if marker in _JPEG_SOF and len(head) == 9:
            height, width = struct.unpack(">HH", head[5:9])
            return width, height
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        pos += 2 + length
    return None


def _gif(handle: IO[bytes], size: int) -> tuple[int, int] | None:
    handle.seek(6)
    head = handle.read(4)
    if len(head) < 4:
        raise OutputInvalid("is cut short inside its GIF header")
    dims = struct.unpack("<HH", head)
    handle.seek(size - 1)
    if handle.read(1) != b"\x3b":
        raise OutputInvalid("is cut short: the GIF has no trailer")
    return dims[0], dims[1]


def _webp(handle: IO[bytes], size: int) -> tuple[int, int] | None:
    _riff_length(handle, size, "WebP")
    return None


_IMAGE_CHECKS = {"png": _png, "jpeg": _jpeg, "gif": _gif, "webp": _webp}


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
