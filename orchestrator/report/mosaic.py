"""The X/Y view as one labelled mosaic MP4, for sharing where an HTML page cannot go.

One H.264 (yuv420p) file: an optional title, a header row of X labels, a left column of Y labels,
and per cell its video (or image, drawn as a still) scaled to ``cell_width`` (keeping its aspect)
with its caption under it.
Everything that does not move (labels, captions, the grey cards of cells without a video) is drawn
once with Pillow; per frame only the cells' pictures, scaled by libswscale, are pasted in with
numpy (all in yuv420p: no colour conversion per frame).

Streaming: every cell's file is open at once and decoded one frame at a time, in step with the
mosaic, so memory is one scaled picture per cell plus the canvas, whatever the videos' length. A
cell whose fps differs from the mosaic's shows the frame due at each mosaic frame's time; a video
shorter than the longest holds its last frame. A cell whose file is gone shows a card that says
"missing", one that cannot be decoded "unreadable", one without a video its state. The mosaic is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageDraw

from orchestrator.errors import ComfysweepError
from orchestrator.leftovers import owner_prefix
from orchestrator.lettering import fit, font
from orchestrator.verify import kind_of_extension

__all__ = ["MAX_CELLS", "MosaicCell", "MosaicError", "MosaicInfo", "write_mosaic"]

MAX_CELLS = 400  # every cell's file is open at once: stay well under the usual 1,024 descriptors
MAX_SIDE = 4096  # what common H.264 players decode (level 5.1: 4096 wide, ~9.4 Mpixel frames)
MAX_PIXELS = 36864 * 256
DEFAULT_FPS = 16.0

# zerolatency: no lookahead or B-frame queue, so a 9 Mpixel frame is held a few times, not 30
_X264 = {"preset": "veryfast", "crf": "23", "tune": "zerolatency"}
_BACKGROUND = (24, 24, 24)
_CARD = (88, 88, 88)
_TEXT = (235, 235, 235)
_CAPTION = (200, 200, 200)


class MosaicError(ComfysweepError):
    """The mosaic video cannot be written."""


@dataclass(frozen=True)
class MosaicCell:
    """One cell of the mosaic: its video (None: no output) and the caption under it."""

    video: Path | None  # None: no output (the cell shows its state instead)
    caption: str  # e.g. "cfg=5 steps=8" (or the short values)
    state: str = "done"  # shown on a card when video is None ("failed", "pending", ...)


@dataclass(frozen=True)
class MosaicInfo:
    """What was written: the file, its size, frame count and fps, and where each cell sits."""

    path: Path
    width: int
    height: int
    frames: int
    fps: float
    cells: int
    # Each cell's picture as (x, y, width, height) in the frame, row by row (for checks).
    boxes: tuple[tuple[int, int, int, int], ...] = ()


def write_mosaic(
    dest: Path,
    rows: Sequence[Sequence[MosaicCell]],
    *,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str = "",
    cell_width: int = 320,
    fps: float | None = None,
    max_seconds: float | None = None,
) -> MosaicInfo:
    """Write the grid ``rows`` (one row per Y label, one cell per X label) as one MP4 at ``dest``.

    ``fps`` defaults to the cells' most common fps, the length to the longest cell's (at most
    ``max_seconds``). ``cell_width`` shrinks when the frame would exceed 4096 pixels a side or
    ~9.4 Mpixel. Raises MosaicError when the grid has more than MAX_CELLS cells or ``dest``
    cannot be written; nothing is left at ``dest`` then.
    """
    _check(rows, x_labels, y_labels, cell_width, fps, max_seconds)
    count = len(rows) * len(x_labels)
    if count > MAX_CELLS:
        raise MosaicError(
            f"{dest}: a mosaic shows at most {MAX_CELLS} cells and this view has {count} "
            f"({len(x_labels)} x {len(rows)}); narrow the view with --filter INPUT=VALUE"
        )
    with contextlib.ExitStack() as stack:
        sources = [[_open(cell, stack) for cell in row] for row in rows]
        readable = [s for row in sources for s in row if s is not None]
        moving = [s for s in readable if not s.still]
        rate = float(fps) if fps else _common_fps(moving)
        seconds = max((s.frames / s.fps for s in moving), default=1 / rate)
        if max_seconds is not None:
            seconds = min(seconds, max_seconds)
        frames = max(1, math.ceil(seconds * rate - 1e-9))
        layout = _layout(dest, rows, readable, x_labels, y_labels, title, cell_width)
        canvas = _canvas(layout, rows, sources, x_labels, y_labels, title)
        with _atomic(dest) as tmp:
            _encode(tmp, canvas, layout, sources, rate, frames)
    boxes = tuple(layout.box(r, c) for r in range(len(rows)) for c in range(len(x_labels)))
    return MosaicInfo(dest, layout.width, layout.height, frames, rate, count, boxes)


def _check(
    rows: Sequence[Sequence[MosaicCell]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    cell_width: int,
    fps: float | None,
    max_seconds: float | None,
) -> None:
    """Programming mistakes (the caller builds the grid), so ValueError, not a user's message."""
    if not rows or not x_labels:
        raise ValueError("a mosaic needs at least one row and one column")
    if len(y_labels) != len(rows) or any(len(row) != len(x_labels) for row in rows):
        raise ValueError("rows must match y_labels, and every row must match x_labels")
    if cell_width < 16:
        raise ValueError("cell_width must be at least 16 pixels")
    if fps is not None and not fps > 0:
        raise ValueError("fps must be positive")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError("max_seconds must be positive")


