"""The emulated catalog: vace-fun plus nine real RunComfy models with their published schemas,
each validated against its own schema, rendered as a real file of its kind, and billed by its
own price (per second of output or per output)."""

from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from orchestrator.client import ModelApiClient, RemoteState
from orchestrator.emulator.catalog import emulated_catalog
from orchestrator.emulator.outputs import AUDIO_RATE, output_of, render
from orchestrator.emulator.uploads import CAPS, media_problem
from orchestrator.models import Model
from orchestrator.retry import RetryPolicy
from tests.emulator.conftest import MODEL, Api

SAMPLE = json.loads(
    (Path(__file__).resolve().parents[2] / "orchestrator" / "emulator" / "catalog.json").read_text()
)
SAMPLE_BY_ID = {m["model_id"]: m for m in SAMPLE["models"]}
T2V = "bytedance/seedance-2.5/text-to-video/1080p"
I2V_WAN = "wan-ai/wan-3.0/image-to-video"
I2V_SEEDANCE = "bytedance/seedance-2.5/image-to-video/1080p"
REF2V = "bytedance/seedance-2.5/reference-to-video/1080p"
FLUX = "blackforestlabs/flux-3/text-to-video"
T2I = "google/nano-banana-2-lite/text-to-image"
EDIT = "google/nano-banana-2-lite/edit"
I2I = "bytedance/seedream-5.0-pro/image-to-image"
T2A = "acestep-ai/ace-step-1.5/text-to-audio"
LORA_BASES = {I2V_WAN, I2V_SEEDANCE, T2I}
IDS = [MODEL, I2V_WAN, I2V_SEEDANCE, T2V, REF2V, FLUX, T2I, EDIT, I2I, T2A]
URL = "https://example.com/in.png"
# The smallest valid input of each model: its required fields.
MINIMAL: dict[str, dict[str, Any]] = {
    I2V_WAN: {"prompt": "a fox", "image_url": URL},
    I2V_SEEDANCE: {"prompt": "a fox", "image": URL},
    T2V: {"prompt": "a fox"},
    REF2V: {"prompt": "a fox"},
    FLUX: {"prompt": "a fox"},
    T2I: {"prompt": "a fox"},
    EDIT: {"prompt": "a fox", "image_urls": [URL]},
    I2I: {"prompt": "a fox", "image": [URL]},
    T2A: {"tags": "jazz, piano"},
}


def _png(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(seconds: float = 0.1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))
    return buffer.getvalue()


MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _post(api: Api, model_id: str, body: dict[str, Any]) -> httpx.Response:
    return api.http.post(f"{api.base}/models/{model_id}", json=body)


def _fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_code"] == 422001
    return sorted(d["loc"][1] for d in body["detail"])


def _output(api: Api, model_id: str, body: dict[str, Any]) -> tuple[str, str, httpx.Response]:
    """Submit, finish, and download: (output key, URL, download response)."""
    response = _post(api, model_id, body)
    assert response.status_code == 200, response.text
    rid = response.json()["request_id"]
    api.finish()
    result = api.result(rid)
    assert result["status"] == "succeeded"
    [(key, url)] = result["output"].items()
    download = httpx.get(url)
    assert download.status_code == 200
    return key, url, download


