"""A whole MP4 of the usual layout is checked from its index, by hand: PyAV is not opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest

from orchestrator import verify
from orchestrator.emulator.media import render_mp4
from orchestrator.errors import OutputInvalid
from orchestrator.verify import Shape, verify_output

INPUTS = {"4_valuex3_value": "480x480 (1:1)", "25_value": 81, "38_value": 16}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    render_mp4(path, INPUTS)
    return path


def test_a_whole_mp4_is_checked_from_its_index_without_pyav(
    video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with av.open(str(video)) as container:  # what PyAV says, for comparison
        stream = container.streams.video[0]
        said = (stream.codec_context.width, stream.codec_context.height, stream.frames)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("PyAV opened a whole MP4")

    monkeypatch.setattr(verify.av, "open", refused)
    assert said == (480, 480, 81)
    assert verify_output(video, "mp4", Shape(480, 480, 81)) == "mp4"
    with pytest.raises(OutputInvalid, match="has 81 frames, the job asked for 80"):
        verify_output(video, "mp4", Shape(480, 480, 80))
    with pytest.raises(OutputInvalid, match="is 480x480, the job asked for 640x480"):
        verify_output(video, "mp4", Shape(640, 480, 81))
    with pytest.raises(OutputInvalid, match=r"lasts 5\.06 s, the job asked for 9 s"):
        verify_output(video, "mp4", Shape(seconds=9.0))
    cut = video.with_name("cut.mp4")
    cut.write_bytes(video.read_bytes()[:-10])
    with pytest.raises(OutputInvalid, match="cut short"):
        verify_output(cut, "mp4", Shape())
