"""An MP4/MOV's video index read by hand from its ``moov`` box: size, frames, length, codec.

verify.py checks every downloaded video; PyAV's open (a demuxer, a decoder probed, a few frames
read) cost more than the rest of a job's bookkeeping. A well-formed MP4's answer is in its index:
the video track's sample entry (codec, pixels), its sample table (frames) and its media header
(length). Anything unusual (several video tracks, an unknown codec, sizes that disagree, an edit
list past the plain one ffmpeg writes, a box that does not parse) gives None, and the caller opens
the file with PyAV as before.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

__all__ = ["VideoIndex", "video_index"]

# Sample entries whose pixels PyAV reports as the entry states them (no crop in the entry).
KNOWN_CODECS = frozenset({"avc1", "avc3", "hvc1", "hev1", "av01", "vp09", "mp4v"})
MAX_MOOV = 32 * 1024**2  # an index larger than this is left to PyAV
_NESTED = frozenset({b"trak", b"mdia", b"minf", b"stbl", b"edts"})


@dataclass(frozen=True)
class VideoIndex:
    """What an MP4's index says of its one video track."""

    codec: str
    width: int
    height: int
    frames: int
    seconds: float | None


def video_index(handle: IO[bytes], at: int, length: int) -> VideoIndex | None:
    """The video track of the ``moov`` box at byte ``at`` (``length`` bytes), or None."""
    if length > MAX_MOOV:
        return None
    handle.seek(at)
    data = handle.read(length)
    if len(data) != length:
        return None
    try:
        tracks = [_track(body) for name, body in _children(data, 8) if name == b"trak"]
    except (struct.error, ValueError):
        return None
    videos = [t for t in tracks if t is not None and t[0] == b"vide"]
    if len(videos) != 1:
        return None
    return videos[0][1]


def _children(data: bytes, pos: int) -> list[tuple[bytes, bytes]]:
    """The boxes inside ``data`` from ``pos``: (type, the box whole); ValueError if they do not
    tile it exactly."""
    out = []
    while pos < len(data):
        size, name = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        if size < head or pos + size > len(data):
            raise ValueError("a box does not fit")
        out.append((name, data[pos : pos + size]))
        pos += size
    return out


def _flatten(box: bytes, into: dict[bytes, bytes]) -> None:
    """Every box under ``box`` (trak, mdia, minf, stbl, edts opened) by type, the first of each."""
    for name, child in _children(box, 8):
        into.setdefault(name, child)
        if name in _NESTED:
            _flatten(child, into)


def _track(trak: bytes) -> tuple[bytes, VideoIndex | None] | None:
    """A track's handler type and, for a plain video track, its index."""
    boxes: dict[bytes, bytes] = {}
    _flatten(trak, boxes)
    hdlr = boxes.get(b"hdlr")
    if hdlr is None:
        return None
    handler = hdlr[16:20]
    if handler != b"vide":
        return handler, None
    return handler, _video(boxes)


def _video(boxes: dict[bytes, bytes]) -> VideoIndex | None:
    if not {b"tkhd", b"mdhd", b"stsd", b"stsz", b"stts"} <= boxes.keys():
        return None
    if b"elst" in boxes and not _plain_edit(boxes[b"elst"]):
        return None  # an empty edit, several, or another rate: PyAV decides
    stsd = boxes[b"stsd"]
    (entries,) = struct.unpack_from(">I", stsd, 12)
    codec = stsd[20:24].decode("latin-1")
    if entries != 1 or codec not in KNOWN_CODECS:
        return None
    width, height = struct.unpack_from(">HH", stsd, 16 + 8 + 24)
    tkhd = boxes[b"tkhd"]
    shown = struct.unpack_from(">II", tkhd, len(tkhd) - 8)
    if (shown[0] >> 16, shown[1] >> 16) != (width, height) or not width or not height:
        return None
    frames = struct.unpack_from(">I", boxes[b"stsz"], 16)[0]
    stts = boxes[b"stts"]
    (runs,) = struct.unpack_from(">I", stts, 12)
    timed = sum(struct.unpack_from(">I", stts, 16 + 8 * i)[0] for i in range(runs))
    if not frames or timed != frames:
        return None
    return VideoIndex(codec, width, height, frames, _seconds(boxes[b"mdhd"]))


def _plain_edit(elst: bytes) -> bool:
    """One edit at normal rate from a media time in the track (ffmpeg writes one to every MP4,
    at the first frame's presentation time): it hides no frame from PyAV's count."""
    wide = elst[8] == 1
    (entries,) = struct.unpack_from(">I", elst, 12)
    media, rate = struct.unpack_from(">qI" if wide else ">iI", elst, 24 if wide else 20)
    return bool(entries == 1 and media >= 0 and rate == 0x10000)


def _seconds(mdhd: bytes) -> float | None:
    if mdhd[8] == 1:
        scale, duration = struct.unpack_from(">IQ", mdhd, 28)
    else:
        scale, duration = struct.unpack_from(">II", mdhd, 20)
    return duration / scale if scale and duration else None
