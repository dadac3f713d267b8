"""A hostile review of media inputs and outputs (issue 11): files that lie about their type or
size, files that change under a run, outputs of mixed kinds, images too large to decode."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.emulator.faults import FaultProfile
from orchestrator.errors import OutputInvalid
from orchestrator.grid import iter_jobs
from orchestrator.models import get_model
from orchestrator.results import ResultsFolder
from orchestrator.sources import LocalMedia, MediaFiles, Problem, local_media, per_job_groups
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep
from orchestrator.verify import Shape, verify_output

from .media_files import _Job, audio_file, finished_sweep, image_bytes, video_file
from .sweeps import run_until_killed
from .test_kill import DRIVER
from .test_media_inputs import EDIT, catalog, error, spec

__all__ = ["catalog"]  # a fixture, shared


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


T2V = "bytedance/seedance-2.5/text-to-video/1080p"
T2I = "google/nano-banana-2-lite/text-to-image"


def mixed_sweep(folder: Path) -> Path:
    """A done sweep over a video model and an image model (a `model` axis); its store."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        (T2V, {"prompt": "fox"}, "v.mp4", video_file(folder.parent / "v.mp4", 64, 36, 4)),
        (T2I, {"prompt": "fox"}, "i.png", None),
    ]
    jobs = [
        _Job(hashlib.sha256(f"{model}{i}".encode()).hexdigest(), i, inputs, model)
        for i, (model, inputs, _, _) in enumerate(made)
    ]
    with Store.open(folder / "comfysweep.db") as store:
        store.sync_jobs(jobs, [T2V, T2I])
        for row in store.claim(len(jobs)):
            _, _, name, src = made[row.index]
            data = src.read_bytes() if src else image_bytes("PNG", 32, 18)
            (folder / name).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            output = {"path": name, "size": len(data), "sha256": digest, "url": f"u/{name}"}
            store.transition(row.key, JobState.QUEUED, request_id=f"r{row.index}")
            store.transition(row.key, JobState.SUCCEEDED, cost=0.5)
            store.transition(row.key, JobState.DONE, outputs=[output])
    return folder / "comfysweep.db"


