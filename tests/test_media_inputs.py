"""Media inputs of every shape: single files and lists of images, videos and audio, from local
files (sent as data: URIs, under RunComfy's caps, known by their content) or https URLs."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import tarfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from orchestrator import iter_jobs, load_spec
from orchestrator import models as registry
from orchestrator.cli import cli
from orchestrator.conditioning import MediaFolder, media_inputs
from orchestrator.errors import SpecError
from orchestrator.magic import media_type as sniff
from orchestrator.models import Model, get_model
from orchestrator.sources import MAX_MEDIA_BYTES


def _jpeg() -> bytes:
    """A real JPEG (an emulator may decode the images it is sent)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 20)).save(out, "JPEG")
    return out.getvalue()


START = Path(__file__).resolve().parents[1] / "sweeps" / "start.png"
PNG = START.read_bytes()
JPEG = _jpeg()
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 40
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 40
HEADERS = {"image": PNG[:64], "video": MP4, "audio": WAV}
EDIT = "google/nano-banana-2-lite/edit"
REFS = "bytedance/seedance-2.5/reference-to-video/1080p"
SINGLE = "test/one-of-each/media"

# Schemas as RunComfy's catalog publishes them (../shared/reference/runcomfy-catalog-sample.json).
ENTRIES: list[dict[str, Any]] = [
    {
        "model_id": EDIT,
        "output": "image",
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "default": ""},
                "aspect_ratio": {"type": "string", "default": "auto", "enum": ["auto", "1:1"]},
                "image_urls": {
                    "type": "array",
                    "format": "image_uris",
                    "minItems": 1,
                    "maxItems": 10,
                },
            },
            "required": ["prompt", "image_urls"],
        },
    },
    {
        "model_id": REFS,
        "output": "video",
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "default": ""},
                "duration": {"type": "integer", "default": 5, "minimum": 4, "maximum": 30},
                "images": {"type": "array", "format": "image_uris", "maxItems": 9},
                "videos": {"type": "array", "format": "video_uris", "maxItems": 3},
                "audios": {"type": "array", "format": "audio_uris", "maxItems": 3},
            },
            "required": ["prompt"],
        },
    },
    {
        "model_id": SINGLE,
        "output": "video",
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "default": ""},
                "image": {"type": "string", "format": "image_uri"},
                "video": {"type": "string", "format": "video_uri"},
                "audio": {"type": "string", "format": "audio_uri"},
                "stops": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
            },
            "required": ["prompt"],
        },
    },
]


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The catalog models these tests use, known to the registry (unless it knows them)."""
    for entry in ENTRIES:
        known = get_model(entry["model_id"])
        if not known.has_schema:
            model = Model.from_catalog(entry)
            monkeypatch.setitem(registry._registry(), model.model_id, model)
    _forget_catalogs()
    yield
    monkeypatch.undo()
    _forget_catalogs()


def _forget_catalogs() -> None:
    """A cache built from the registry (the emulator's catalog) keeps no test model after us."""
    from orchestrator.emulator import catalog as emulated

    clear = getattr(getattr(emulated, "emulated_catalog", None), "cache_clear", None)
    if clear is not None:
        clear()


def spec(folder: Path, text: str, files: dict[str, bytes] | None = None) -> Path:
    for name, content in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def sparse(path: Path, head: bytes, size: int) -> None:
    """A file of ``size`` bytes that starts with ``head``, written instantly (a sparse file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(head)
        handle.truncate(size)


def error(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        list(iter_jobs(load_spec(path)))
    message = str(caught.value)
    assert "\n" not in message
    return message


def uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_single_image_job_keys_are_those_of_before(tmp_path: Path) -> None:
    """A sweep of one local image keeps its jobs: the keys main computed for this spec."""
    path = spec(
        tmp_path,
        "model: community/wan-2-2/vace-fun\ninputs:\n  prompt: a fox\n  image: start.png\n"
        "axes:\n  seed: [1, 2]\n",
        {"start.png": PNG},
    )
    assert [job.key for job in iter_jobs(load_spec(path))] == [
        "a760b8031fdf9e388087c9cacc70945c9ac2da896f0cfbf7f6e8fd1cda212ce9",
        "cdb24c58a2d62e29b4233dd1c1c1e3eff3eac8750d86f36e81f0d63805e861c5",
    ]


def test_a_list_in_inputs_is_one_value_sent_as_data_uris_and_urls(
    tmp_path: Path, catalog: None
) -> None:
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a fox\n"
        "  image_urls: [a.png, b.jpg, 'https://example.com/c.png']\n",
        {"a.png": PNG, "b.jpg": JPEG},
    )
    (job,) = iter_jobs(load_spec(path))
    assert job.inputs["image_urls"] == [
        uri(PNG, "image/png"),
        uri(JPEG, "image/jpeg"),
        "https://example.com/c.png",
    ]
    # The POST body is plain JSON: the list is a JSON array.
    assert json.loads(json.dumps(job.inputs))["image_urls"] == job.inputs["image_urls"]
    assert job.sources == {"image_urls": ["a.png", "b.jpg", "https://example.com/c.png"]}


def test_an_axis_of_lists_makes_a_job_per_list(tmp_path: Path, catalog: None) -> None:
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a fox\n"
        "axes:\n  image_urls: [[a.png], [a.png, b.jpg]]\n",
        {"a.png": PNG, "b.jpg": JPEG},
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [job.sources["image_urls"] for job in jobs] == [["a.png"], ["a.png", "b.jpg"]]
    assert len({job.key for job in jobs}) == 2


def test_include_and_exclude_take_a_list_as_one_value(tmp_path: Path, catalog: None) -> None:
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a fox\n"
        "axes:\n  image_urls: [[a.png], [b.jpg]]\n"
        "exclude:\n  - image_urls: [b.jpg]\n"
        "include:\n  - image_urls: [a.png, b.jpg]\n",
        {"a.png": PNG, "b.jpg": JPEG},
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [job.sources["image_urls"] for job in jobs] == [["a.png"], ["a.png", "b.jpg"]]


def test_another_list_input_is_one_value_too(tmp_path: Path, catalog: None) -> None:
    """A schema's plain ``array`` field: a list in inputs is its value, an axis lists lists."""
    path = spec(
        tmp_path,
        f"model: {SINGLE}\ninputs:\n  prompt: a\n  stops: [0.5, 1]\naxes:\n  prompt: [a, b]\n",
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [job.inputs["stops"] for job in jobs] == [[0.5, 1], [0.5, 1]]
    assert type(jobs[0].inputs["stops"]) is list  # the POST body, as JSON has it
    axis = spec(tmp_path, f"model: {SINGLE}\ninputs:\n  prompt: a\naxes:\n  stops: [[1], [1, 2]]\n")
    assert [job.inputs["stops"] for job in iter_jobs(load_spec(axis))] == [[1], [1, 2]]
    nested = spec(tmp_path, f"model: {SINGLE}\ninputs:\n  prompt: a\n  stops: [[1]]\n")
    assert error(nested).endswith("inputs.stops: [1] is not of type 'number'")


def test_a_list_input_given_single_files_says_it_takes_lists(tmp_path: Path, catalog: None) -> None:
    takes = (
        "takes a list of image files or https URLs, such as [a.png, b.png]; in an axis, each "
        "value is such a list"
    )
    inputs = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: a.png\n")
    assert error(inputs) == f"{inputs}:4:15: inputs.image_urls: {takes}"
    axis = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a\naxes:\n  image_urls: [a.png, b.png]\n",
    )
    assert error(axis) == f"{axis}:5:16: axes.image_urls[0]: {takes}"


def test_a_list_longer_than_max_items_is_refused(tmp_path: Path, catalog: None) -> None:
    names = [f"{i}.png" for i in range(11)]
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a fox\n  image_urls: [{', '.join(names)}]\n",
        dict.fromkeys(names, PNG),
    )
    assert error(path) == (
        f"{path}:4:15: inputs.image_urls: lists 11 images; the model takes at most 10 "
        "(its maxItems)"
    )
    ten = spec(tmp_path, path.read_text().replace(", 10.png", ""))
    assert len(list(iter_jobs(load_spec(ten)))) == 1


