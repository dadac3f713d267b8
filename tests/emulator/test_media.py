"""Outputs: real H.264 MP4s with the requested shape, pictures that follow the inputs, and URLs
that behave like a CDN's (Content-Length, ETag, ranges, expiry)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from orchestrator.emulator.media import MediaCache, decode_data_uri
from tests.emulator.conftest import INPUTS, Api, MakeApi, ManualClock


def _probe(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        first = frames[0].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "frames": len(frames),
            "fps": stream.average_rate,
            "mean": first,
        }


def _video(api: Api, **changes: Any) -> bytes:
    rid = api.request_id(**changes)
    api.finish()
    response = httpx.get(api.result(rid)["output"]["video"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


@pytest.mark.parametrize(
    ("resolution", "size", "frames", "fps"),
    [
        ("480x480 (1:1)", (480, 480), 81, 16),
        ("1280x720 (16:9)", (1280, 720), 141, 24),
        ("540x960 (9:16)", (540, 960), 81, 12),
    ],
)
def test_mp4_has_exactly_the_requested_shape(
    api: Api, resolution: str, size: tuple[int, int], frames: int, fps: int
) -> None:
    data = _video(api, **{"4_valuex3_value": resolution, "25_value": frames, "38_value": fps})
    info = _probe(data)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["size"] == size
    assert info["frames"] == frames
    assert info["fps"] == fps


def test_seed_and_prompt_change_the_picture_and_equal_inputs_reuse_the_file(api: Api) -> None:
    one, again = _video(api), _video(api)
    assert one == again
    assert api.emu.ledger()["renders"] == 1
    other_seed = _probe(_video(api, **{"98_seed": 2}))["mean"]
    other_prompt = _probe(_video(api, **{"56_text": "a forest"}))["mean"]
    first = _probe(one)["mean"]
    assert np.abs(first - other_seed).max() > 2
    assert np.abs(first - other_prompt).max() > 2


def _png(rgb: tuple[int, int, int]) -> str:
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:] = rgb
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_input_image_pixels_tint_the_picture(api: Api) -> None:
    red = _probe(_video(api, **{"118_image": _png((255, 0, 0))}))["mean"]
    blue = _probe(_video(api, **{"118_image": _png((0, 0, 255))}))["mean"]
    assert red[0] - blue[0] > 40
    assert blue[2] - red[2] > 40


def test_data_uri_decoding() -> None:
    assert decode_data_uri("https://x/y.png") is None
    assert decode_data_uri("data:image/png;base64,aGk=") == b"hi"
    for bad in ("data:image/png;base64,a$b", "data:text/plain,hi", "data:image/png;base64"):
        with pytest.raises(ValueError, match="data: URI"):
            decode_data_uri(bad)


def test_etag_ranges_and_head(api: Api) -> None:
    rid = api.request_id()
    api.finish()
    url = api.result(rid)["output"]["video"]
    whole = httpx.get(url)
    etag = whole.headers["etag"]
    assert etag.startswith('"')
    assert whole.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206
    assert part.content == whole.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(whole.content)}"
    assert httpx.get(url).headers["etag"] == etag
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(whole.content))
    assert api.emu.ledger()["jobs"][0]["downloads"] == 3  # HEAD is not a download


def test_downloads_need_no_token_and_urls_are_unguessable(api: Api) -> None:
    first, second = api.request_id(), api.request_id(**{"98_seed": 3})
    api.finish()
    urls = [api.result(r)["output"]["video"] for r in (first, second)]
    tokens = [u.split("/outputs/")[1].split("/")[0] for u in urls]
    assert tokens[0] != tokens[1]
    assert all(len(t) >= 32 for t in tokens)
    assert httpx.get(urls[0], headers={}).status_code == 200
    guessed = urls[0].replace(tokens[0], tokens[0][:-1] + ("A" if tokens[0][-1] != "A" else "B"))
    assert httpx.get(guessed).status_code == 404


def test_output_expires_after_the_ttl_and_after_a_restart(make_api: MakeApi) -> None:
    clock = ManualClock()
    api = make_api(clock=clock, output_ttl=600.0)
    rid = api.request_id()
    clock.advance(1.0)  # the job takes microseconds at this speed
    url = api.result(rid)["output"]["video"]
    assert httpx.get(url).status_code == 200
    clock.advance(600.0)
    assert httpx.get(url).status_code == 410
    httpx.post(f"{api.emu.origin}/_emulator/restart")
    assert httpx.get(url).status_code == 404


def test_unfinished_job_has_no_file(slow_api: Api) -> None:
    slow_api.request_id()
    ledger = slow_api.emu.ledger()
    assert ledger["renders"] == 0
    state = slow_api.emu.state
    assert state is not None
    token = next(iter(state.farm.by_token))
    assert httpx.get(f"{slow_api.emu.origin}/outputs/{token}/x.mp4").status_code == 404


def test_cache_folder_survives_a_new_cache(tmp_path: Path) -> None:
    first = MediaCache(tmp_path).get(INPUTS)
    second = MediaCache(tmp_path)
    assert second.get(INPUTS) == first
    assert second.renders == 0
    assert list(tmp_path.iterdir()) == [first.path]