class _Source:
    """One cell's video: decoded a frame at a time, each shown frame scaled to its box."""

    still = False

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        self.container = stack.enter_context(av.open(str(path), "r"))
        stream = self.container.streams.video[0]
        stream.codec_context.thread_count = 1  # a hundred decoders: one thread each
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        self.frames = stream.frames or sum(1 for p in self.container.demux(stream) if p.size)
        if not stream.frames:
            self.container.seek(0)
        self._decoded = self.container.decode(stream)
        self._pending: av.VideoFrame | None = next(self._decoded)  # fails here if unreadable
        self.index = 0
        self.size = (self.width, self.height)
        self._scaler = VideoReformatter()  # keeps its scaling context from frame to frame

    def frame_at(self, index: int) -> av.VideoFrame | None:
        """The source frame due at ``index`` (its own numbering); None: the one shown still is."""
        fresh, self._pending = self._pending, None
        while self.index < index:
            try:
                fresh = next(self._decoded)
            except (StopIteration, av.error.FFmpegError):
                break  # the end (or a damaged tail): the last frame shown stays
            self.index += 1
        return fresh

    def picture(self, frame: av.VideoFrame) -> np.ndarray:
        """``frame`` scaled to the cell, as a yuv420p array (its planes one under the other)."""
        width, height = self.size
        return self._scaler.reformat(frame, width, height, "yuv420p").to_ndarray()


class _Still(_Source):
    """One cell's image: shown from the first mosaic frame on, never changing."""

    still = True

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        with Image.open(path) as image:
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        self._frame: av.VideoFrame | None = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        self.height, self.width = rgb.shape[:2]
        self.fps, self.frames, self.index = DEFAULT_FPS, 1, 0
        self.size = (self.width, self.height)
        self._scaler = VideoReformatter()

    def frame_at(self, index: int) -> av.VideoFrame | None:
        """The image the first time, then None: it stays where it was pasted."""
        frame, self._frame = self._frame, None
        return frame


def _open(cell: MosaicCell, stack: contextlib.ExitStack) -> _Source | None:
    """The cell's video (or image) ready to decode, or None (no output, or one that cannot be
    read)."""
    if cell.video is None:
        return None
    inner = contextlib.ExitStack()
    opener = _Still if kind_of_extension(cell.video.suffix) == "image" else _Source
    try:
        source = opener(cell.video, inner)
    except (
        OSError,
        av.error.FFmpegError,
        IndexError,
        StopIteration,
        ValueError,
        Image.DecompressionBombError,  # an image past Pillow's limit: verify kept it undecoded
    ):
        inner.close()
        return None
    if source.width <= 0 or source.height <= 0:
        inner.close()
        return None
    stack.push(inner)
    return source


