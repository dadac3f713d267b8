"""The mosaic video: one labelled MP4 of an X/Y view, each cell playing its own video in step,
decoded lazily, cards for cells without one, written whole or not at all."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from orchestrator.emulator.media import render_mp4
from orchestrator.errors import ComfysweepError
from orchestrator.report import mosaic
from orchestrator.report.mosaic import MAX_CELLS, MosaicCell, MosaicError, MosaicInfo, write_mosaic
from tests.emulator.conftest import INPUTS

SMALL = INPUTS | {"4_valuex3_value": "240x240 (1:1)"}
CARD = 88  # the grey of a card without a video


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    shapes: dict[str, dict[str, Any]] = {
        "cfg3": {"108_cfg": 3.0},
        "cfg5": {"108_cfg": 5.0},
        "cfg7": {"108_cfg": 7.0},
        "steps8": {"47_value": 8},
        "short": {"25_value": 41},  # 41 frames at 16 fps
        "fast": {"25_value": 141, "38_value": 24},  # 141 frames at 24 fps: 5.875 s
        "wide": {"4_valuex3_value": "320x180 (16:9)"},
        "big": INPUTS,  # 480x480
    }
    paths = {}
    for name, changes in shapes.items():
        paths[name] = folder / f"{name}.mp4"
        render_mp4(paths[name], SMALL | changes)
    (folder / "garbage.mp4").write_bytes(b"not a video at all " * 64)
    paths["garbage"] = folder / "garbage.mp4"
    return paths


def _decode(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        info = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "fps": float(stream.average_rate or 0),
        }
    return info, frames


def _crop(frame: np.ndarray, box: tuple[int, int, int, int], inset: int = 2) -> np.ndarray:
    x, y, width, height = box
    return frame[y + inset : y + height - inset, x + inset : x + width - inset].astype(np.float64)


def _write(dest: Path, rows: list[list[MosaicCell]], **options: Any) -> MosaicInfo:
    x_labels = [f"x{c}" for c in range(len(rows[0]))]
    y_labels = [f"y{r}" for r in range(len(rows))]
    return write_mosaic(dest, rows, x_labels=x_labels, y_labels=y_labels, **options)


def test_the_mosaic_decodes_with_the_expected_shape(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    rows = [
        [MosaicCell(videos["cfg3"], "cfg=3"), MosaicCell(videos["cfg5"], "cfg=5")],
        [MosaicCell(videos["cfg7"], "cfg=7"), MosaicCell(videos["steps8"], "steps=8")],
    ]
    dest = tmp_path / "mosaic.mp4"
    info = write_mosaic(
        dest, rows, x_labels=["a", "b"], y_labels=["c", "d"], title="grid", cell_width=160
    )
    probe, frames = _decode(dest)
    assert probe == {
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "size": (info.width, info.height),
        "fps": 16.0,
    }
    assert info.width % 2 == info.height % 2 == 0
    assert (len(frames), info.frames, info.fps, info.cells) == (81, 81, 16.0, 4)
    assert [b[2:] for b in info.boxes] == [(160, 160)] * 4  # 240x240 scaled to 160, square
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic.mp4"]  # no temporary left


def test_each_cell_shows_its_own_video_frame_by_frame(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    names = [["cfg3", "cfg5"], ["cfg7", "steps8"]]
    rows = [[MosaicCell(videos[n], n) for n in row] for row in names]
    info = _write(tmp_path / "m.mp4", rows, cell_width=240)  # 1:1, so pixel means compare
    _, frames = _decode(info.path)
    for name, box in zip([n for row in names for n in row], info.boxes, strict=True):
        _, source = _decode(videos[name])
        for index in (0, 30, 80):
            shown = _crop(frames[index], box).reshape(-1, 3).mean(axis=0)
            wanted = _crop(source[index], (0, 0, 240, 240)).reshape(-1, 3).mean(axis=0)
            assert np.abs(shown - wanted).max() < 4, (name, index)
    means = [_crop(frames[40], box).mean(axis=(0, 1)) for box in info.boxes]
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 8


def test_missing_and_unreadable_cells_are_grey_cards_with_their_state(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    rows = [
        [MosaicCell(videos["cfg3"], "ok"), MosaicCell(None, "cfg=5", "failed")],
        [MosaicCell(videos["garbage"], "bad file"), MosaicCell(tmp_path / "gone.mp4", "gone")],
    ]
    info = _write(tmp_path / "m.mp4", rows, cell_width=160)
    _, frames = _decode(info.path)
    for box in info.boxes[1:]:
        card = _crop(frames[-1], box).mean(axis=2)
        assert abs(np.median(card) - CARD) < 4
        assert (card > 180).sum() > 40  # the state, written on the card
    # "unreadable" for the garbage file, "missing" for the one that is gone: the same cards as
    # cells saying so
    said = _write(
        tmp_path / "said.mp4",
        [
            [MosaicCell(videos["cfg3"], "ok"), MosaicCell(None, "cfg=5", "unreadable")],
            [MosaicCell(None, "bad file", "unreadable"), MosaicCell(None, "gone", "missing")],
        ],
        cell_width=160,
    )
    _, expected = _decode(said.path)
    for box in info.boxes[2:]:
        differ = np.abs(_crop(frames[0], box) - _crop(expected[0], box)).max(axis=2) > 60
        assert differ.sum() < 10
    failed = np.abs(_crop(frames[0], info.boxes[1]) - _crop(expected[0], info.boxes[1]))
    assert (failed.max(axis=2) > 60).sum() > 100  # "failed" is not "unreadable"


def test_other_fps_is_resampled_and_short_videos_hold_their_last_frame(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    rows = [
        [MosaicCell(videos["cfg3"], "16 fps"), MosaicCell(videos["short"], "41 frames")],
        [MosaicCell(videos["fast"], "24 fps"), MosaicCell(None, "none", "pending")],
    ]
    info = _write(tmp_path / "m.mp4", rows, cell_width=240)
    probe, frames = _decode(info.path)
    assert probe["fps"] == info.fps == 16.0  # the most common fps
    assert len(frames) == info.frames == 94  # the longest: 141 / 24 = 5.875 s at 16 fps
    _, short = _decode(videos["short"])
    _, fast = _decode(videos["fast"])
    whole = (0, 0, 240, 240)
    for index in (0, 40, 70, 93):
        shown = _crop(frames[index], info.boxes[1]).mean(axis=(0, 1))
        wanted = _crop(short[min(index, 40)], whole).mean(axis=(0, 1))
        assert np.abs(shown - wanted).max() < 4, index
        shown = _crop(frames[index], info.boxes[2]).mean(axis=(0, 1))
        wanted = _crop(fast[index * 24 // 16], whole).mean(axis=(0, 1))
        assert np.abs(shown - wanted).max() < 4, index
    at24 = _write(tmp_path / "24.mp4", rows, cell_width=64, fps=24)
    assert (at24.frames, at24.fps) == (141, 24.0)
    capped = _write(tmp_path / "2s.mp4", rows, cell_width=64, max_seconds=2)
    assert capped.frames == len(_decode(capped.path)[1]) == 32


def test_other_aspects_are_scaled_to_the_cell_width_and_letterboxed(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    rows = [[MosaicCell(videos["wide"], "16:9"), MosaicCell(videos["cfg3"], "1:1")]]
    info = _write(tmp_path / "m.mp4", rows, cell_width=160)
    assert [b[2:] for b in info.boxes] == [(160, 160)] * 2
    _, frames = _decode(info.path)
    x, y, width, _ = info.boxes[0]
    band = frames[0][y + 4 : y + 30, x + 4 : x + width - 4].astype(np.float64)
    assert band.mean() < 40  # above the 160x90 picture: the mosaic's dark background


def test_labels_title_and_captions_are_drawn(tmp_path: Path, videos: dict[str, Path]) -> None:
    rows = [[MosaicCell(videos["cfg3"], "cfg=3 steps=4")]]
    plain = write_mosaic(tmp_path / "a.mp4", rows, x_labels=[""], y_labels=[""], cell_width=160)
    labelled = write_mosaic(
        tmp_path / "b.mp4", rows, x_labels=["cfg=3"], y_labels=["steps=4"], title="quickstart"
    )
    assert labelled.width > plain.width  # a Y label column
    assert labelled.height > plain.height  # a title row
    _, frames = _decode(labelled.path)
    x, y, width, height = labelled.boxes[0]
    light = frames[0].mean(axis=2) > 150
    assert light[: y - 2, x : x + width].sum() > 50  # title and X label above the cell
    assert light[y : y + height, : x - 2].sum() > 30  # the Y label left of it
    assert light[y + height + 1 :, x : x + width].sum() > 30  # the caption under it


def test_cells_are_decoded_lazily_in_bounded_memory(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    rows = [[MosaicCell(videos["big"], f"{r}{c}") for c in range(3)] for r in range(3)]
    tracemalloc.start()
    try:
        _write(tmp_path / "m.mp4", rows, cell_width=96)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One 480x480x81 video decoded whole is 28 MB (yuv420p); nine of them 252 MB.
    assert peak < 8 * 1024**2


def test_a_crash_leaves_no_file_and_an_old_one_untouched(
    tmp_path: Path, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out" / "mosaic.mp4"
    dest.parent.mkdir()
    rows = [[MosaicCell(videos["cfg3"], "a")]]
    calls = 0

    def paste(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise RuntimeError("killed mid-way")

    monkeypatch.setattr(mosaic, "_paste", paste)
    with pytest.raises(RuntimeError):
        _write(dest, rows, cell_width=64)
    assert list(dest.parent.iterdir()) == []
    dest.write_bytes(b"the previous mosaic")
    calls = 0
    with pytest.raises(RuntimeError):
        _write(dest, rows, cell_width=64)
    assert list(dest.parent.iterdir()) == [dest]
    assert dest.read_bytes() == b"the previous mosaic"


def test_an_unwritable_destination_is_one_line(tmp_path: Path, videos: dict[str, Path]) -> None:
    dest = tmp_path / "no" / "such" / "m.mp4"
    with pytest.raises(MosaicError, match=r"^cannot write .*m\.mp4: ") as raised:
        _write(dest, [[MosaicCell(videos["cfg3"], "a")]])
    assert isinstance(raised.value, ComfysweepError)
    assert "\n" not in str(raised.value)


def test_too_many_cells_or_a_ragged_grid(tmp_path: Path) -> None:
    side = int(MAX_CELLS**0.5) + 1
    rows = [[MosaicCell(None, "")] * side for _ in range(side)]
    with pytest.raises(MosaicError, match=f"at most {MAX_CELLS} cells"):
        _write(tmp_path / "m.mp4", rows)
    with pytest.raises(ValueError, match="rows must match"):
        write_mosaic(
            tmp_path / "m.mp4", [[MosaicCell(None, "")]], x_labels=["a", "b"], y_labels=["c"]
        )
    assert list(tmp_path.iterdir()) == []


def test_a_row_too_long_to_fit_says_how_many_fit(tmp_path: Path) -> None:
    """A 1 x 400 row is within MAX_CELLS but cannot fit 4096 pixels even at 16-pixel cells: the
    error said only "too large"; it names DEST, the limit and how many columns and rows fit."""
    cells = [MosaicCell(None, str(i)) for i in range(MAX_CELLS)]
    dest = tmp_path / "m.mp4"
    with pytest.raises(MosaicError) as raised:
        write_mosaic(dest, [cells], x_labels=[str(i) for i in range(MAX_CELLS)], y_labels=["y"])
    assert str(raised.value) == (
        f"{dest}: a mosaic of {MAX_CELLS} x 1 cells does not fit {mosaic.MAX_SIDE} pixels a side "
        "even at 16-pixel cells (at most 226 columns and 169 rows); narrow the view"
    )
    assert list(tmp_path.iterdir()) == []
