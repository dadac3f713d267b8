"""The emulator's videos show what varies: cfg, steps and shift change the picture, the inputs are
burned in as text, and the same inputs still make the same bytes (and one cached file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from orchestrator.emulator.media import MediaCache, render_mp4, text_overlay, video_shape
from tests.emulator.conftest import INPUTS


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path), "r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _render(tmp_path: Path, name: str, **changes: Any) -> Path:
    path = tmp_path / f"{name}.mp4"
    render_mp4(path, INPUTS | changes)
    return path


@pytest.mark.parametrize(
    ("key", "one", "other"),
    [("108_cfg", 3.0, 5.0), ("47_value", 4, 6), ("41_value", 5.0, 8.0)],
    ids=["cfg", "steps", "shift"],
)
def test_each_varying_input_changes_the_picture(
    tmp_path: Path, key: str, one: Any, other: Any
) -> None:
    first = _frames(_render(tmp_path, "one", **{key: one})).astype(np.int16)
    second = _frames(_render(tmp_path, "other", **{key: other})).astype(np.int16)
    assert first.shape == second.shape == (81, 480, 480, 3)
    assert np.abs(first - second).mean() > 4  # measured: cfg 30, steps 11, shift 9
    # ... and not only in the text: the picture below the text panel differs too
    below = text_overlay(INPUTS, 480, 480).shape[0]
    assert np.abs(first[:, below:] - second[:, below:]).mean() > 4


def test_the_picture_moves(tmp_path: Path) -> None:
    frames = _frames(_render(tmp_path, "moving")).astype(np.int16)
    assert np.abs(frames[0] - frames[40]).mean() > 2
    assert np.abs(frames[40] - frames[80]).mean() > 2


def test_same_inputs_render_byte_identical_files(tmp_path: Path) -> None:
    one = _render(tmp_path, "one", **{"108_cfg": 4.5, "3_sampler_name": "euler"})
    again = _render(tmp_path, "again", **{"108_cfg": 4.5, "3_sampler_name": "euler"})
    assert one.read_bytes() == again.read_bytes()


def test_the_cache_keeps_one_file_per_variant(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path)
    paths = {
        cache.get(INPUTS | {"108_cfg": c, "41_value": s}).path
        for c in (3.0, 5.0)
        for s in (5.0, 8.0)
    }
    assert len(paths) == cache.renders == 4
    assert cache.get(INPUTS | {"108_cfg": 5.0, "41_value": 8.0}).path in paths
    assert cache.renders == 4


def test_the_inputs_are_burned_in_as_text(tmp_path: Path) -> None:
    alpha = text_overlay(INPUTS, 480, 480)
    rows, cols = alpha.shape
    assert 40 <= rows <= 160
    assert cols <= 480
    assert rows % 2 == cols % 2 == 0
    frame = _frames(_render(tmp_path, "text"))[0].astype(np.float64).mean(axis=2)
    panel = frame[:rows, :cols]
    letters, around = panel[alpha > 230], panel[alpha == 0]
    assert letters.size > 500
    assert letters.mean() > around.mean() + 80  # light letters on the panel's shade
    # what is written follows the inputs: seed, cfg, the sampler and the prompt each show
    for changes in (
        {"98_seed": 2},
        {"108_cfg": 5.0},
        {"3_sampler_name": "euler"},
        {"56_text": "a forest"},
    ):
        changed = text_overlay(INPUTS | changes, 480, 480)
        assert changed.shape != alpha.shape or np.abs(changed.astype(int) - alpha).sum() > 1000


@pytest.mark.parametrize(("width", "height"), [(160, 90), (480, 480), (1280, 720)])
def test_the_text_fits_small_and_large_frames(width: int, height: int) -> None:
    long = INPUTS | {"56_text": "word " * 200, "98_seed": 2**40, "3_sampler_name": "dpmpp_2m_sde"}
    alpha = text_overlay(long, width, height)
    rows, cols = alpha.shape
    assert rows <= height * 0.6
    assert cols <= width
    assert (alpha > 128).sum() > 0.1 * alpha.size  # letters, not a blank panel
    assert alpha[:, -2:].max() < 200  # the prompt was cut before the edge, not clipped by it


def test_shape_is_unchanged_by_what_the_picture_shows(tmp_path: Path) -> None:
    inputs = INPUTS | {"4_valuex3_value": "1280x720 (16:9)", "25_value": 141, "38_value": 24}
    path = tmp_path / "wide.mp4"
    render_mp4(path, inputs)
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(video=0))
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert stream.average_rate == 24
    assert video_shape(inputs) == (1280, 720, count, 24)