def _card(cell: MosaicCell) -> str:
    """What the card of a cell without a picture says."""
    if cell.video is None:
        return cell.state
    if kind_of_extension(cell.video.suffix) == "audio" and os.path.lexists(cell.video):
        return "audio"
    return "unreadable" if os.path.lexists(cell.video) else "missing"


def _common_fps(sources: Sequence[_Source]) -> float:
    """The most common fps among the cells (the higher one of a tie), DEFAULT_FPS with none."""
    if not sources:
        return DEFAULT_FPS
    counts = Counter(round(s.fps, 3) for s in sources)
    return max(counts, key=lambda rate: (counts[rate], rate))


@dataclass(frozen=True)
class _Layout:
    """Where everything goes: sizes in pixels, all even."""

    cell_width: int
    box_height: int
    caption_height: int
    gap: int
    left: int  # the Y label column's width
    top: int  # the title's and the X label row's height
    title_height: int
    columns: int
    rows: int

    @property
    def width(self) -> int:
        return self.left + self.columns * (self.cell_width + self.gap) + self.gap

    @property
    def height(self) -> int:
        return self.top + self.rows * (self.box_height + self.caption_height + self.gap) + self.gap

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """The (x, y, width, height) of a cell's picture area."""
        x = self.left + self.gap + column * (self.cell_width + self.gap)
        y = self.top + self.gap + row * (self.box_height + self.caption_height + self.gap)
        return x, y, self.cell_width, self.box_height


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _text_size(cell_width: int) -> tuple[int, int]:
    """Label and caption font sizes for a cell width."""
    return max(10, round(cell_width / 14)), max(9, round(cell_width / 18))


def _layout(
    dest: Path,
    rows: Sequence[Sequence[MosaicCell]],
    sources: Sequence[_Source],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str,
    cell_width: int,
) -> _Layout:
    """The layout at ``cell_width``, shrunk until the frame fits what players decode."""
    width = _even(cell_width)
    while True:
        layout = _layout_at(width, sources, y_labels, title, len(x_labels), len(rows))
        area = layout.width * layout.height
        if max(layout.width, layout.height) <= MAX_SIDE and area <= MAX_PIXELS:
            break
        if width <= 16:
            columns = (MAX_SIDE - layout.left - layout.gap) // (layout.cell_width + layout.gap)
            per_row = layout.box_height + layout.caption_height + layout.gap
            raise MosaicError(
                f"{dest}: a mosaic of {len(x_labels)} x {len(rows)} cells does not fit "
                f"{MAX_SIDE} pixels a side even at 16-pixel cells (at most {columns} columns "
                f"and {(MAX_SIDE - layout.top - layout.gap) // per_row} rows); narrow the view"
            )
        ratio = min(MAX_SIDE / max(layout.width, layout.height), math.sqrt(MAX_PIXELS / area))
        width = max(16, min(width - 2, _even(width * ratio)))
    for source in sources:
        scale = min(layout.cell_width / source.width, layout.box_height / source.height)
        source.size = (_even(source.width * scale), _even(source.height * scale))
    return layout


