"""What a media file is, by its first bytes (its magic number) and, for an MP4/MOV, by its tracks:
the one sniffer of local inputs (sources.py), downloaded outputs (verify.py) and the emulator's
uploads. Reads bytes only: no decoding, no other module of comfysweep.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "EXTENSIONS",
    "HEAD_BYTES",
    "MIME_TYPES",
    "bmff_handlers",
    "kind_of_type",
    "media_type",
    "sound_alone",
]

HEAD_BYTES = 64  # what media_type needs to see (WebM's doctype and Ogg's codec sit early)
_MOOV_READ = 32 * 2**20  # a moov box is read up to this much (RunComfy's video cap)

# The media type of each extension a media file takes (the manifest's ``mime``, a served
# file's Content-Type), and back: a type's first extension (a data: URI's file in inputs/).
MIME_TYPES: Mapping[str, str] = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "m4v": "video/x-m4v",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
}
EXTENSIONS: Mapping[str, str] = {mime: ext for ext, mime in reversed(list(MIME_TYPES.items()))}


def media_type(head: bytes) -> str | None:
    """The media type the first bytes of a file say (its magic number), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved zeros
        return "image/bmp"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF.get(head[8:12])
    if head[4:8] == b"ftyp":
        return _BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"theora" in head[:64] else "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio frame sync; a layer of 00 is AAC's ADTS header instead
        return "audio/mpeg" if head[1] & 0x06 else "audio/aac"
    return None


_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_BRANDS = {
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
}


def kind_of_type(mime: str | None) -> str | None:
    """ "image", "video" or "audio" for a media type, else None."""
    kind = (mime or "").partition("/")[0]
    return kind if kind in ("image", "video", "audio") else None


def sound_alone(handle: Any, size: int) -> bool:
    """Whether an MP4/MOV's tracks are sound and no picture (ffmpeg brands an AAC-only MP4
    ``isom``, like a video): its ``hdlr`` boxes say so, whatever its brand."""
    handlers = bmff_handlers(handle, size) or set()
    return b"soun" in handlers and b"vide" not in handlers


def bmff_handlers(handle: Any, size: int) -> set[bytes] | None:
    """The handler types of the tracks of the top-level ``moov`` box; None without one."""
    pos = 0
    for _ in range(_MAX_BOXES):
        handle.seek(pos)
        head = handle.read(16)
        if len(head) < 8:
            return None
        length, name = struct.unpack(">I4s", head[:8])
        start = 8
        if length == 1 and len(head) == 16:
            length, start = struct.unpack(">Q", head[8:16])[0], 16
        elif length == 0:
            length = size - pos
        if length < start:
            return None
        if name == b"moov":
            handle.seek(pos + start)
            body = handle.read(min(length - start, _MOOV_READ))
            return {
                hdlr[8:12]
                for trak in _boxes(body, b"trak")
                for mdia in _boxes(trak, b"mdia")
                for hdlr in _boxes(mdia, b"hdlr")
            }
        pos += length
    return None


_MAX_BOXES = 1000


def _boxes(data: bytes, wanted: bytes) -> list[bytes]:
    """The bodies of the boxes named ``wanted`` directly inside ``data``."""
    found, pos = [], 0
    while pos + 8 <= len(data):
        length, name = struct.unpack(">I4s", data[pos : pos + 8])
        if length < 8:
            break
        if name == wanted:
            found.append(data[pos + 8 : pos + length])
        pos += length
    return found