@pytest.mark.parametrize("kind", ["image", "video", "audio"])
@pytest.mark.parametrize("shape", ["single", "list"])
def test_each_kind_has_its_cap_checked_before_reading(
    tmp_path: Path, catalog: None, kind: str, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = MAX_MEDIA_BYTES[kind]
    assert cap == {"image": 6, "video": 32, "audio": 16}[kind] * 2**20
    sparse(tmp_path / "big.bin", HEADERS[kind], cap + 1)
    sparse(tmp_path / "fits.bin", HEADERS[kind], cap)
    if shape == "single":
        text, field = f"model: {SINGLE}\ninputs:\n  prompt: a\n  {kind}: big.bin\n", kind
    else:
        field = f"{kind}s"
        text = f"model: {REFS}\ninputs:\n  prompt: a\n  {field}: [big.bin]\n"
    path = spec(tmp_path, text)
    mib = cap // 2**20
    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read {self}"))
        assert error(path) == (
            f"{path}:4:{5 + len(field)}: inputs.{field}: big.bin is {mib}.0 MiB, above the "
            f"{mib} MiB limit for a data: URI {kind}; host it at a public https URL instead"
        )
    load_spec(spec(tmp_path, text.replace("big.bin", "fits.bin")))


def test_a_job_over_64_mib_is_refused_before_any_file_is_read(
    tmp_path: Path, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each list fits, each file fits; together the request is over RunComfy's 64 MiB."""
    for i in range(4):
        sparse(tmp_path / f"i{i}.png", PNG[:64], 5 * 2**20 + i)  # sizes differ: none is hashed
    sparse(tmp_path / "v.mp4", MP4, 28 * 2**20)
    path = spec(
        tmp_path,
        f"model: {REFS}\ninputs:\n  prompt: a\n  images: [i0.png, i1.png, i2.png, i3.png]\n"
        "axes:\n  videos: [[v.mp4]]\n",
    )
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read {self}"))
    assert error(path) == (
        f"{path}: job 1 (images: ['i0.png', 'i1.png', 'i2.png', 'i3.png']; videos: ['v.mp4']) "
        "would send 64.0 MiB, above the 64 MiB limit of a request; host some files at public "
        "https URLs instead"
    )


def test_a_list_over_64_mib_is_refused_where_the_spec_writes_it(
    tmp_path: Path, catalog: None
) -> None:
    for i in range(3):
        sparse(tmp_path / f"v{i}.mp4", MP4, 30 * 2**20 + i)
    path = spec(
        tmp_path,
        f"model: {REFS}\ninputs:\n  prompt: a\n  videos: [v0.mp4, v1.mp4, v2.mp4]\n",
    )
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {path}:4:11: inputs.videos: v0.mp4, v1.mp4, v2.mp4 make 120.0 MiB as data: "
        "URIs, above the 64 MiB limit of a request; host some at public https URLs instead"
    ]


def test_run_refuses_a_job_over_64_mib_in_one_line_and_submits_nothing(
    tmp_path: Path, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first job fits; the second does not: the run stops before its first submit."""
    from orchestrator.emulator import Emulator, EmulatorConfig

    for i in range(4):
        sparse(tmp_path / f"i{i}.png", PNG[:64], 5 * 2**20 + i)
    sparse(tmp_path / "v.mp4", MP4, 28 * 2**20)
    path = spec(
        tmp_path,
        f"name: big\nmodel: {REFS}\ninputs:\n  prompt: a\n  videos: [v.mp4]\n"
        "axes:\n  images: [[i0.png], [i0.png, i1.png, i2.png, i3.png]]\n"
        f"run:\n  output: {tmp_path / 'results'}\n",
    )
    monkeypatch.setenv("COMFYSWEEP_HOME", str(tmp_path / "home"))
    with Emulator(EmulatorConfig(speed=2000.0)) as emu:
        monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", emu.base_url)
        monkeypatch.setenv("RUNCOMFY_API_TOKEN", emu.token)
        result = CliRunner().invoke(cli, ["run", str(path)])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: {path}: job 2 (images: ['i0.png', 'i1.png', 'i2.png', 'i3.png']; videos: "
            "['v.mp4']) would send 64.0 MiB, above the 64 MiB limit of a request; host some files "
            "at public https URLs instead"
        )
        assert emu.ledger()["jobs"] == []
        assert emu.requests().get("submit", 0) == 0, emu.requests()


def test_plan_refuses_a_job_over_64_mib_past_the_jobs_it_shows(
    tmp_path: Path, catalog: None
) -> None:
    """The grid is walked (files unread) when its largest files could pass the limit together."""
    small = {f"s{i}.png": PNG + bytes([i]) for i in range(11)}
    for i in range(4):
        sparse(tmp_path / f"i{i}.png", PNG[:64], 5 * 2**20 + i)
    sparse(tmp_path / "v.mp4", MP4, 28 * 2**20)
    rows = ", ".join(f"[{name}]" for name in small)
    path = spec(
        tmp_path,
        f"model: {REFS}\ninputs:\n  prompt: a\n  videos: [v.mp4]\n"
        f"axes:\n  images: [{rows}, [i0.png, i1.png, i2.png, i3.png]]\n",
        small,
    )
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {path}: job 12 (images: ['i0.png', ")


@pytest.mark.parametrize(
    ("name", "content", "field", "tail"),
    [
        (
            "notes.png",
            b"just some text\n",
            "image",
            "notes.png: not an image file (its content is "
            "no known image format); give a PNG, JPEG, WebP or GIF file, or an https URL",
        ),
        ("voice.png", WAV, "image", "voice.png is an audio file (audio/wav), not an image"),
        ("clip.wav", MP4, "audio", "clip.wav is a video file (video/mp4), not an audio"),
        ("song.mp4", MP3, "video", "song.mp4 is an audio file (audio/mpeg), not a video"),
    ],
)
def test_a_file_is_known_by_its_content_not_its_name(
    tmp_path: Path, catalog: None, name: str, content: bytes, field: str, tail: str
) -> None:
    path = spec(
        tmp_path, f"model: {SINGLE}\ninputs:\n  prompt: a\n  {field}: {name}\n", {name: content}
    )
    assert error(path) == f"{path}:4:{5 + len(field)}: inputs.{field}: {tail}"


def test_content_decides_the_type_sent(tmp_path: Path, catalog: None) -> None:
    """A WAV with no extension is audio; a PNG named .jpg is still accepted as an image."""
    path = spec(
        tmp_path,
        f"model: {SINGLE}\ninputs:\n  prompt: a\n  audio: take-1\n  image: odd.jpg\n",
        {"take-1": WAV, "odd.jpg": PNG},
    )
    (job,) = iter_jobs(load_spec(path))
    assert job.inputs["audio"] == uri(WAV, "audio/wav")
    assert job.inputs["image"].startswith("data:image/")
    assert sniff(PNG) == "image/png"


@pytest.mark.parametrize(
    ("value", "scheme"),
    [("http://example.com/a.png", "http"), ("file:///tmp/a.png", "file"), ("ftp://x/a", "ftp")],
)
def test_only_https_urls_are_sent(tmp_path: Path, catalog: None, value: str, scheme: str) -> None:
    single = spec(tmp_path, f"model: {SINGLE}\ninputs:\n  prompt: a\n  image: '{value}'\n")
    assert error(single).endswith(
        f"inputs.image: {value!r}: {scheme}:// URLs are not sent; give an https URL or a local file"
    )
    listed = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: ['{value}']\n")
    assert f"inputs.image_urls: {value!r}: {scheme}:// URLs are not sent" in error(listed)


def test_glob_per_job_groups_consecutive_sorted_files(tmp_path: Path, catalog: None) -> None:
    files = {f"refs/{i}.png": PNG + bytes([i]) for i in range(6)}
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a\naxes:\n"
        "  image_urls: {glob: 'refs/*.png', per_job: 3}\n",
        files,
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [job.sources["image_urls"] for job in jobs] == [
        ["refs/0.png", "refs/1.png", "refs/2.png"],
        ["refs/3.png", "refs/4.png", "refs/5.png"],
    ]


def test_glob_per_job_aligns_with_a_zip_group(tmp_path: Path, catalog: None) -> None:
    files = {f"refs/{i}.png": PNG + bytes([i]) for i in range(4)}
    path = spec(
        tmp_path,
        f"model: {EDIT}\nzip:\n  - prompt: [one, two]\n"
        "    image_urls: {glob: 'refs/*.png', per_job: 2}\n",
        files,
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [(job.inputs["prompt"], job.sources["image_urls"]) for job in jobs] == [
        ("one", ["refs/0.png", "refs/1.png"]),
        ("two", ["refs/2.png", "refs/3.png"]),
    ]


@pytest.mark.parametrize(
    ("source", "tail"),
    [
        (
            "{glob: 'refs/*.png', per_job: 3}",
            "'refs/*.png' matches 7 files, not a multiple of per_job 3 (1 left over: "
            "refs/6.png); add or remove files, or change per_job",
        ),
        (
            "{glob: 'refs/*.png'}",
            "takes a list of files a job: add per_job, the files each job gets, as in "
            "{glob: 'refs/*.png', per_job: 3}",
        ),
        ("{glob: 'refs/*.png', per_job: 0}", "per_job must be a whole number of files per job"),
    ],
)
def test_glob_per_job_mistakes_are_one_line(
    tmp_path: Path, catalog: None, source: str, tail: str
) -> None:
    files = {f"refs/{i}.png": PNG + bytes([i]) for i in range(7)}
    path = spec(tmp_path, f"model: {EDIT}\ninputs:\n  prompt: a\naxes:\n  image_urls: {source}\n")
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    assert error(path).startswith(f"{path}:5:15: axes.image_urls: {tail}")


def test_per_job_on_a_single_media_input_is_refused(tmp_path: Path) -> None:
    path = spec(
        tmp_path,
        "model: community/wan-2-2/vace-fun\ninputs:\n  prompt: a\n"
        "axes:\n  image: {glob: '*.png', per_job: 2}\n",
        {"a.png": PNG},
    )
    assert error(path) == (
        f"{path}:5:10: axes.image: per_job groups files for a list input; this input takes one "
        "file a job"
    )


def test_a_jsonl_column_of_lists_feeds_a_list_input(tmp_path: Path, catalog: None) -> None:
    """Paths in the table are relative to the table's folder; URLs pass through."""
    rows = [
        {"prompt": "one", "image_urls": ["a.png", "https://example.com/x.png"]},
        {"prompt": "two", "image_urls": ["b.jpg"]},
    ]
    table = "\n".join(json.dumps(row) for row in rows)
    path = spec(
        tmp_path,
        f"model: {EDIT}\nzip:\n  - file: data/rows.jsonl\n",
        {"data/rows.jsonl": table.encode(), "data/a.png": PNG, "data/b.jpg": JPEG},
    )
    jobs = list(iter_jobs(load_spec(path)))
    assert [job.inputs["image_urls"] for job in jobs] == [
        [uri(PNG, "image/png"), "https://example.com/x.png"],
        [uri(JPEG, "image/jpeg")],
    ]
    assert [job.sources["image_urls"] for job in jobs] == [
        ["data/a.png", "https://example.com/x.png"],
        ["data/b.jpg"],
    ]
    too_many = spec(
        tmp_path,
        path.read_text(),
        {
            "data/rows.jsonl": b'{"prompt": "a", "image_urls": '
            + json.dumps(["a.png"] * 11).encode()
            + b"}"
        },
    )
    assert error(too_many) == (
        "data/rows.jsonl:1: image_urls: lists 11 images; the model takes at most 10 (its maxItems)"
    )


def test_list_items_are_copied_to_inputs_once_and_named_as_a_list(tmp_path: Path) -> None:
    """results/inputs/ and metadata.jsonl: a list input is a list of relative paths."""
    inputs = {
        "prompt": "a",
        "image_urls": [uri(PNG, "image/png"), "https://example.com/c.png", uri(PNG, "image/png")],
    }
    sources = {"image_urls": ["a.png", "https://example.com/c.png", "again.png"]}
    folder = MediaFolder(tmp_path)
    out, origin = media_inputs(inputs, sources, folder)
    (name,) = {p for p in out["image_urls"] if p.startswith("inputs/")}
    assert out["image_urls"] == [name, "https://example.com/c.png", name]
    assert (tmp_path / name).read_bytes() == PNG
    assert folder.written == 1
    assert origin == sources
    assert media_inputs({"prompt": "a"}, {}, folder) == ({"prompt": "a"}, {})


def test_plan_shows_each_file_of_a_list_by_the_name_the_spec_gave(
    tmp_path: Path, catalog: None
) -> None:
    path = spec(
        tmp_path,
        f"model: {EDIT}\ninputs:\n  prompt: a\n  image_urls: [a.png, b.jpg]\naxes:\n"
        "  aspect_ratio: [auto, '1:1']\n",
        {"a.png": PNG, "b.jpg": JPEG},
    )
    result = CliRunner().invoke(cli, ["plan", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["fixed"]["image_urls"] == ["a.png", "b.jpg"]
    assert plan["first_jobs"][0]["files"] == {"image_urls": ["a.png", "b.jpg"]}


def test_a_list_input_runs_end_to_end_on_the_emulator(
    tmp_path: Path, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs, each sending a list of local images: the emulator takes them, the manifest and
    metadata.jsonl name each file of the list under inputs/, and `show` names the spec's files."""
    from orchestrator.emulator import Emulator, EmulatorConfig
    from orchestrator.sweep import Overrides, run_sweep

    monkeypatch.setenv("COMFYSWEEP_HOME", str(tmp_path / "home"))
    path = spec(
        tmp_path,
        f"name: refs\nmodel: {REFS}\ninputs:\n  prompt: a fox\n  duration: 4\n"
        "axes:\n  images: [[a.png, b.jpg], [b.jpg]]\n"
        f"run:\n  output: {tmp_path / 'results'}\n  poll_interval: 0.02\n  rate: 1000\n",
        {"a.png": PNG, "b.jpg": JPEG},
    )
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        auth = {"Authorization": f"Bearer {emu.token}"}
        if httpx.get(f"{emu.base_url}/models/{REFS}", headers=auth).status_code != 200:
            pytest.skip(f"the emulator does not serve {REFS}")
        report = run_sweep(path, base_url=emu.base_url, token=emu.token, overrides=Overrides())
    assert report.complete, report
    folder = tmp_path / "results" / "refs"
    entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [e["state"] for e in entries] == ["done", "done"]
    a, b = (
        f"inputs/{hashlib.sha256(d).hexdigest()[:16]}.{x}" for d, x in ((PNG, "png"), (JPEG, "jpg"))
    )
    assert [e["inputs"]["images"] for e in entries] == [[a, b], [b]]
    assert [e["sources"]["images"] for e in entries] == [["a.png", "b.jpg"], ["b.jpg"]]
    assert (folder / a).read_bytes() == PNG
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [m["images"] for m in metadata] == [[a, b], [b]]
    assert [m["images_source"] for m in metadata] == [["a.png", "b.jpg"], ["b.jpg"]]
    shown = CliRunner().invoke(cli, ["show", entries[0]["key"], str(path)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "[a.png, b.jpg], sent as [data:image/png;base64,… (" in shown.output
    page = CliRunner().invoke(cli, ["report", str(path)], catch_exceptions=False)
    assert page.exit_code == 0, page.output
    (html,) = folder.glob("report*.html")
    data = html.read_text().split('<script id="report-data" type="application/json">')[1]
    (axis,) = json.loads(data.split("</script>")[0])["axes"]
    assert axis == {"name": "images", "labels": ["a.png, b.jpg", "b.jpg"]}  # hover and axis
    for fmt in ("hf", "parquet", "csv", "webdataset"):
        done = CliRunner().invoke(
            cli, ["export", str(path), str(tmp_path / fmt), "--format", fmt], catch_exceptions=False
        )
        assert done.exit_code == 0, done.output
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "parquet" / "metadata.parquet")
    assert table.schema.field("images").type == pa.list_(pa.string())
    assert sorted(map(len, table.column("images").to_pylist())) == [1, 2]
    assert all((tmp_path / "parquet" / p).is_file() for p in table.column("images")[0].as_py())
    card = (tmp_path / "hf" / "README.md").read_text()
    assert '  - name: "images"\n    sequence: string\n' in card
    hf = [
        json.loads(line)
        for line in (tmp_path / "hf" / "metadata.jsonl").read_text().split("\n")
        if line
    ]
    assert sorted(len(row["images"]) for row in hf) == [1, 2]
    with (tmp_path / "csv" / "metadata.csv").open(newline="") as handle:
        cells = sorted(json.loads(row["images"]) for row in csv.DictReader(handle))
    assert [len(cell) for cell in cells] == [1, 2]
    with tarfile.open(next((tmp_path / "webdataset").glob("*.tar"))) as tar:
        names = tar.getnames()
    assert sum(name.endswith((".images.0.png", ".images.0.jpg")) for name in names) == 2
    assert sum(name.endswith(".images.1.jpg") for name in names) == 1


def test_a_list_of_data_uris_is_stored_once_per_file_and_read_back_exactly(
    tmp_path: Path,
) -> None:
    from orchestrator.canonical import canonical_json
    from orchestrator.store import Store
    from tests.test_store_blobs import data_uri, real_job, table

    one, two = data_uri(11), data_uri(12)
    short = "data:image/png;base64,AAAA"  # small: stays inline
    jobs = [
        real_job(i, {"56_text": f"job {i}", "image_urls": [one, short, two, "https://x.io/a.png"]})
        for i in range(20)
    ] + [real_job(20, {"56_text": "alone", "image_urls": [two]})]
    target = str(tmp_path / "store.db")
    with Store.open(target) as store:
        store.sync_jobs(jobs, jobs[0].model_id)
        assert len(table(target, "SELECT sha256 FROM blobs")) == 2
        stored = "".join(text for (text,) in table(target, "SELECT inputs FROM jobs"))
        assert one not in stored
        assert two not in stored
        assert short in stored
        by_key = {job.key: job for job in jobs}
        rows = list(store.jobs())
        assert len(rows) == len(jobs)
        for row in rows:
            assert canonical_json(row.inputs) == canonical_json(by_key[row.key].inputs)


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("TIFF", "image/tiff"),
        ("BMP", "image/bmp"),
    ],
)
def test_sniff_knows_real_image_files(fmt: str, mime: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, fmt)
    assert sniff(out.getvalue()[:64]) == mime


def test_sniff_knows_real_wav_and_refuses_look_alikes() -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x00" * 80)
    assert sniff(out.getvalue()[:64]) == "audio/wav"
    assert sniff(b"BMW is a car, not a bitmap") is None
    assert sniff(b"RIFF\x00\x00\x00\x00JUNK") is None
    assert sniff(b"") is None
