"""A hostile review of media inputs and outputs (issue 11): files that lie about their type or
size, files that change under a run, outputs of mixed kinds, images too large to decode."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from orchestrator.verify import Shape, verify_output


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(width: int, height: int) -> bytes:
    """A structurally whole PNG (IHDR, IDAT, IEND, right CRCs) claiming a huge size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def test_an_image_past_pillow_s_bomb_limit_is_judged_by_its_structure_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Pillow refuses to open an image of over 179 M pixels (DecompressionBombError): verify
    caught it, then opened the file again, which raised the same error out of the download (a
    traceback, not OutputInvalid). Such an image is accepted on its structure, as designed."""
    path = tmp_path / "x.png"
    path.write_bytes(huge_png(40000, 40000))
    assert verify_output(path, "png", Shape(), kind="image") == "png"
    assert verify_output(path, "png", Shape(aspect=(1.0, 1.0)), kind="image") == "png"
