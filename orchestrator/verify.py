"""Is a downloaded output whole, and the shape the job asked for? Cheap checks, no decoding.

A download without ``Content-Length`` that the connection cut short looks complete to HTTP, so a
file is checked before it takes its final name. Videos: an MP4/MOV (ISO-BMFF) must be tiled
exactly by its top-level boxes (a cut file ends inside one), a Matroska/WebM must hold the Segment
its header sizes, then PyAV opens the container header, which must hold a video stream with the
frame count and size the request fixed. Frames come from the header, or from demuxing packets
where it has none or where an MP4's last box runs "to the end of the file" (there a packet the
file ends inside is a cut); no frame is decoded.

Images are checked by their format's own structure, not PyAV: ffmpeg's image demuxer hands a whole
file over as one packet and its decoders conceal damage, so an image opening proves little, while
PNG's ``IEND`` chunk, JPEG's end marker, GIF's trailer and WebP's RIFF length prove the file ends
where it says, reading a few bytes (and Pillow is not a dependency).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import av

from orchestrator.errors import OutputInvalid
from orchestrator.models import Model

__all__ = ["Shape", "expected_shape", "verify_output"]

VIDEO_EXTENSIONS = frozenset({"mp4", "mov", "m4v", "webm", "mkv", "avi"})
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
AUDIO_EXTENSIONS = frozenset({"wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac"})
# The extensions a file of each kind may carry (its URL's if it is one of them, else the first).
_KIND_EXTENSIONS = {
    "bmff": ("mp4", "mov", "m4v"),
    "matroska": ("mkv", "webm"),
    "avi": ("avi",),
    "png": ("png",),
    "jpeg": ("jpg", "jpeg"),
    "gif": ("gif",),
    "webp": ("webp",),
}
_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)")
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class Shape:
    """What the request fixed about its output; None where it fixed nothing."""

    width: int | None = None
    height: int | None = None
    frames: int | None = None


def expected_shape(model: Model, inputs: Mapping[str, Any]) -> Shape:
    """The frame count and size a job's inputs ask for, found by the model's friendly names."""

    def value(name: str) -> Any:
        return inputs.get(model.raw_key(name) or name)

    width, height = _whole(value("width")), _whole(value("height"))
    size = value("resolution")
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match:
        width, height = int(match[1]), int(match[2])
    return Shape(width, height, _whole(value("frames")))


def verify_output(path: Path, ext: str, shape: Shape) -> str:
    """Raise OutputInvalid unless ``path`` is a whole, readable output of ``shape``; returns the
    extension it takes.

    The file's first bytes say what it is, and so its extension; ``ext`` (from its URL) says what
    it must be when they say nothing known. A file of another kind is accepted unchecked, named
    by its URL if that says audio, else ``.bin``: a server never names a file ``.exe``.
    """
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        head = handle.read(16)
        kind = _sniff(head)
        if kind is None:
            if ext in VIDEO_EXTENSIONS or ext in IMAGE_EXTENSIONS:
                raise OutputInvalid(f"is not a readable {ext} file ({size} bytes)")
            return ext if ext in AUDIO_EXTENSIONS else "bin"
        open_ended = kind == "bmff" and _bmff_boxes(handle, size)
        if kind == "matroska":
            _matroska_segment(handle, size)
        if kind in _IMAGE_CHECKS:
            _check_size(_IMAGE_CHECKS[kind](handle, size), shape)
    if kind not in _IMAGE_CHECKS:
        _check_video(path, shape, count_packets=kind != "bmff", open_ended=open_ended)
    names = _KIND_EXTENSIONS[kind]
    return ext if ext in names else names[0]


def _sniff(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        return "bmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # and WebM
    if (head[:4], head[8:12]) == (b"RIFF", b"AVI "):
        return "avi"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    return None


def _bmff_boxes(handle: IO[bytes], size: int) -> bool:
    """Every top-level box must fit in the file: a cut MP4 ends inside its last one. True when
    the last box says it runs to the end of the file, which a cut cannot show."""
    pos, open_ended = 0, False
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
        pos += length
    return open_ended


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
    except (av.error.FFmpegError, UnicodeError) as exc:
        raise OutputInvalid(f"cannot be read as a video: {exc}") from None
    if open_ended and frames < indexed:
        raise OutputInvalid(f"is cut short: {frames} of the {indexed} frames its index lists")
    if shape.frames is not None and frames != shape.frames:
        raise OutputInvalid(f"has {frames} frames, the job asked for {shape.frames}")
    _check_size((width, height), shape)


def _count_packets(container: Any, stream: Any) -> int:
    """The stream's frames as packets, none decoded; a packet the file ends inside is a cut."""
    frames = 0
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise OutputInvalid(f"is cut short: frame {frames + 1} is incomplete")
        frames += 1 if packet.size else 0
    return frames


def _check_size(size: tuple[int, int] | None, shape: Shape) -> None:
    if size is None or shape.width is None or shape.height is None:
        return
    if size != (shape.width, shape.height):
        got, asked = f"{size[0]}x{size[1]}", f"{shape.width}x{shape.height}"
        raise OutputInvalid(f"is {got}, the job asked for {asked}")


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
    handle.seek(4)
    (length,) = struct.unpack("<I", handle.read(4))
    if length + 8 > size:
        raise OutputInvalid(f"is cut short: the WebP says {length + 8} bytes, the file has {size}")
    return None


_IMAGE_CHECKS = {"png": _png, "jpeg": _jpeg, "gif": _gif, "webp": _webp}


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