def test_listing_pages_through_every_model_with_the_published_schemas(api: Api) -> None:
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        params = {"limit": 3, "offset": offset, "include_schema": "true"}
        page = api.http.get(f"{api.base}/models", params=params).json()
        assert page["total"] == len(IDS)
        seen += page["models"]
        offset += 3
        if offset >= page["total"]:
            break
    assert [m["model_id"] for m in seen] == IDS
    for entry in seen[1:]:
        real = SAMPLE_BY_ID[entry["model_id"]]
        schema = entry["input_schema"]
        if entry["model_id"] in LORA_BASES:
            lora = schema["properties"].pop("lora")
            assert lora["type"] == "object"
            assert lora["required"] == ["path"]
            assert lora["properties"]["scale"]["maximum"] == 2
        assert schema == real["input_schema"]
        assert entry["display_name"] == real["display_name"]
        assert entry["required_inputs"] == real["input_schema"]["required"]
        assert Model.from_catalog(entry).output_kind == real["output"]
        unit = "output" if real["output"] == "image" else "second"
        assert entry["price_unit"] == unit
        assert entry["base_price_usd"] > 0
        assert "price" in entry["pricing_note"].lower()
    ace = next(m for m in seen if m["model_id"] == T2A)
    assert ace["base_price_usd"] == 0.0003
    assert "published" in ace["pricing_note"]
    flux = next(m for m in seen if m["model_id"] == FLUX)
    assert "Emulator price" in flux["pricing_note"]
    vace = api.http.get(f"{api.base}/models/{MODEL}").json()
    assert vace["input_schema"]["properties"]["108_cfg"]["type"] == "float"  # as published
    wan = seen[1]["input_schema"]
    assert wan["required"] == ["prompt", "image_url"]
    assert wan["properties"]["image_url"] == {"type": "string", "format": "image_uri"}
    seedream = next(m for m in seen if m["model_id"] == I2I)["input_schema"]
    assert len(seedream["properties"]["image"]["validations"]) == 5


def test_search_category_and_one_model_by_its_slashed_id(api: Api) -> None:
    def ids(**params: Any) -> list[str]:
        listing = api.http.get(f"{api.base}/models", params=params).json()
        return [m["model_id"] for m in listing["models"]]

    assert ids(search="seedance") == [I2V_SEEDANCE, T2V, REF2V]
    assert ids(search="Nano Banana") == [T2I, EDIT]
    assert ids(category="audio") == [T2A]
    assert ids(category="text-to-image") == [T2I]
    assert ids(category="image") == [T2I, EDIT, I2I]
    assert ids(category="image-to-video") == [MODEL, I2V_WAN, I2V_SEEDANCE]
    categories = api.http.get(f"{api.base}/models/categories").json()["categories"]
    assert {"video", "image", "audio", "text-to-audio", "image-to-image"} <= set(categories)
    entry = api.http.get(f"{api.base}/models/{EDIT}").json()
    assert entry["model_id"] == EDIT
    model = Model.from_catalog(entry)
    assert model.media_lists == {"image_urls"}
    assert model.max_items("image_urls") == 10
    assert entry["output_schema"]["properties"].keys() == {"image"}


@pytest.mark.parametrize("model_id", list(MINIMAL))
def test_each_model_names_its_missing_required_fields(api: Api, model_id: str) -> None:
    required = sorted(SAMPLE_BY_ID[model_id]["input_schema"]["required"])
    assert _fields(_post(api, model_id, {})) == required
    assert _post(api, model_id, MINIMAL[model_id]).status_code == 200
    bad = MINIMAL[model_id] | {"nonsense": 1}
    assert _fields(_post(api, model_id, bad)) == ["nonsense"]


def test_schema_ranges_enums_and_string_durations(api: Api) -> None:
    assert _fields(_post(api, T2V, {"prompt": "x", "duration": 3})) == ["duration"]
    assert _fields(_post(api, T2V, {"prompt": "x", "aspect_ratio": "2:1"})) == ["aspect_ratio"]
    assert _fields(_post(api, FLUX, {"prompt": "x", "duration": 6})) == ["duration"]
    assert _post(api, FLUX, {"prompt": "x", "duration": "6"}).status_code == 200
    assert _fields(_post(api, T2A, {"tags": "x", "duration": 241})) == ["duration"]


@pytest.mark.parametrize("model_id", sorted(LORA_BASES))
def test_lora_bases_take_a_lora_object(api: Api, model_id: str) -> None:
    body = MINIMAL[model_id]
    for lora in (
        {"path": "foxes.safetensors"},
        {"path": "https://x.example/a.safetensors", "scale": 0.5},
    ):
        assert _post(api, model_id, body | {"lora": lora}).status_code == 200
    for bad in ({"scale": 1.0}, {"path": "a", "scale": 3}, "a.safetensors", {"path": "a", "x": 1}):
        response = _post(api, model_id, body | {"lora": bad})
        assert _fields(response) == ["lora"], bad
        assert all(d["msg"].startswith("lora: ") for d in response.json()["detail"])


