"""Text drawn into pictures (the emulator's videos, the report's mosaic): Pillow's built-in font,
which every install has, and lines cut to fit."""

from __future__ import annotations

from functools import cache

from PIL import ImageFont

__all__ = ["Font", "fit", "font"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def font(size: int) -> Font:
    """Pillow's built-in font at ``size`` pixels (no system font needed)."""
    return ImageFont.load_default(size=size)


def fit(text: str, face: Font, room: float) -> str:
    """``text`` on one line (runs of white space as one space), or its longest start that fits
    ``room`` pixels with "..." after it."""
    text = " ".join(text.split())
    if face.getlength(text) <= room:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if face.getlength(text[:middle].rstrip() + "...") <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "..."
