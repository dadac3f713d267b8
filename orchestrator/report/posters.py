"""Posters: a small JPEG of each output, made once and kept beside the report: a video's first
frame, an image scaled down, an audio file's waveform.

A poster is named after the video's identity on disk (device, inode, size, mtime), so a rerun of
``report`` reuses it without decoding, and a video rendered again gets a new one. Written to a
temporary file then renamed, so a killed report never leaves half a JPEG under a poster's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from orchestrator.verify import kind_of_extension

__all__ = ["ASSETS", "Posters"]

log = logging.getLogger("comfysweep.report")

ASSETS = "report_assets"
WIDTH = 320
QUALITY = 75
_WAVE_HEIGHT = 120
_WAVE_BACKGROUND = (31, 34, 38)
_WAVE = (90, 169, 255)
_POSTER = re.compile(r"[0-9a-f]{20}\.jpg")


class Posters:
    """Makes and caches posters in ``folder``; ``prune()`` removes those no longer used."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made = 0
        self.reused = 0
        self._used: set[str] = set()
        self._existing: set[str] | None = None

    def poster(self, video: Path) -> Path | None:
        """The poster of ``video``, made now unless cached; None when it cannot be decoded."""
        return self.posters([video])[0]

    def posters(self, videos: Sequence[Path]) -> list[Path | None]:
        """Each video's poster (None: not decodable), the missing ones made on every core."""
        targets: list[Path | None] = []
        todo: dict[Path, Path] = {}  # poster -> video, each poster made once
        for video in videos:
            name = _name(video)
            if name is None:
                targets.append(None)
                continue
            target = self.folder / name
            targets.append(target)
            self._used.add(name)
            if name in self._listing() or target in todo:
                self.reused += 1
            else:
                todo[target] = video
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            made = dict(zip(todo, pool.map(_extract, todo.values(), todo), strict=True))
        self.made += sum(made.values())
        self._listing().update(t.name for t, ok in made.items() if ok)
        return [None if t is None or made.get(t) is False else t for t in targets]

    def prune(self, pages: Sequence[Path] = ()) -> int:
        """Remove posters of videos no longer shown, on this page nor on any of ``pages`` (other
        reports sharing the folder); returns how many."""
        removed = 0
        kept = self._used | _named_in(pages, self.folder.name)
        for name in self._listing() - kept:
            if _POSTER.fullmatch(name):  # only posters: never a file of someone else's
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
                    removed += 1
        return removed

    def _listing(self) -> set[str]:
        if self._existing is None:
            try:
                self._existing = {p.name for p in self.folder.iterdir()}
            except FileNotFoundError:
                self._existing = set()
        return self._existing


def _named_in(pages: Sequence[Path], folder: str) -> set[str]:
    """The posters ``pages`` link to (``<folder>/<name>.jpg``); a page that cannot be read keeps
    nothing of its own."""
    link = re.compile(re.escape(folder) + r"/([0-9a-f]{20}\.jpg)")
    named: set[str] = set()
    for page in pages:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            named.update(link.findall(page.read_text(encoding="utf-8")))
    return named


def _name(video: Path) -> str | None:
    """A poster's file name: the video's identity on disk (a hard link shares it)."""
    try:
        st = video.stat()
    except OSError:
        return None
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20] + ".jpg"


def _extract(video: Path, target: Path) -> bool:
    """Write the poster of ``video`` (or image, or audio file), at most WIDTH wide, as a JPEG at
    ``target``."""
    kind = kind_of_extension(video.suffix)
    try:
        if kind == "image":
            image = _still(video)
        elif kind == "audio":
            image = _waveform(video)
        else:
            image = Image.fromarray(_first_frame(video))
    except (
        av.error.FFmpegError,
        IndexError,
        StopIteration,
        OSError,
        ValueError,
        Image.DecompressionBombError,  # past Pillow's limit: verify kept it undecoded
    ) as exc:
        log.warning("%s: no poster (%s)", video, exc)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, "JPEG", quality=QUALITY)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def _first_frame(video: Path) -> Any:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one frame: threads only cost their start-up
        frame = next(container.decode(stream))
        width, height = frame.width, frame.height
        if width > WIDTH:  # scaled by FFmpeg while converting: cheaper than after
            width, height = WIDTH, max(2, round(height * WIDTH / width))
        return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


def _still(path: Path) -> Image.Image:
    """An image scaled down to WIDTH (its first frame, for an animated one), in RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.draft("RGB", (WIDTH, WIDTH * 4))  # a JPEG decodes at a fraction of its size
            still = image.convert("RGB")
    if still.width > WIDTH:
        still = still.resize((WIDTH, max(2, round(still.height * WIDTH / still.width))))
    return still


def _waveform(path: Path) -> Image.Image:
    """The loudest sample of each of WIDTH slices of an audio file, drawn as a waveform card."""
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            samples = frame.to_ndarray().astype(np.float32)
            if frame.format.name.startswith(("s16", "s16p")):
                samples /= 32768.0
            elif frame.format.name.startswith(("s32", "s32p")):
                samples /= 2147483648.0
            chunks.append(np.abs(samples).max(axis=0) if samples.ndim == 2 else np.abs(samples))
    if not chunks:
        raise ValueError("no audio samples")
    peaks = np.concatenate(chunks)
    slices = np.array_split(peaks, min(WIDTH, len(peaks)))
    heights = [float(s.max()) if len(s) else 0.0 for s in slices]
    top = max(max(heights), 1e-6)
    card = Image.new("RGB", (WIDTH, _WAVE_HEIGHT), _WAVE_BACKGROUND)
    draw = ImageDraw.Draw(card)
    middle = _WAVE_HEIGHT / 2
    step = WIDTH / len(heights)
    for i, peak in enumerate(heights):
        half = max(1.0, peak / top * (middle - 4))
        x = i * step
        draw.rectangle((x, middle - half, x + max(1.0, step - 1), middle + half), fill=_WAVE)
    return card