@pytest.mark.parametrize("model_id", [MODEL, T2V, EDIT, I2I, T2A, FLUX, REF2V])
def test_other_models_refuse_lora_as_an_unknown_input(api: Api, model_id: str) -> None:
    body = MINIMAL.get(model_id, {"56_text": "x", "118_image": URL})
    response = _post(api, model_id, body | {"lora": {"path": "foxes.safetensors"}})
    assert _fields(response) == ["lora"]
    assert "unknown input" in response.json()["detail"][0]["msg"]
    assert api.emu.ledger()["jobs"] == []


def test_lists_keep_to_max_items_and_take_only_lists(api: Api) -> None:
    response = _post(api, EDIT, {"prompt": "x", "image_urls": [URL] * 11})
    assert _fields(response) == ["image_urls"]
    assert "11 item(s)" in response.json()["detail"][0]["msg"]
    assert _fields(_post(api, EDIT, {"prompt": "x", "image_urls": []})) == ["image_urls"]
    response = _post(api, EDIT, {"prompt": "x", "image_urls": URL})
    assert "must be a list" in response.json()["detail"][0]["msg"]
    assert _post(api, EDIT, {"prompt": "x", "image_urls": [URL] * 10}).status_code == 200
    media = {"images": [URL] * 9, "videos": [URL] * 3, "audios": [URL] * 3}
    assert _post(api, REF2V, {"prompt": "x"} | media).status_code == 200
    assert _fields(_post(api, REF2V, {"prompt": "x", "videos": [URL] * 4})) == ["videos"]


def test_data_uris_must_be_of_the_fields_kind_by_type_and_content(api: Api) -> None:
    png, wav = _uri("image/png", _png()), _uri("audio/wav", _wav())
    video = _uri("video/mp4", MP4_HEAD + b"\0" * 64)
    body = {"prompt": "x", "images": [png], "videos": [video], "audios": [wav]}
    assert _post(api, REF2V, body).status_code == 200
    assert _post(api, I2V_WAN, {"prompt": "x", "image_url": png}).status_code == 200
    cases = {
        "video/mp4": video,  # a video where an image goes, by its type
        "not an image": _uri("image/png", b"hello, I am a text file"),  # by its content
        "are a video": _uri("image/png", MP4_HEAD),  # an image type on a video's bytes
        "not valid base64": "data:image/png;base64,@@@",
    }
    for words, value in cases.items():
        response = _post(api, I2V_WAN, {"prompt": "x", "image_url": value})
        assert _fields(response) == ["image_url"]
        assert words in response.json()["detail"][0]["msg"]
    response = _post(api, REF2V, {"prompt": "x", "audios": [wav, png]})
    assert _fields(response) == ["audios"]
    assert response.json()["detail"][0]["msg"].startswith("audios: item 2: ")


def test_an_image_over_6_mib_is_refused(api: Api) -> None:
    big = _png() + b"\0" * (CAPS["image"] - len(_png()) + 1)
    response = _post(api, I2V_SEEDANCE, {"prompt": "x", "image": _uri("image/png", big)})
    assert _fields(response) == ["image"]
    assert "6 MiB cap" in response.json()["detail"][0]["msg"]
    exact = _png() + b"\0" * (CAPS["image"] - len(_png()))
    assert _post(api, I2V_SEEDANCE, {"prompt": "x", "image": _uri("image/png", exact)}).is_success