def test_an_hf_export_of_videos_and_images_is_refused_in_one_line(tmp_path: Path) -> None:
    """The dataset card took the first output's kind: a folder of an MP4 and a PNG typed as one
    `video` column, which `datasets` cannot load. An hf folder holds one kind: refused, naming
    the kinds and the formats that take them; the other formats export them."""
    store = mixed_sweep(tmp_path / "results")
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", "--store", str(store), str(dest)])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == (
        "Error: an hf folder holds outputs of one kind; this sweep made image and video: "
        "export with --format parquet, csv or webdataset"
    )
    assert not dest.exists()
    result = CliRunner().invoke(
        cli, ["export", "--store", str(store), str(dest), "--format", "parquet"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["i.png", "v.mp4"]
    card = (dest / "README.md").read_text()
    assert '  - name: "file_name"\n    dtype: string\n' in card


def planned_png(tmp_path: Path) -> LocalMedia:
    (tmp_path / "a.png").write_bytes(image_bytes("PNG", 8, 8))
    return local_media("a.png", tmp_path, tmp_path, MediaFiles(), "image")


def test_a_file_grown_past_its_cap_after_the_plan_is_refused_when_its_job_is_built(
    tmp_path: Path,
) -> None:
    """The cap was checked on the size at load; the job read whatever the file held later (7
    MiB sent as an image, or a text file sent as image/png)."""
    media = planned_png(tmp_path)
    with (tmp_path / "a.png").open("ab") as handle:
        handle.truncate(7 * 2**20)
    with pytest.raises(Problem, match=r"^a.png changed since the sweep was planned: 7.0 MiB, "):
        media.data_uri()
    (tmp_path / "a.png").write_text("not an image at all")
    with pytest.raises(Problem, match=r"^a.png changed since the sweep was planned: not an image"):
        media.data_uri()


def test_a_file_replaced_by_a_fifo_after_the_plan_is_refused_not_waited_on(
    tmp_path: Path,
) -> None:
    """Reading a FIFO with no writer blocks for ever: the run hung building the job."""
    media = planned_png(tmp_path)
    (tmp_path / "a.png").unlink()
    os.mkfifo(tmp_path / "a.png")
    with pytest.raises(Problem, match=r"^a.png changed since the sweep was planned: not a file"):
        media.data_uri()


def audio_only_mp4(path: Path) -> Path:
    """An ISO-BMFF file (brand isom, as ffmpeg writes any .mp4) with one AAC track, no video."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = 8000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_an_mp4_with_no_video_stream_given_as_a_video_is_refused_by_its_content(
    tmp_path: Path,
) -> None:
    """Its first bytes say MP4 (`ftyp isom`), so the sniffer called it a video and the job sent
    sound to a video input; given as audio, the same file was refused as a video. Its tracks
    decide."""
    audio_only_mp4(tmp_path / "clip.mp4")
    with pytest.raises(Problem, match=r"^clip.mp4 is an audio file \(audio/mp4\), not a video$"):
        local_media("clip.mp4", tmp_path, tmp_path, MediaFiles(), "video")
    sound = local_media("clip.mp4", tmp_path, tmp_path, MediaFiles(), "audio")
    assert sound.mime == "audio/mp4"
    assert sound.data_uri().startswith("data:audio/mp4;base64,AAAA")


def test_a_png_header_on_garbage_is_refused_by_its_content(tmp_path: Path) -> None:
    """Eight bytes of PNG signature were all the sniffer asked of an image."""
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    with pytest.raises(Problem, match=r"^x.png: cannot be read as an image \(.*\); give a PNG"):
        local_media("x.png", tmp_path, tmp_path, MediaFiles(), "image")
    # A real image of each kind still passes, and a file of a format Pillow does not read is
    # judged by its first bytes alone, as before.
    (tmp_path / "ok.webp").write_bytes(image_bytes("WEBP", 8, 8))
    assert local_media("ok.webp", tmp_path, tmp_path, MediaFiles(), "image").mime == "image/webp"
    audio_file(tmp_path / "ok.wav", 0.5)
    assert local_media("ok.wav", tmp_path, tmp_path, MediaFiles(), "audio").kind == "audio"
    video_file(tmp_path / "ok.mp4", 32, 32, 2)
    assert local_media("ok.mp4", tmp_path, tmp_path, MediaFiles(), "video").kind == "video"


T2A = "acestep-ai/ace-step-1.5/text-to-audio"
RUN_SPEC = """\
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
"""


@pytest.mark.parametrize(
    ("model", "inputs", "axis", "ext"),
    [
        (T2I, "prompt: a fox", "aspect_ratio: ['16:9', '1:1']", "png"),
        (T2A, "tags: calm piano", "duration: [1, 2]", "wav"),
    ],
)
def test_a_cut_image_or_audio_download_is_downloaded_again_never_resubmitted(
    tmp_path: Path, model: str, inputs: str, axis: str, ext: str
) -> None:
    """A body cut with no Content-Length looks whole to HTTP: verification refuses it and the
    run downloads again (the ledger counts the downloads), submitting each job once."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        RUN_SPEC.format(name="cut", model=model, inputs=inputs, axis=axis, output=tmp_path / "r")
    )
    profile = FaultProfile.parse(
        {"faults": {"truncated_download": {"rate": 1.0, "limit": 2, "content_length": 0}}}
    )
    with Emulator(EmulatorConfig(speed=2000.0, workers=2, faults=profile)) as emu:
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
        ledger = emu.ledger()
    assert report.complete, report
    assert set(ledger["submissions_by_input"].values()) == {1}
    assert len(ledger["jobs"]) == 2
    assert sum(job["downloads"] for job in ledger["jobs"]) == 4
    files = sorted((tmp_path / "r" / "cut").glob(f"*.{ext}"))
    assert len(files) == 2
    kind = "image" if ext == "png" else "audio"
    for path in files:
        verify_output(path, ext, Shape(), kind=kind)


def spec_error(tmp_path: Path, value: str) -> str:
    path = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: ['{value}']\n")
    return error(path).split("inputs.image_urls: ", 1)[1]


def test_a_data_uri_of_another_kind_is_refused_like_a_file_of_that_kind(
    tmp_path: Path, catalog: None
) -> None:
    """A data: URI passed through unread: text (or audio) went to an image input."""
    assert spec_error(tmp_path, "data:text/plain;base64,aGVsbG8=") == (
        "a data: URI of text/plain; give an image (data:image/...;base64,...), a file or an "
        "https URL"
    )
    wav = base64.b64encode(audio_file(tmp_path / "a.wav", 0.1).read_bytes()).decode()
    assert spec_error(tmp_path, f"data:image/png;base64,{wav}") == (
        "a data: URI of image/png whose content is audio/wav; give an image"
    )
    png = base64.b64encode(image_bytes("PNG", 4, 4)).decode()
    (job,) = iter_jobs(
        load_spec(
            spec(
                tmp_path,
                f"model: {EDIT}\ninputs:\n  prompt: a\n"
                f"  image_urls: ['data:image/png;base64,{png}']\n",
            )
        )
    )
    assert job.inputs["image_urls"] == [f"data:image/png;base64,{png}"]


def test_an_https_url_is_known_whatever_the_case_of_its_scheme_and_needs_a_host(
    tmp_path: Path, catalog: None
) -> None:
    """'HTTPS://...' was refused with 'https:// URLs are not sent; give an https URL', and
    'https://' alone was sent."""
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: ['HTTPS://x.example/b.png']\n",
    )
    (job,) = iter_jobs(load_spec(path))
    assert job.inputs["image_urls"] == ["HTTPS://x.example/b.png"]
    assert spec_error(tmp_path, "https://") == "'https://': an https URL names a host"


