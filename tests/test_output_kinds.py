"""Images and audio everywhere a video goes: verification before the rename (an image decodes
whole, an audio file decodes to the duration asked, a catalog video has the aspect ratio and
length asked), and a file of another kind than the model makes is refused, by its content."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import re
import shutil
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import anyio
import av
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from orchestrator.cli import cli
from orchestrator.client import ModelApiClient
from orchestrator.conditioning import output_kind
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import OutputInvalid
from orchestrator.locate import locate
from orchestrator.models import Model, get_model
from orchestrator.report.build import Axes, write_report
from orchestrator.report.mosaic import MosaicCell, write_mosaic
from orchestrator.report.page import VIDEO_CAP
from orchestrator.results import ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep
from orchestrator.verify import Shape, expected_shape, kind_of_extension, verify_output

from . import test_report_browser
from .media_files import audio_file, finished_sweep, image_bytes, video_file
from .test_report_browser import until

browser = test_report_browser.browser  # the real Chromium fixture, shared

T2V = "bytedance/seedance-2.5/text-to-video/1080p"
T2I = "google/nano-banana-2-lite/text-to-image"
T2A = "acestep-ai/ace-step-1.5/text-to-audio"


def catalog_model(model_id: str, output: str, properties: dict[str, Any]) -> Model:
    """A catalog entry as RunComfy publishes it (the emulated catalog serves these ids)."""
    entry = {
        "model_id": model_id,
        "categories": [output],
        "input_schema": {"type": "object", "properties": properties},
    }
    return Model.from_catalog(entry)


SEEDANCE = catalog_model(
    T2V,
    "video",
    {
        "prompt": {"type": "string"},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16", "1:1", "21:9", "adaptive"]},
        "duration": {"type": "integer", "default": 5},
    },
)
BANANA = catalog_model(
    T2I, "image", {"prompt": {"type": "string"}, "aspect_ratio": {"type": "string"}}
)
ACE = catalog_model(
    T2A, "audio", {"tags": {"type": "string"}, "duration": {"type": "integer", "default": 20}}
)


def png_with_cut_pixels(width: int, height: int) -> bytes:
    """A PNG whose chunks are whole (IEND and every CRC right) but whose compressed pixels stop
    halfway: its structure says nothing is missing, only decoding it shows the cut."""
    rows = b"".join(b"\0" + bytes(range(3 * width)) for _ in range(height))
    pixels = zlib.compress(rows)[: len(zlib.compress(rows)) // 2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_an_image_whose_pixels_are_cut_is_refused_though_its_chunks_are_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(png_with_cut_pixels(64, 48))
    with pytest.raises(OutputInvalid, match="cannot be decoded as an image"):
        verify_output(path, "png", Shape(), kind="image")
    with pytest.raises(OutputInvalid, match="cannot be decoded as an image"):
        verify_output(path, "png", Shape())  # whatever the model: a broken image is never kept


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_image_is_refused(tmp_path: Path, fmt: str) -> None:
    data = image_bytes(fmt, 64, 48)
    path = tmp_path / "x"
    path.write_bytes(data)
    assert verify_output(path, "", Shape(), kind="image") == {"PNG": "png", "JPEG": "jpg"}[fmt]
    for cut in (len(data) - 1, len(data) // 2, 20):
        path.write_bytes(data[:cut])
        with pytest.raises(OutputInvalid, match=r"cut short|cannot be decoded|not a readable"):
            verify_output(path, "png", Shape(), kind="image")


@pytest.mark.parametrize("ext", ["wav", "mp3", "flac", "ogg", "m4a"])
def test_audio_decodes_to_the_duration_the_job_asked(tmp_path: Path, ext: str) -> None:
    path = audio_file(tmp_path / f"a.{ext}", 3.0)
    assert verify_output(path, "", Shape(seconds=3.0), kind="audio") == ext
    assert verify_output(path, "", Shape(), kind="audio") == ext
    with pytest.raises(OutputInvalid, match=r"lasts 3.\d\d s, the job asked for 5 s"):
        verify_output(path, ext, Shape(seconds=5.0), kind="audio")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OutputInvalid, match=r"cut short|cannot be decoded|lasts"):
        verify_output(path, ext, Shape(seconds=3.0), kind="audio")


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_audio_cut_short_is_refused_even_where_no_duration_was_asked(
    tmp_path: Path, ext: str
) -> None:
    """Their headers (WAV, FLAC, an MP3's Info frame) or their last page (Ogg) say where they
    end."""
    path = audio_file(tmp_path / f"a.{ext}", 3.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OutputInvalid, match=r"cut short|cannot be decoded"):
        verify_output(path, ext, Shape(), kind="audio")


def test_a_file_of_another_kind_than_the_model_makes_is_refused(tmp_path: Path) -> None:
    wav = audio_file(tmp_path / "a.wav", 1.0)
    mp4 = video_file(tmp_path / "v.mp4", 64, 36, 8)
    png = tmp_path / "i.png"
    png.write_bytes(image_bytes("PNG", 64, 36))
    with pytest.raises(OutputInvalid, match=r"^is an audio file \(wav\), not the video this model"):
        verify_output(wav, "mp4", Shape(), kind="video")
    with pytest.raises(OutputInvalid, match=r"^is a video \(mp4\), not the image this model"):
        verify_output(mp4, "png", Shape(), kind="image")
    with pytest.raises(OutputInvalid, match=r"^is an image \(png\), not the audio this model"):
        verify_output(png, "wav", Shape(), kind="audio")
    text = tmp_path / "t.wav"
    text.write_text("<html>502 Bad Gateway</html>")
    with pytest.raises(OutputInvalid, match="cannot be decoded as audio"):
        verify_output(text, "wav", Shape(), kind="audio")


def test_a_catalog_model_fixes_aspect_ratio_and_duration_not_pixels() -> None:
    inputs = {"prompt": "x", "aspect_ratio": "21:9", "duration": 5}
    assert expected_shape(SEEDANCE, inputs) == Shape(aspect=(21.0, 9.0), seconds=5.0)
    assert expected_shape(SEEDANCE, {"aspect_ratio": "adaptive"}) == Shape()
    for spelled in (5, 5.0, "5", "5s", " 5 s", "5 seconds"):
        assert expected_shape(ACE, {"duration": spelled}).seconds == 5.0, spelled
    for nothing in ("auto", True, 0, -1, "five"):
        assert expected_shape(ACE, {"duration": nothing}).seconds is None, nothing
    assert expected_shape(BANANA, {"aspect_ratio": "1280x720"}).aspect is None
    assert expected_shape(BANANA, {"resolution": "1280x720"}) == Shape(aspect=(1280.0, 720.0))
    vace = get_model("community/wan-2-2/vace-fun")  # shipped: exact pixels, as before
    assert expected_shape(vace, {"4_valuex3_value": "480x480 (1:1)", "25_value": 81}) == Shape(
        480, 480, 81
    )


def test_a_catalog_video_is_checked_by_aspect_ratio_and_length(tmp_path: Path) -> None:
    """The emulator scales a model's pixels down but keeps the ratio exact: 64x36 is 16:9."""
    path = video_file(tmp_path / "v.mp4", 64, 36, 40)  # 2.5 s at 16 fps
    assert verify_output(path, "mp4", Shape(aspect=(16.0, 9.0), seconds=2.5), kind="video") == "mp4"
    with pytest.raises(OutputInvalid, match="is 64x36, not the 9:16 aspect ratio the job asked"):
        verify_output(path, "mp4", Shape(aspect=(9.0, 16.0)), kind="video")
    with pytest.raises(OutputInvalid, match=r"lasts 2.50 s, the job asked for 5 s"):
        verify_output(path, "mp4", Shape(seconds=5.0), kind="video")
    still = tmp_path / "i.png"
    still.write_bytes(image_bytes("PNG", 1344, 768))  # nano banana's own "16:9": 1.6% off
    assert verify_output(still, "png", Shape(aspect=(16.0, 9.0)), kind="image") == "png"
    with pytest.raises(OutputInvalid, match="not the 1:1 aspect ratio"):
        verify_output(still, "png", Shape(aspect=(1.0, 1.0)), kind="image")


def test_the_extension_is_the_content_then_the_url_then_the_content_type(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(image_bytes("JPEG", 16, 16))
    assert verify_output(path, "", Shape(), content_type="image/jpeg") == "jpg"
    assert verify_output(path, "jpeg", Shape(), content_type="image/jpg") == "jpeg"
    assert verify_output(path, "", Shape(), content_type="image/jpeg; q=1") == "jpg"
    assert verify_output(path, "png", Shape(), content_type="image/png") == "jpg"  # content wins
    ogg = audio_file(tmp_path / "a.ogg", 1.0)
    assert verify_output(ogg, "", Shape(), kind="audio") == "ogg"
    assert verify_output(ogg, "opus", Shape(), kind="audio") == "opus"
    assert verify_output(ogg, "", Shape(), kind="audio", content_type="audio/ogg") == "ogg"
    wav = audio_file(tmp_path / "a.wav", 1.0)
    assert verify_output(wav, "bin", Shape(), content_type="audio/x-wav") == "wav"


def test_the_results_folder_verifies_by_the_job_s_own_model(tmp_path: Path) -> None:
    """An image model's output is verified as an image, an audio model's as audio of the
    duration asked; the model is the job's (a sweep may hold several)."""
    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{key}")
    png = tmp_path / "i.part"
    png.write_bytes(image_bytes("PNG", 32, 18))
    url = "https://x.runcomfy.net/o/abc"  # no extension: the content decides
    assert folder.verify(png, {"aspect_ratio": "16:9"}, url, "output 1", model=BANANA) == "png"
    wav = audio_file(tmp_path / "a.wav", 2.0)
    got = folder.verify(wav, {"duration": "2s"}, url, "output 1", model=ACE)
    assert got == "wav"
    with pytest.raises(OutputInvalid, match=r"^output 1 lasts 2.00 s, the job asked for 9 s$"):
        folder.verify(wav, {"duration": 9}, url, "output 1", model=ACE)
    assert not wav.exists()  # refused: removed, downloaded again
    png.write_bytes(image_bytes("PNG", 32, 18))
    with pytest.raises(OutputInvalid, match=r"^output 1 is an image \(png\), not the audio"):
        folder.verify(png, {}, url, "output 1", model=ACE)


def manifest_lines(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_the_manifest_and_metadata_record_each_output_s_kind_and_mime(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    store_path = finished_sweep(
        folder,
        T2I,
        [
            ({"prompt": "a"}, "a.png", image_bytes("PNG", 16, 9)),
            ({"prompt": "b"}, "b.jpg", image_bytes("JPEG", 16, 9)),
        ],
    )
    with Store.open(store_path) as store:
        results = ResultsFolder(folder, BANANA, "{prompt}")
        results.attach(store)
        results.write_manifest(store.jobs())
    outputs = [e["outputs"][0] for e in manifest_lines(folder, "manifest.jsonl")]
    assert [(o["path"], o["kind"], o["mime"]) for o in outputs] == [
        ("a.png", "image", "image/png"),
        ("b.jpg", "image", "image/jpeg"),
    ]
    assert all({"path", "size", "sha256", "url"} <= set(o) for o in outputs)  # the old keys
    metadata = manifest_lines(folder, "metadata.jsonl")
    assert [(m["file_name"], m["kind"], m["mime"]) for m in metadata] == [
        ("a.png", "image", "image/png"),
        ("b.jpg", "image", "image/jpeg"),
    ]


def image_sweep(folder: Path) -> Path:
    """Four done jobs of an image model (two prompts by two seeds); its store."""
    outputs = [
        ({"prompt": p, "seed": s}, f"{p}-{s}.png", image_bytes("PNG", 640, 360, (60 * s, 90, 200)))
        for p in ("fox", "owl")
        for s in (1, 2)
    ]
    return finished_sweep(folder, T2I, outputs)


def audio_sweep(folder: Path, seconds: tuple[float, ...] = (1.0, 2.0, 3.0)) -> Path:
    """Done jobs of an audio model, one per length; its store."""
    outputs = []
    for i, length in enumerate(seconds):
        made = audio_file(folder.parent / f"made-{i}.wav", length)
        outputs.append(({"tags": "jazz", "duration": length}, f"a{i}.wav", made.read_bytes()))
    return finished_sweep(folder, T2A, outputs)


def test_report_cells_show_images_and_audio_with_their_posters(tmp_path: Path) -> None:
    """An image cell's poster is the image scaled down; an audio cell's a waveform card; the
    page data says each cell's kind, so the page puts a player only where one belongs."""
    images = image_sweep(tmp_path / "img")
    written = write_report(locate(None, str(images)))
    assert (written.cells, written.posters_made) == (4, 4)
    data = page_data(written.path)
    assert {c["m"] for c in data["cells"]} == {"image"}
    assert all(
        c["f"].endswith(".png") and c["p"].startswith("report_assets/") for c in data["cells"]
    )
    with Image.open(written.path.parent / data["cells"][0]["p"]) as poster:
        assert poster.format == "JPEG"
        assert poster.size == (320, 180)

    sounds = audio_sweep(tmp_path / "aud")
    written = write_report(locate(None, str(sounds)))
    data = page_data(written.path)
    assert [c["m"] for c in data["cells"]] == ["audio"] * 3
    with Image.open(written.path.parent / data["cells"][0]["p"]) as poster:
        assert poster.format == "JPEG"
        assert poster.width == 320
    csp = re.search(r'Content-Security-Policy" content="([^"]*)"', written.path.read_text())
    assert csp is not None
    # Posters and media are files beside the page: no img-src/media-src/default-src limits them.
    assert not re.search(r"\b(default|img|media)-src\b", csp[1]), csp[1]


def page_data(page: Path) -> dict[str, Any]:
    text = page.read_text()
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text)
    assert match is not None
    data: dict[str, Any] = json.loads(match[1])
    return data


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromedriver")
@pytest.mark.timeout(300)
def test_the_page_shows_images_as_stills_and_plays_audio_on_the_master_clock(
    tmp_path: Path, browser: Any
) -> None:
    images = write_report(locate(None, str(image_sweep(tmp_path / "img")))).path
    browser.get(images.as_uri())
    until(
        browser,
        "document.querySelectorAll('.tile[data-kind=image] img.poster').length === 4 && "
        "Array.from(document.querySelectorAll('img.poster')).every("
        "function (i) { return i.complete && i.naturalWidth > 0; })",
        "every image shown",
    )
    assert browser.execute_script("return window.comfysweepReport.liveCount();") == 0
    assert browser.execute_script("return document.querySelectorAll('.abpick').length;") == 0

    sounds = write_report(locate(None, str(audio_sweep(tmp_path / "aud")))).path
    browser.get(sounds.as_uri())
    until(
        browser,
        "document.querySelectorAll('.tile[data-kind=audio] audio.live[controls]').length === 3",
        "a player on every audio cell in view",
    )
    srcs = browser.execute_script(
        "return Array.from(document.querySelectorAll('audio')).map(function (a) {"
        "return a.getAttribute('src'); });"
    )
    assert sorted(srcs) == ["a0.wav", "a1.wav", "a2.wav"]
    until(
        browser,
        "Array.from(document.querySelectorAll('audio')).every("
        "function (a) { return a.readyState >= 1; })",
        "audio loaded",
    )
    browser.find_element("id", "play").click()
    until(
        browser,
        "Array.from(document.querySelectorAll('audio')).every(function (a) { return !a.paused; })",
        "every audio playing with Play all",
    )
    browser.find_element("id", "play").click()
    until(
        browser,
        "Array.from(document.querySelectorAll('audio')).every(function (a) { return a.paused; })",
        "every audio paused with Pause all",
    )
    browser.execute_script(  # the master scrub seeks every player, audio too
        "var s = document.getElementById('scrub'); s.value = 300;"
        "s.dispatchEvent(new Event('input'));"
    )
    until(
        browser,
        "(function () { var a = document.querySelector('audio[src=\"a2.wav\"]');"
        "return Math.abs(a.currentTime - 0.3 * window.comfysweepReport.clock.duration) < 0.2; })()",
        "the longest audio at the scrubbed time",
    )
    assert browser.execute_script("return window.comfysweepReport.liveCount();") <= VIDEO_CAP


def report_cli(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def test_the_mosaic_draws_an_image_sweep_as_stills(tmp_path: Path) -> None:
    store = image_sweep(tmp_path / "img")
    result = report_cli("--store", store, "--video", "--x", "prompt", "--y", "seed")
    assert result.exit_code == 0, result.output
    out = tmp_path / "img" / "report.mp4"
    with av.open(str(out)) as container:
        frame = next(container.decode(container.streams.video[0]))
        picture = frame.to_ndarray(format="rgb24")
    # Each cell shows its image (a colour by seed), not the grey card of a cell without one.
    info = write_mosaic(
        tmp_path / "m.mp4",
        [
            [MosaicCell(tmp_path / "img" / f"{p}-{s}.png", "") for p in ("fox", "owl")]
            for s in (1, 2)
        ],
        x_labels=["fox", "owl"],
        y_labels=["1", "2"],
    )
    with av.open(str(info.path)) as container:
        picture = next(container.decode(container.streams.video[0])).to_ndarray(format="rgb24")
    for (x, y, width, height), seed in zip(info.boxes, (1, 1, 2, 2), strict=True):
        r, g, b = picture[y + height // 2, x + width // 2]
        assert abs(int(r) - 60 * seed) < 20, (r, g, b)
        assert abs(int(g) - 90) < 20, (r, g, b)
        assert b > 170, (r, g, b)


def test_the_mosaic_of_an_audio_sweep_is_refused_in_one_line(tmp_path: Path) -> None:
    store = audio_sweep(tmp_path / "aud", (1.0, 2.0))
    result = report_cli("--store", store, "--video")
    assert result.exit_code != 0
    assert result.output == (
        "Error: report --video: the mosaic is for video and image sweeps, and this sweep's "
        "outputs are audio; `comfysweep report` writes a page that plays them\n"
    )
    assert not (tmp_path / "aud" / "report.mp4").exists()


def load(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    cache = tmp_path / f"cache-{folder.name}"
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def edit_sweep(folder: Path) -> Path:
    """An image-edit sweep: each job sent a conditioning image (written under inputs/) and made
    a PNG, like it."""
    outputs = [
        ({"prompt": "snow", "image": data_uri(image_bytes("PNG", 8, 8, (i * 50, 0, 0)))})
        for i in range(3)
    ]
    return finished_sweep(
        folder,
        "google/nano-banana-2-lite/edit",
        [(inputs, f"edit-{i}.png", image_bytes("PNG", 32, 18)) for i, inputs in enumerate(outputs)],
    )


def test_the_results_folder_of_an_image_sweep_loads_as_its_images_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its conditioning images (inputs/) and the report's posters are PNGs and JPEGs too: the
    dataset card names the outputs' own files, so `datasets` loads the outputs alone."""
    folder = tmp_path / "results"
    store_path = edit_sweep(folder)
    with Store.open(store_path) as store:
        results = ResultsFolder(folder, BANANA, "{key}")
        results.attach(store)
        results.write_manifest(store.jobs())
    assert len(list((folder / "inputs").glob("*.png"))) == 3
    write_report(locate(None, str(store_path)))  # posters under report_assets/
    loaded = load(folder, tmp_path, monkeypatch)
    assert sorted(Path(r["image"].filename).name for r in loaded) == [
        "edit-0.png",
        "edit-1.png",
        "edit-2.png",
    ]
    assert {r["image"].size for r in loaded} == {(32, 18)}
    assert {r["kind"] for r in loaded} == {"image"}


def test_an_image_sweep_exports_as_an_image_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = edit_sweep(tmp_path / "results")
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", "--store", str(store), str(dest)])
    assert result.exit_code == 0, result.output
    table = manifest_lines(dest, "metadata.jsonl")
    assert [row["file_name"] for row in table] == [f"data/edit-{i}.png" for i in range(3)]
    assert '  - name: "image"\n    dtype: image\n' in (dest / "README.md").read_text()
    import datasets

    loaded = load(dest, tmp_path, monkeypatch)
    assert loaded.features["image"] == datasets.Image()
    assert [r["image"].size for r in loaded] == [(32, 18)] * 3
    # The conditioning image an edit sent is the input_image column (the outputs hold "image").
    assert all((dest / r["input_image"]).is_file() for r in loaded)
    assert len(list((dest / "inputs").glob("*.png"))) == 3


def test_an_audio_sweep_exports_as_an_audio_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`datasets` 5 encodes even an audio file's path through torchcodec (and torch): where it
    is missing, the folder is checked to be an audio folder with an Audio column, and not
    loaded row by row."""
    store = audio_sweep(tmp_path / "results", (1.0, 2.0))
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", "--store", str(store), str(dest)])
    assert result.exit_code == 0, result.output
    table = manifest_lines(dest, "metadata.jsonl")
    assert [row["file_name"] for row in table] == ["data/a0.wav", "data/a1.wav"]
    assert '  - name: "audio"\n    dtype: audio\n' in (dest / "README.md").read_text()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    builder = datasets.load_dataset_builder(str(dest), cache_dir=str(tmp_path / "cache"))
    assert builder.name == "audiofolder"
    assert isinstance(builder.info.features["audio"], datasets.Audio)
    assert builder.info.features["duration"] == datasets.Value("float64")
    if importlib.util.find_spec("torchcodec") is None:
        pytest.skip("rows not loaded: datasets' Audio feature needs torchcodec (and torch)")
    loaded = load(dest, tmp_path, monkeypatch).cast_column("audio", datasets.Audio(decode=False))
    assert [Path(r["audio"]["path"]).name for r in loaded] == ["a0.wav", "a1.wav"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "webdataset"])
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_every_other_format_exports_images_and_audio(tmp_path: Path, fmt: str, kind: str) -> None:
    store = edit_sweep(tmp_path / "r") if kind == "image" else audio_sweep(tmp_path / "r")
    dest = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", "--store", str(store), str(dest), "--format", fmt])
    assert result.exit_code == 0, result.output
    ext = "png" if kind == "image" else "wav"
    if fmt == "webdataset":
        with tarfile.open(dest / "shard-000000.tar") as tar:
            names = tar.getnames()
        assert sum(n.endswith(f".{ext}") and ".image." not in n for n in names) == 3
    else:
        assert len(list((dest / "data").glob(f"*.{ext}"))) == 3


EMULATED = [
    (T2I, "prompt: a red fox in the snow", "aspect_ratio: ['16:9', '1:1']", "png", "image"),
    (T2A, "tags: calm piano", "duration: [1, 2]", "wav", "audio"),
    (T2V, "prompt: a fox\n  duration: 4", "aspect_ratio: ['16:9', '9:16']", "mp4", "video"),
]
SPEC = """\
name: {name}
model: {model}
inputs:
  {inputs}
axes:
  {axis}
run:
  output: {output}
  poll_interval: 0.01
  rate: 1000
  retries: 0
"""


@pytest.mark.parametrize(("model_id", "inputs", "axis", "ext", "kind"), EMULATED)
def test_an_emulated_image_or_audio_model_runs_end_to_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_id: str,
    inputs: str,
    axis: str,
    ext: str,
    kind: str,
) -> None:
    """Run on the emulated catalog: each output verified, named by its content, in the manifest
    with its kind, on the report page, and exported as a dataset of its kind."""
    spec = tmp_path / "sweep.yaml"
    output = tmp_path / "results"
    spec.write_text(SPEC.format(name=kind, model=model_id, inputs=inputs, axis=axis, output=output))
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        assert emu.state is not None
        if model_id not in emu.state.models:
            pytest.skip(f"the emulator does not serve {model_id} yet (its catalog comes later)")
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
        assert report.complete, report
        assert len(emu.ledger()["jobs"]) == 2
    folder = output / kind
    entries = manifest_lines(folder, "manifest.jsonl")
    assert [e["state"] for e in entries] == ["done", "done"]
    outputs = [e["outputs"][0] for e in entries]
    assert all(o["path"].endswith(f".{ext}") and o["kind"] == kind for o in outputs), outputs
    model = get_model(model_id)
    for entry, out in zip(entries, outputs, strict=True):
        raw = {model.raw_key(k) or k: v for k, v in entry["inputs"].items()}
        verify_output(folder / out["path"], ext, expected_shape(model, raw), kind=kind)
    page = write_report(locate(None, str(folder / "comfysweep.db")))
    assert {c["m"] for c in page_data(page.path)["cells"]} == {kind}
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(
        cli, ["export", "--store", str(folder / "comfysweep.db"), str(dest)]
    )
    assert result.exit_code == 0, result.output
    assert f'  - name: "{kind}"\n    dtype: {kind}\n' in (dest / "README.md").read_text()
    if kind == "image":
        assert len(load(dest, tmp_path, monkeypatch)) == 2
    if kind == "video":  # a catalog video: checked by its ratio and length, not its pixels
        shapes = [expected_shape(model, e["inputs"]) for e in entries]
        assert sorted(s.aspect for s in shapes if s.aspect) == [(9.0, 16.0), (16.0, 9.0)]
        assert {s.seconds for s in shapes} == {4.0}


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.m4v", "video"), ("a.opus", "audio"), ("a.oga", "audio"), ("a.aac", "audio")],
)
def test_every_extension_verify_gives_has_its_dataset_kind(name: str, kind: str) -> None:
    """An export's feature (and the results folder's input columns) follow the output's kind:
    an .opus output was taken for a video."""
    assert output_kind(name) == kind
    assert kind_of_extension(name.rpartition(".")[2]) == kind


ONE_VACE_JOB = """\
name: one
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


def run_one(tmp_path: Path) -> tuple[Any, Path]:
    spec = tmp_path / "one.yaml"
    spec.write_text(ONE_VACE_JOB.format(output=tmp_path / "results"))
    with Emulator(EmulatorConfig(speed=5000.0, workers=2)) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(poll_interval=0.02),
            retry=RetryPolicy(wait=False),
        )
        assert len(emu.ledger()["jobs"]) == 1
    return report, tmp_path / "results" / "one"


def test_the_runner_names_an_output_by_its_content_type_when_its_url_names_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_result, real_download = ModelApiClient.result, ModelApiClient.download

    async def result(self: ModelApiClient, request_id: str, include_cost: bool = True) -> Any:
        got = await real_result(self, request_id, include_cost)
        return dataclasses.replace(got, urls=[u.removesuffix(".mp4") for u in got.urls])

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        got = await real_download(self, url + ".mp4", dest)
        return dataclasses.replace(got, content_type="video/quicktime")

    monkeypatch.setattr(ModelApiClient, "result", result)
    monkeypatch.setattr(ModelApiClient, "download", download)
    report, folder = run_one(tmp_path)
    assert report.complete, report
    (entry,) = manifest_lines(folder, "manifest.jsonl")
    (output,) = entry["outputs"]
    assert output["path"].endswith(".mov"), output
    assert (output["kind"], output["mime"]) == ("video", "video/quicktime")


def test_the_runner_refuses_an_output_of_another_kind_than_the_model_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video model that answers with a WAV: never done, the job's error and the run's line
    say why; it is paid once."""
    sound = audio_file(tmp_path / "made.wav", 1.0).read_bytes()
    real_download = ModelApiClient.download

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        got = await real_download(self, url, dest)
        await anyio.Path(dest).write_bytes(sound)
        return dataclasses.replace(got, size=len(sound))

    monkeypatch.setattr(ModelApiClient, "download", download)
    report, folder = run_one(tmp_path)
    assert not report.complete
    with Store.open(folder / "comfysweep.db", readonly=True) as store:
        (row,) = store.jobs()
    assert row.state is JobState.SUCCEEDED
    assert "is an audio file (wav), not the video this model makes" in str(row.error)
    assert any(
        m.endswith(
            "is an audio file (wav), not the video this model makes; run again to download it again"
        )
        for m in report.messages
    ), report.messages
    assert list(folder.glob("*.wav")) == list(folder.glob("*.mp4")) == []


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromedriver")
@pytest.mark.timeout(300)
def test_a_page_of_audio_cells_never_holds_more_than_the_cap_of_players(
    tmp_path: Path, browser: Any
) -> None:
    """60 audio cells, more than 12 of them in view: the players count in the same cap."""
    sound = audio_file(tmp_path / "made.wav", 0.5).read_bytes()
    outputs = [
        ({"tags": tag, "seed": seed}, f"{tag}-{seed}.wav", sound)
        for tag in ("jazz", "rock", "folk", "soul", "funk", "blues")
        for seed in range(10)
    ]
    store = finished_sweep(tmp_path / "many", T2A, outputs)
    page = write_report(locate(None, str(store)), Axes(x="tags", y="seed")).path
    browser.get(page.as_uri())
    until(browser, "document.querySelectorAll('.tile').length === 60", "60 tiles")
    until(browser, "window.comfysweepReport.liveCount() > 0", "players in view")
    visible = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tile')).filter(function (t) {"
        "var r = t.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; }).length;"
    )
    assert visible > VIDEO_CAP
    browser.find_element("id", "play").click()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    for y in range(0, height, 400):
        browser.execute_script("window.scrollTo(0, arguments[0])", y)
        live = browser.execute_script("return window.comfysweepReport.liveCount()")
        assert live <= VIDEO_CAP
    assert 0 < browser.execute_script("return window.comfysweepReport.stats.maxLive") <= VIDEO_CAP