@pytest.mark.parametrize(
    ("kind", "mime", "head", "mib"),
    [("video", "video/mp4", MP4_HEAD, 32), ("audio", "audio/wav", _wav(), 16)],
)
def test_video_and_audio_caps(
    monkeypatch: pytest.MonkeyPatch, kind: str, mime: str, head: bytes, mib: int
) -> None:
    assert CAPS[kind] == mib * 1024 * 1024
    over = _uri(mime, head + b"\0" * (CAPS[kind] - len(head) + 1))
    problem = media_problem(kind, over)
    assert problem is not None
    assert problem[1] == "too_large"
    assert f"{mib} MiB cap" in problem[0]
    monkeypatch.setitem(CAPS, kind, 2000)  # the size told from the base64, at every padding
    for size in range(1997, 2001):
        assert media_problem(kind, _uri(mime, head + b"\0" * (size - len(head)))) is None
    assert media_problem(kind, _uri(mime, head + b"\0" * (2001 - len(head)))) is not None


def _video_info(data: bytes) -> tuple[int, int, int, float]:
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return stream.codec_context.width, stream.codec_context.height, frames, stream.average_rate


@pytest.mark.parametrize(
    ("model_id", "body", "size", "seconds"),
    [
        (T2V, {"prompt": "x", "aspect_ratio": "9:16", "duration": 4}, (216, 384), 4),
        (
            FLUX,
            {"prompt": "x", "aspect_ratio": "21:9", "duration": "6", "resolution": "1080p"},
            (504, 216),
            6,
        ),
        (
            I2V_WAN,
            {
                "prompt": "x",
                "image_url": URL,
                "resolution": "480p",
                "aspect_ratio": "1:1",
                "duration": 2,
            },
            (96, 96),
            2,
        ),
        (I2V_SEEDANCE, {"prompt": "x", "image": URL, "duration": 4}, (384, 216), 4),
    ],
)
def test_videos_have_the_asked_duration_and_aspect(
    api: Api, model_id: str, body: dict[str, Any], size: tuple[int, int], seconds: int
) -> None:
    key, url, download = _output(api, model_id, body)
    assert key == "video"
    assert url.endswith(".mp4")
    assert download.headers["content-type"] == "video/mp4"
    width, height, frames, fps = _video_info(download.content)
    assert (width, height) == size
    assert fps == 16
    assert frames == seconds * 16


@pytest.mark.parametrize(
    ("model_id", "body", "extension", "size"),
    [
        (T2I, {"prompt": "x", "aspect_ratio": "16:9"}, "png", (272, 153)),
        (T2I, {"prompt": "x"}, "png", (205, 205)),
        (
            I2I,
            {"prompt": "x", "image": [URL], "output_format": "jpeg", "aspect_ratio": "3:2"},
            "jpg",
            (501, 334),
        ),
        (
            EDIT,
            {"prompt": "x", "image_urls": [URL, URL], "aspect_ratio": "9:16"},
            "png",
            (153, 272),
        ),
    ],
)
def test_images_have_the_asked_size_and_format(
    api: Api, model_id: str, body: dict[str, Any], extension: str, size: tuple[int, int]
) -> None:
    key, url, download = _output(api, model_id, body)
    assert key == "image"
    assert url.endswith(f".{extension}")
    mime = "image/png" if extension == "png" else "image/jpeg"
    assert download.headers["content-type"] == mime
    with Image.open(io.BytesIO(download.content)) as image:
        assert image.size == size
        assert image.format == ("PNG" if extension == "png" else "JPEG")


def test_audio_has_the_asked_duration(api: Api) -> None:
    key, url, download = _output(api, T2A, {"tags": "jazz", "duration": 3})
    assert key == "audio"
    assert url.endswith(".wav")
    assert download.headers["content-type"] == "audio/wav"
    with av.open(io.BytesIO(download.content), "r") as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    assert samples / rate == pytest.approx(3.0)
    with wave.open(io.BytesIO(download.content)) as read:
        loud = max(
            abs(int.from_bytes(read.readframes(800)[i : i + 2], "little", signed=True))
            for i in range(0, 1600, 2)
        )
    assert loud > 3000  # an audible tone, not silence