def test_a_list_item_that_is_no_path_is_named_in_english(tmp_path: Path, catalog: None) -> None:
    path = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: [3]\n")
    assert error(path).endswith(
        "inputs.image_urls: must be the path of an image file or an https URL, got 3"
    )


@pytest.mark.timeout(300)  # runs in a subprocess: slow on a busy machine
@pytest.mark.parametrize(
    ("model", "inputs", "axis", "ext"),
    [
        (T2I, "prompt: a fox", "aspect_ratio: ['16:9', '1:1', '4:3', '9:16']", "png"),
        (T2A, "tags: calm piano", "duration: [1, 2, 3, 4]", "wav"),
    ],
)
def test_a_kill_mid_image_or_audio_download_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, inputs: str, axis: str, ext: str
) -> None:
    monkeypatch.setenv("COMFYSWEEP_TEST_CATALOG", model)  # the killed process knows it too
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        RUN_SPEC.format(name="k", model=model, inputs=inputs, axis=axis, output=tmp_path / "r")
    )
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        run_until_killed(DRIVER, spec, emu, "downloading", "2")
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
        ledger = emu.ledger()
    assert report.complete, report
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}
    folder = tmp_path / "r" / "k"
    assert not list((folder / ".partial").iterdir())
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    kind = "image" if ext == "png" else "audio"
    for entry in entries:
        (output,) = entry["outputs"]
        path = folder / output["path"]
        assert path.suffix == f".{ext}"
        assert output["kind"] == kind
        assert path.stat().st_size == output["size"]
        verify_output(path, ext, Shape(), kind=kind)
    assert len(list(folder.glob(f"*.{ext}"))) == 4


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("google/nano-banana-2-lite/edit", "image_urls"),
        ("wan-ai/wan-3.0/image-to-video", "image_url"),
    ],
)
def test_the_emulator_renders_past_an_input_image_that_claims_a_huge_size(
    tmp_path: Path, model: str, field: str
) -> None:
    """The emulator decoded the first input image for its colour: a 600-byte PNG claiming
    40000x40000 raised DecompressionBombError out of the render (a 500 on every download of
    the paid job). An image past a pixel budget lends no colour; the output still renders."""
    from orchestrator.emulator.catalog import emulated_catalog
    from orchestrator.emulator.outputs import output_of, render

    offer = emulated_catalog()[model]
    uri = "data:image/png;base64," + base64.b64encode(huge_png(40000, 40000)).decode()
    inputs = {"prompt": "x", field: [uri] if field == "image_urls" else uri, "duration": 2}
    made = output_of(offer, inputs)
    path = tmp_path / f"out.{made.extension}"
    render(path, offer, inputs, made)
    assert verify_output(path, made.extension, Shape(), kind=made.kind) == made.extension


