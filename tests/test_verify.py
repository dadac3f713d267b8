"""A download is checked before it takes its name: a file cut short, unreadable or of another shape
than the job asked for is deleted and downloaded again, never marked done."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.emulator.media import render_mp4
from orchestrator.errors import OutputInvalid
from orchestrator.models import get_model
from orchestrator.retry import RetryPolicy
from orchestrator.runner import RunReport
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep
from orchestrator.verify import Shape, expected_shape, verify_output

from .sweeps import write_spec

WAN = "community/wan-2-2/vace-fun"
INPUTS = {"4_valuex3_value": "480x480 (1:1)", "25_value": 81, "38_value": 16}
SHAPE = Shape(480, 480, 81)
ONE_JOB = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
run:
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    render_mp4(path, INPUTS)
    return path.read_bytes()


def faststart(data: bytes, folder: Path) -> bytes:
    """The same video with its index (moov) before the frames, as CDNs often serve it."""
    src, dst = folder / "src.mp4", folder / "fast.mp4"
    src.write_bytes(data)
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst.read_bytes()


def check(path: Path, data: bytes, ext: str = "mp4", shape: Shape = SHAPE) -> None:
    path.write_bytes(data)
    verify_output(path, ext, shape)


def test_the_shape_comes_from_the_inputs_by_friendly_name() -> None:
    model = get_model(WAN)
    assert (
        expected_shape(
            model, model.complete({**INPUTS, "56_text": "x", "118_image": "https://x.io/a.png"})
        )
        == SHAPE
    )
    assert expected_shape(model, {}) == Shape()


def test_a_whole_video_of_the_asked_shape_passes(tmp_path: Path, video: bytes) -> None:
    check(tmp_path / "v.mp4", video)
    check(tmp_path / "v.mp4", faststart(video, tmp_path))
    check(tmp_path / "v.mp4", video, shape=Shape())  # nothing fixed: nothing compared


@pytest.mark.parametrize("fast", [False, True], ids=["index-last", "faststart"])
def test_a_video_cut_anywhere_fails(tmp_path: Path, video: bytes, fast: bool) -> None:
    data = faststart(video, tmp_path) if fast else video
    for cut in (0, 7, 40, 1000, len(data) // 2, len(data) - 100, len(data) - 1):
        with pytest.raises(OutputInvalid):
            check(tmp_path / "v.mp4", data[:cut])


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (Shape(480, 480, 141), "has 81 frames, the job asked for 141"),
        (Shape(1280, 720, 81), "is 480x480, the job asked for 1280x720"),
    ],
)
def test_a_video_of_another_shape_fails(
    tmp_path: Path, video: bytes, shape: Shape, message: str
) -> None:
    with pytest.raises(OutputInvalid, match=message):
        check(tmp_path / "v.mp4", video, shape=shape)


def image(fmt: str, width: int, height: int) -> bytes:
    """A real image (Pillow decodes every output whole now: a forged header no longer passes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


def png(width: int, height: int) -> bytes:
    return image("PNG", width, height)


def jpeg(width: int, height: int) -> bytes:
    return image("JPEG", width, height)


def gif(width: int, height: int) -> bytes:
    return image("GIF", width, height)


def webp(width: int, height: int) -> bytes:
    return image("WEBP", width, height)


@pytest.mark.parametrize(
    ("ext", "make", "sized"),
    [("png", png, True), ("jpg", jpeg, True), ("gif", gif, True), ("webp", webp, True)],
)
def test_images_must_end_where_their_format_says(
    tmp_path: Path, ext: str, make: Callable[[int, int], bytes], sized: bool
) -> None:
    path = tmp_path / f"i.{ext}"
    data = make(64, 48)
    check(path, data, ext, Shape(64, 48))
    for cut in (len(data) - 1, len(data) // 2, 10):
        with pytest.raises(OutputInvalid, match=r"cut short|not a readable"):
            check(path, data[:cut], ext, Shape(64, 48))
    if sized:
        with pytest.raises(OutputInvalid, match="is 64x48, the job asked for 48x64"):
            check(path, data, ext, Shape(48, 64))


def test_files_that_are_not_media(tmp_path: Path) -> None:
    with pytest.raises(OutputInvalid, match="not a readable mp4 file"):
        check(tmp_path / "x.mp4", b"<html>502 Bad Gateway</html>")
    with pytest.raises(OutputInvalid, match="not a readable png file"):
        check(tmp_path / "x.png", b"", "png")
    check(tmp_path / "x.wav", b"RIFX unknown audio", "wav")  # a kind we cannot check: accepted


def run(spec: Path, emu: Emulator) -> RunReport:
    return run_sweep(
        spec,
        base_url=emu.base_url,
        token=emu.token,
        overrides=Overrides(poll_interval=0.02),
        retry=RetryPolicy(wait=False),
    )


def test_a_download_cut_short_without_content_length_is_never_done(tmp_path: Path) -> None:
    """Every try of the first run is cut: the job stays succeeded; the next run gets it whole."""
    cut = {"rate": 1.0, "content_length": 0, "fraction": 0.9, "limit": 3}
    faults = FaultProfile.parse({"faults": {"truncated_download": cut}})
    spec = write_spec(tmp_path, "one", ONE_JOB)
    folder = tmp_path / "results" / "one"
    with Emulator(EmulatorConfig(speed=5000.0, workers=2, faults=faults)) as emu:
        report = run(spec, emu)
        assert not report.complete
        assert report.counts["succeeded"] == 1, report
        with Store.open(folder / "comfysweep.db", readonly=True) as db:
            (row,) = db.jobs()
        assert row.state is JobState.SUCCEEDED
        assert "cut short" in str(row.error), row.error
        assert any("run again to download it again" in m for m in report.messages)
        assert list(folder.glob("*.mp4")) == []
        assert list((folder / ".partial").iterdir()) == []

        report = run(spec, emu)
        assert report.complete, report
        assert len(emu.ledger()["jobs"]) == 1  # downloaded again, not paid again
    (video,) = folder.glob("*.mp4")
    verify_output(video, "mp4", SHAPE)


def test_one_cut_download_is_retried_in_the_same_run(tmp_path: Path) -> None:
    cut = {"rate": 1.0, "content_length": 0, "limit": 1}
    faults = FaultProfile.parse({"faults": {"truncated_download": cut}})
    spec = write_spec(tmp_path, "one", ONE_JOB)
    with Emulator(EmulatorConfig(speed=5000.0, workers=2, faults=faults)) as emu:
        report = run(spec, emu)
        assert report.complete, report
        assert emu.ledger()["faults_fired"]["truncated_download"] == 1
    (video,) = (tmp_path / "results" / "one").glob("*.mp4")
    verify_output(video, "mp4", SHAPE)


def test_the_extension_comes_from_the_content_not_the_url(tmp_path: Path, video: bytes) -> None:
    path = tmp_path / "x"
    path.write_bytes(video)
    for ext in ("exe", "mp4", "bin", "html"):
        assert verify_output(path, ext, SHAPE) == "mp4"
    assert verify_output(path, "mov", SHAPE) == "mov"
    path.write_bytes(png(64, 48))
    assert verify_output(path, "exe", Shape(64, 48)) == "png"
    path.write_bytes(jpeg(64, 48))
    assert verify_output(path, "jpeg", Shape(64, 48)) == "jpeg"
    assert verify_output(path, "svg", Shape(64, 48)) == "jpg"
    path.write_bytes(b"MZ\x90\x00 a program")
    assert verify_output(path, "exe", SHAPE) == "bin"
    assert verify_output(path, "sh", SHAPE) == "bin"
    path.write_bytes(b"RIFX unknown audio")
    assert verify_output(path, "wav", SHAPE) == "wav"


@pytest.mark.parametrize("suffix", [".exe", "/run.sh"])
def test_an_output_url_naming_a_program_still_gives_a_video_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """A result URL whose path ends in .exe (or a script's name) does not name the file."""
    real_result, real_download = ModelApiClient.result, ModelApiClient.download

    async def result(self: ModelApiClient, request_id: str, include_cost: bool = True) -> Any:
        got = await real_result(self, request_id, include_cost)
        return dataclasses.replace(got, urls=[u + suffix for u in got.urls])

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        return await real_download(self, url.removesuffix(suffix), dest)

    monkeypatch.setattr(ModelApiClient, "result", result)
    monkeypatch.setattr(ModelApiClient, "download", download)
    spec = write_spec(tmp_path, "one", ONE_JOB)
    with Emulator(EmulatorConfig(speed=5000.0, workers=2)) as emu:
        assert run(spec, emu).complete
    folder = tmp_path / "results" / "one"
    (output,) = json.loads((folder / "manifest.jsonl").read_text())["outputs"]
    video = folder / output["path"]
    assert video.suffix == ".mp4", video.name
    verify_output(video, "mp4", SHAPE)


@pytest.mark.parametrize("ext", ["mp4", "png", "jpg", "gif", "webp"])
def test_a_damaged_file_is_invalid_never_a_crash(tmp_path: Path, ext: str) -> None:
    """Every cut and every flipped byte of a small file of each kind is OutputInvalid or passes;
    a corrupt MP4 (undecodable metadata, no codec) raised UnicodeDecodeError or AttributeError,
    a 7-byte GIF struct.error, and so crashed the run on every start."""
    if ext == "mp4":
        source = tmp_path / "v.mp4"
        render_mp4(source, {"4_valuex3_value": "64x64 (1:1)", "25_value": 3, "38_value": 16})
        data = source.read_bytes()
    else:
        data = {"png": png, "jpg": jpeg, "gif": gif, "webp": webp}[ext](8, 8)
    path = tmp_path / f"x.{ext}"
    damaged = [data[:cut] for cut in range(len(data))]
    damaged += [data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :] for i in range(len(data))]
    for variant in damaged:
        path.write_bytes(variant)
        with contextlib.suppress(OutputInvalid):
            verify_output(path, ext, Shape())


def test_a_streamable_mp4_whose_data_runs_to_the_end_is_checked_against_its_index(
    tmp_path: Path, video: bytes
) -> None:
    """An MP4 with its index first and a last box of size 0 ("to the end of the file") was
    accepted cut short: its boxes tile any length, its index still says every frame."""
    data = bytearray(faststart(video, tmp_path))
    pos = 0
    while data[pos + 4 : pos + 8] != b"mdat":
        pos += struct.unpack(">I", data[pos : pos + 4])[0]
    data[pos : pos + 4] = bytes(4)
    check(tmp_path / "x.mp4", bytes(data))
    for cut in (len(data) - 1, len(data) * 9 // 10, len(data) // 2):
        for shape in (SHAPE, Shape()):
            with pytest.raises(OutputInvalid, match="cut short"):
                check(tmp_path / "x.mp4", bytes(data[:cut]), shape=shape)


@pytest.mark.parametrize("ext", ["mkv", "webm"])
def test_a_matroska_cut_short_fails_even_where_the_job_fixed_no_frame_count(
    tmp_path: Path, ext: str
) -> None:
    """A cut Matroska/WebM was accepted whenever the job fixed no frame count to compare."""
    path = tmp_path / f"x.{ext}"
    codec = "libvpx-vp9" if ext == "webm" else "libx264"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame(64, 48, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([i * 40]) * plane.buffer_size)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = path.read_bytes()
    check(path, data, ext, Shape(64, 48, 6))
    check(path, data, ext, Shape())
    for cut in (len(data) - 1, len(data) * 2 // 3, 40):
        with pytest.raises(OutputInvalid, match=r"cut short|cannot be read"):
            check(path, data[:cut], ext, Shape())