def test_varying_inputs_change_the_output_and_equal_inputs_reuse_it(api: Api) -> None:
    base = {"prompt": "a fox", "aspect_ratio": "1:1"}
    one = _output(api, T2I, base)[2].content
    assert _output(api, T2I, base)[2].content == one
    renders = api.emu.ledger()["renders"]
    assert renders == 1
    variants = [
        base | {"prompt": "an owl"},
        base | {"lora": {"path": "a.safetensors", "scale": 0.5}},
        base | {"lora": {"path": "a.safetensors", "scale": 1.5}},
    ]
    pictures = {one} | {_output(api, T2I, v)[2].content for v in variants}
    assert len(pictures) == 4
    tunes = {_output(api, T2A, {"tags": t, "duration": 1})[2].content for t in ("jazz", "rock")}
    tunes.add(_output(api, T2A, {"tags": "jazz", "duration": 1, "seed": 9})[2].content)
    assert len(tunes) == 3


def test_billing_follows_each_models_unit(api: Api) -> None:
    jobs = {
        T2A: {"tags": "jazz", "duration": 10},
        T2I: {"prompt": "x"},
        T2V: {"prompt": "x", "duration": 4},
        FLUX: {"prompt": "x"},  # duration "auto": 5 s
    }
    for model_id, body in jobs.items():
        assert _post(api, model_id, body).status_code == 200
    api.request_id()  # vace-fun
    api.finish()
    ledger = api.emu.ledger()
    assert {j["status"] for j in ledger["jobs"]} == {"succeeded"}
    costs = {j["model_id"]: j["cost"] for j in ledger["jobs"]}
    assert costs[T2A] == pytest.approx(0.0003 * 10)
    assert costs[T2I] == pytest.approx(0.02)
    assert costs[T2V] == pytest.approx(0.12 * 4)
    assert costs[FLUX] == pytest.approx(0.08 * 5)
    assert costs[MODEL] == pytest.approx(0.05 * 81 / 16)  # vace-fun's, unchanged
    assert ledger["billed_usd"] == pytest.approx(sum(costs.values()))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model_id", "body", "suffix"),
    [(T2I, {"prompt": "x"}, ".png"), (T2A, {"tags": "x", "duration": 2}, ".wav")],
)
async def test_the_client_round_trips_images_and_audio(
    api: Api, tmp_path: Path, model_id: str, body: dict[str, Any], suffix: str
) -> None:
    async with ModelApiClient(api.base, api.emu.token, retry=RetryPolicy(wait=False)) as client:
        info = await client.model(model_id)
        submitted = await client.submit(model_id, body)
        api.finish()
        result = await client.result(submitted.request_id)
        assert result.state is RemoteState.SUCCEEDED
        [url] = result.urls
        assert url.endswith(suffix)
        done = await client.download(url, tmp_path / "out.part")
    assert info.price_unit == ("output" if suffix == ".png" else "second")
    assert done.size == done.path.stat().st_size > 0
    assert result.cost == pytest.approx(api.emu.ledger()["billed_usd"])


def test_mp3_where_an_output_format_asks_for_it(tmp_path: Path) -> None:
    offer = emulated_catalog()[T2A]
    made = output_of(offer, {"tags": "jazz", "duration": 2, "output_format": "mp3"})
    assert (made.extension, made.content_type) == ("mp3", "audio/mpeg")
    render(tmp_path / "a.mp3", offer, {"tags": "jazz", "duration": 2}, made)
    with av.open(str(tmp_path / "a.mp3"), "r") as container:
        assert container.format.name == "mp3"
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples / AUDIO_RATE == pytest.approx(2.0, abs=0.1)


def test_adaptive_aspect_follows_the_input_image(api: Api) -> None:
    tall = _uri("image/png", _png((90, 160)))
    body = {"prompt": "x", "image_url": tall, "duration": 2}  # aspect_ratio: adaptive
    assert _video_info(_output(api, I2V_WAN, body)[2].content)[:2] == (144, 256)
    body = {"prompt": "x", "image_url": URL, "duration": 2}  # not readable here: 16:9
    assert _video_info(_output(api, I2V_WAN, body)[2].content)[:2] == (256, 144)
    square = {"prompt": "x", "image_urls": [_uri("image/png", _png((50, 50)))]}
    with Image.open(io.BytesIO(_output(api, EDIT, square)[2].content)) as image:
        assert image.size == (205, 205)