def test_an_audio_model_s_mp4_of_sound_alone_is_kept_as_audio(tmp_path: Path) -> None:
    """An MP4 of one AAC track with ffmpeg's brand (isom, not M4A) was taken for a video by its
    brand: refused as 'a video (mp4), not the audio this model makes', on every download of
    the paid job. Its tracks decide its kind; a video model still refuses it."""
    path = audio_only_mp4(tmp_path / "a")
    assert verify_output(path, "mp4", Shape(), kind="audio") == "m4a"
    with pytest.raises(OutputInvalid, match=r"is an audio file \(m4a\), not the video"):
        verify_output(path, "mp4", Shape(), kind="video")


@pytest.mark.parametrize(
    ("model", "inputs", "axis"),
    [
        (T2A, "tags: calm piano", "seed: [1, 2]"),
        (T2V, "duration: 4", "prompt: [a fox, an owl]"),
        ("blackforestlabs/flux-3/text-to-video", "duration: '5'", "prompt: [a fox, an owl]"),
        (T2I, "aspect_ratio: auto", "prompt: [a fox, an owl]"),
    ],
)
def test_a_model_run_with_its_defaults_makes_outputs_verify_accepts(
    tmp_path: Path, model: str, inputs: str, axis: str
) -> None:
    """No duration, ratio or resolution given: what the emulator renders by the defaults must
    be what verification expects by the same defaults."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        RUN_SPEC.format(name="d", model=model, inputs=inputs, axis=axis, output=tmp_path / "r")
    )
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
        ledger = emu.ledger()
    assert report.complete, report
    assert sum(job["downloads"] for job in ledger["jobs"]) == 2


def test_a_symlink_loop_given_as_a_file_is_one_line(tmp_path: Path, catalog: None) -> None:
    """Path.resolve raises RuntimeError on a loop (Python 3.11, 3.12): a traceback."""
    os.symlink("loop.png", tmp_path / "loop.png")
    path = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: [loop.png]\n")
    assert error(path).endswith("inputs.image_urls: 'loop.png': a symlink loop, not a file")


def test_the_emulator_takes_an_mp4_of_sound_alone_as_audio_not_video(tmp_path: Path) -> None:
    """comfysweep sends such a file as audio (its tracks); the emulator judged it by its brand
    and refused it (422) as a video."""
    from orchestrator.emulator.uploads import media_problem

    data = audio_only_mp4(tmp_path / "a.mp4").read_bytes()
    uri = "data:audio/mp4;base64," + base64.b64encode(data).decode()
    assert media_problem("audio", uri) is None
    video = "data:video/mp4;base64," + base64.b64encode(data).decode()
    assert media_problem("video", video) == (
        "video/mp4 data is not a video: its bytes are audio data",
        "media_kind",
    )


def test_report_and_mosaic_show_an_image_past_pillow_s_limit_as_unreadable(
    tmp_path: Path,
) -> None:
    """verify keeps such an image (its structure is whole); the report's poster and the
    mosaic's still then raised DecompressionBombError: a traceback instead of a page."""
    outputs = [
        ({"prompt": "a"}, "0.png", huge_png(40000, 40000)),
        ({"prompt": "b"}, "1.png", image_bytes("PNG", 64, 64)),
    ]
    store = finished_sweep(tmp_path / "r", T2I, outputs)
    page = CliRunner().invoke(cli, ["report", "--store", str(store)])
    assert page.exit_code == 0, page.output
    mosaic = CliRunner().invoke(cli, ["report", "--store", str(store), "--video", "--x", "prompt"])
    assert mosaic.exit_code == 0, mosaic.output
    assert (tmp_path / "r" / "report.mp4").is_file()