def _layout_at(
    cell_width: int,
    sources: Sequence[_Source],
    y_labels: Sequence[str],
    title: str,
    columns: int,
    rows: int,
) -> _Layout:
    label, caption = _text_size(cell_width)
    pad = max(2, label // 3)
    aspects = [s.height / s.width for s in sources] or [9 / 16]
    box_height = _even(cell_width * min(2.0, max(aspects)))
    widest = max((font(label).getlength(t) for t in y_labels), default=0.0)
    left = _even(min(cell_width, widest + 2 * pad))
    title_height = _even(label * 1.3 + 2 * pad) if title else 0
    top = title_height + _even(label * 1.3 + pad)
    caption_height = _even(caption * 1.4 + pad)
    gap = _even(max(2, cell_width // 40))
    return _Layout(
        cell_width, box_height, caption_height, gap, left, top, title_height, columns, rows
    )


def _centred(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    text: str,
    size: int,
    fill: tuple[int, int, int],
) -> None:
    """``text`` (cut to fit) centred in ``box`` = (x, y, width, height)."""
    x, y, width, height = box
    face = font(size)
    text = fit(text, face, width - 4)
    left, top, right, bottom = face.getbbox(text)
    origin = (x + (width - (right - left)) / 2 - left, y + (height - (bottom - top)) / 2 - top)
    draw.text(origin, text, fill=fill, font=face)


def _canvas(
    layout: _Layout,
    rows: Sequence[Sequence[MosaicCell]],
    sources: Sequence[Sequence[_Source | None]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str,
) -> np.ndarray:
    """Everything that does not move: title, labels, captions and the cards of empty cells."""
    image = Image.new("RGB", (layout.width, layout.height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    label, caption = _text_size(layout.cell_width)
    if title:
        _centred(draw, (0, 0, layout.width, layout.title_height), title, label, _TEXT)
    header = layout.top - layout.title_height
    for column, text in enumerate(x_labels):
        x, _, width, _ = layout.box(0, column)
        _centred(draw, (x, layout.title_height, width, header), text, label, _TEXT)
    for row, text in enumerate(y_labels):
        _, y, _, height = layout.box(row, 0)
        _centred(draw, (0, y, layout.left + layout.gap, height), text, label, _TEXT)
    for row, cells in enumerate(rows):
        for column, cell in enumerate(cells):
            x, y, width, height = layout.box(row, column)
            under = (x, y + height, width, layout.caption_height)
            _centred(draw, under, cell.caption, caption, _CAPTION)
            if sources[row][column] is None:
                state = _card(cell)
                draw.rectangle((x, y, x + width - 1, y + height - 1), fill=_CARD)
                _centred(draw, (x, y, width, height), state, label, _TEXT)
    rgb = np.asarray(image, dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def _encode(
    path: Path,
    canvas: np.ndarray,
    layout: _Layout,
    sources: Sequence[Sequence[_Source | None]],
    fps: float,
    frames: int,
) -> None:
    """Decode the cells in step and encode each composed frame."""
    placed = [
        (source, layout.box(r, c))
        for r, row in enumerate(sources)
        for c, source in enumerate(row)
        if source is not None
    ]
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        rate = Fraction(fps).limit_denominator(1001)
        stream = output.add_stream("libx264", rate=rate, options=dict(_X264))
        stream.width, stream.height, stream.pix_fmt = layout.width, layout.height, "yuv420p"
        for index in range(frames):
            for source, box in placed:
                _paste(canvas, source, box, int(index * source.fps / fps + 1e-6))
            frame = av.VideoFrame.from_ndarray(canvas, format="yuv420p")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def _paste(canvas: np.ndarray, source: _Source, box: tuple[int, int, int, int], index: int) -> None:
    """Put the source's frame due at ``index`` in the middle of its box (unless already there)."""
    frame = source.frame_at(index)
    if frame is None:
        return
    picture = source.picture(frame)
    x, y, width, height = box
    cols, rows = source.size
    top, left = y + (height - rows) // 4 * 2, x + (width - cols) // 4 * 2  # even: chroma aligns
    into, what = _planes(canvas), _planes(picture)
    into[0][top : top + rows, left : left + cols] = what[0]
    for plane, part in zip(into[1:], what[1:], strict=True):
        plane[top // 2 : (top + rows) // 2, left // 2 : (left + cols) // 2] = part


def _planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of a yuv420p array's Y, U and V planes."""
    height = frame.shape[0] * 2 // 3
    chroma = frame[height:].reshape(2, height // 2, -1)
    return frame[:height], chroma[0], chroma[1]


@contextlib.contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest`` that replaces it (fsynced) only if the block succeeds.

    Named like results.atomic_file's temporaries (.<name>.<host>~<pid>~<random>.tmp).
    """
    try:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=owner_prefix(dest.name), suffix=".tmp")
    except OSError as exc:
        raise MosaicError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except OSError as exc:
        raise MosaicError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