def test_a_per_job_remainder_names_a_few_leftover_files_not_thousands(tmp_path: Path) -> None:
    """The line listed every file left over: per_job 1000 over 1999 files named 999 of them."""
    files = [f"refs/{i:04d}.png" for i in range(1999)]
    with pytest.raises(Problem) as caught:
        per_job_groups(files, 1000, "refs/*.png")
    assert caught.value.message == (
        "'refs/*.png' matches 1999 files, not a multiple of per_job 1000 (999 left over: "
        "refs/1000.png, refs/1001.png, refs/1002.png and 996 more); add or remove files, or "
        "change per_job"
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_text_source_that_is_a_fifo_or_dev_zero_is_one_line_not_a_hang(
    tmp_path: Path, catalog: None, kind: str
) -> None:
    """`{file: ...}` read its file whole: /dev/zero ate memory to a MemoryError, a FIFO with no
    writer blocked the plan for ever. A template_file too."""
    target = tmp_path / "lines.txt"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        os.symlink("/dev/zero", target)
    for source in ("{file: lines.txt}", "{template_file: lines.txt}"):
        path = spec(
            tmp_path,
            f"model: {EDIT}\ninputs:\n  image_urls: [a.png]\naxes:\n  prompt: {source}\n",
            {"a.png": image_bytes("PNG", 4, 4)},
        )
        assert "not a regular file (a folder, FIFO or device); give a file" in error(path)


def test_per_job_above_max_items_is_said_before_any_remainder(
    tmp_path: Path, catalog: None
) -> None:
    """per_job 11 for a list of at most 10 first asked to add or remove files to make a
    multiple of 11; once done, every group was refused as too long."""
    files = {f"refs/{i:02d}.png": image_bytes("PNG", 4, 4, (i, 0, 0)) for i in range(12)}
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a\naxes:\n"
        "  image_urls: {glob: 'refs/*.png', per_job: 11}\n",
        files,
    )
    assert error(path).endswith("axes.image_urls: per_job 11 is above the 10 files the model takes")


def test_a_data_uri_not_in_base64_is_refused_as_the_emulator_and_runcomfy_do(
    tmp_path: Path, catalog: None
) -> None:
    """A URL-encoded data: URI (an SVG, say) was sent, for the service to refuse (422)."""
    assert spec_error(tmp_path, "data:image/svg+xml,%3Csvg%3E%3C/svg%3E") == (
        "a data: URI of image/svg+xml not in base64; give data:image/svg+xml;base64,..."
    )


def test_the_results_folder_of_a_video_and_image_sweep_loads_as_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its card named *.mp4 and *.png: `datasets` took it for an image folder, an `image`
    column holding the MP4 too (a row that cannot decode). Of several kinds, the card names
    metadata.jsonl alone: file_name a path, kind and mime beside it."""
    folder = tmp_path / "results"
    store_path = mixed_sweep(folder)
    with Store.open(store_path) as store:
        results = ResultsFolder(folder, get_model(T2V), "{key}")
        results.attach(store)
        results.write_manifest(store.jobs())
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "c"))
    assert sorted((r["file_name"], r["kind"]) for r in loaded) == [
        ("i.png", "image"),
        ("v.mp4", "video"),
    ]
