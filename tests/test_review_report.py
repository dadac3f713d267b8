"""A hostile review of `comfysweep report`: each test is a break found, fixed after it failed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import av
import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli

from .reportdata import sample_videos, synthetic_sweep
from .test_report import page_data


def report(*args: str) -> Result:
    return CliRunner().invoke(cli, ["report", *args])


@pytest.mark.parametrize(("shape", "cells"), [({"seed": [1, 2, 3]}, 3), ({"seed": [1]}, 1)])
def test_video_of_a_sweep_with_one_or_no_varying_input(
    tmp_path: Path, shape: dict[str, list[int]], cells: int
) -> None:
    folder = tmp_path / "sweep"
    synthetic_sweep(folder, shape, sample_videos(tmp_path / "samples", 2))
    result = report("--store", str(folder / "comfysweep.db"), "--video")
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert result.output == f"{folder / 'report.mp4'}: {cells} cells\n"
    with av.open(str(folder / "report.mp4")) as mosaic:
        assert mosaic.streams.video[0].frames > 1


@pytest.mark.parametrize("video", [False, True])
@pytest.mark.parametrize("target", ["store", "wal", "output", "manifest", "conditioning"])
def test_out_never_replaces_the_store_a_job_s_output_or_the_tool_s_files(
    tmp_path: Path, target: str, video: bool
) -> None:
    folder = tmp_path / "sweep"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 2))
    store = folder / "comfysweep.db"
    (folder / "manifest.jsonl").write_text("{}\n")
    (folder / "inputs").mkdir()
    (folder / "inputs" / "0123456789abcdef.mp4").write_bytes(b"a conditioning video")
    wal = folder / "comfysweep.db-wal"
    wal.write_bytes(b"")  # whatever SQLite keeps there
    out = {
        "store": store,
        "wal": wal,
        "output": folder / "out-00000.mp4",
        "manifest": folder / "manifest.jsonl",
        "conditioning": folder / "inputs" / "0123456789abcdef.mp4",
    }[target]
    before = out.read_bytes()
    result = report("--store", str(store), "--out", str(out), *(["--video"] if video else []))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: --out {out}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert out.read_bytes() == before
    assert report("--store", str(store)).exit_code == 0  # the store is whole


def test_the_summary_shows_no_negative_zero_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.store import Store
    from orchestrator.store.books import Ledger

    # the store's running totals keep float residue: -1.1e-16 reserved after the quickstart
    residue = Ledger(
        spent_usd=2.025, reserved_usd=-1.1102230246251565e-16, cap_usd=None, in_flight=0
    )
    monkeypatch.setattr(Store, "ledger", lambda self: residue)
    folder = tmp_path / "sweep"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 1))
    assert report("--store", str(folder / "comfysweep.db")).exit_code == 0
    ledger = page_data(folder / "report.html")["summary"]["ledger"]
    assert ledger == {"spent": 2.025, "reserved": 0.0, "cap": None}
    assert math.copysign(1.0, ledger["reserved"]) == 1.0  # JS shows -0.00 for a tiny negative


def _png(colour: tuple[int, int, int]) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_conditioning_images_are_named_by_their_file_as_in_the_manifest(tmp_path: Path) -> None:
    from orchestrator.conditioning import decode_data_uri
    from orchestrator.store import Store

    from .reportdata import MODEL, Job

    images = [_png((255, 0, 0)), _png((0, 0, 255))]
    jobs = [
        Job(
            f"{i:064x}",
            i,
            inputs={"56_text": "a fox", "118_image": images[i]},
            sources={"118_image": f"{name}.png"},
        )
        for i, name in enumerate(["red", "blue"])
    ]
    with Store.open(tmp_path / "comfysweep.db") as db:
        db.sync_jobs(jobs, MODEL)
    assert report("--store", str(tmp_path / "comfysweep.db")).exit_code == 0
    data = page_data(tmp_path / "report.html")
    assert data["axes"] == [{"name": "image", "labels": ["red.png", "blue.png"]}]
    assert "data:image" not in (tmp_path / "report.html").read_text()  # no image as a data: URI
    # a data: URI with no file behind it (written in the spec itself) is named by its file under
    # inputs/, as the manifest names it
    with Store.open(tmp_path / "comfysweep.db") as db:
        db.sync_jobs([dataclasses.replace(job, sources={}) for job in jobs], MODEL)
    assert report("--store", str(tmp_path / "comfysweep.db")).exit_code == 0
    files = [f"inputs/{decode_data_uri(uri).file_name}" for uri in images]  # type: ignore[union-attr]
    assert page_data(tmp_path / "report.html")["axes"] == [{"name": "image", "labels": files}]


def test_serving_on_every_address_warns_and_still_refuses_a_rebound_name(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from starlette.testclient import TestClient

    from orchestrator.locate import locate
    from orchestrator.report.serve import create_app

    from .waiting import PATIENCE

    folder = tmp_path / "sweep"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 1))
    store = folder / "comfysweep.db"
    app = create_app(locate(None, str(store)), any_address=True)
    with TestClient(app, base_url="http://192.168.1.5:8000") as client:
        assert client.get("/").status_code == 200  # a neighbour by this machine's address
        assert client.get("/", headers={"host": "[fe80::1]:8000"}).status_code == 200
        # a site that points its own name at this machine (DNS rebinding) reads nothing
        assert client.get("/", headers={"host": "evil.example:8000"}).status_code == 400
        assert client.get("/api/ratings", headers={"host": "evil.example"}).status_code == 400
    command = [sys.executable, "-m", "orchestrator", "report", "--store", str(store)]
    with subprocess.Popen(
        [*command, "--serve", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            url = proc.stdout.readline().strip()
            port = url.rsplit(":", 1)[1].rstrip("/")
            assert proc.stderr.readline() == (
                f"warning: --host 0.0.0.0 serves the report to every network this machine is "
                f"on: anyone who reaches port {port} sees the sweep and can rate it\n"
            )
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=PATIENCE) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_filter_on_an_x_or_y_input_narrows_the_mosaic_to_that_column(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    shape = {"seed": list(range(21)), "steps": list(range(20))}  # 420 cells: over MAX_CELLS
    synthetic_sweep(folder, shape, sample_videos(tmp_path / "samples", 1))
    store = str(folder / "comfysweep.db")
    too_big = report("--store", store, "--video")
    assert too_big.exit_code == 1
    assert too_big.stderr.endswith("narrow the view with --filter INPUT=VALUE\n"), too_big.stderr
    narrowed = report("--store", store, "--video", "--filter", "seed=3")
    assert narrowed.exit_code == 0, narrowed.stderr
    assert narrowed.output == f"{folder / 'report.mp4'}: 20 cells\n"
    with av.open(str(folder / "report.mp4")) as mosaic:
        stream = mosaic.streams.video[0]
        assert stream.width < stream.height  # one column of 20 rows


def test_a_hostile_rating_body_is_refused_not_a_server_error(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from orchestrator.locate import locate
    from orchestrator.report.serve import create_app

    folder = tmp_path / "sweep"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 1))
    app = create_app(locate(None, str(folder / "comfysweep.db")))
    json_type = {"content-type": "application/json"}
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as c:
        deep = c.post("/api/rating", content=b"[" * 100_000, headers=json_type)
        assert (deep.status_code, deep.json()) == (400, {"error": "the body is not JSON"})
        huge = c.post("/api/rating", content=b" " * (2 << 20) + b"{}", headers=json_type)
        assert huge.status_code == 413
        assert huge.json() == {"error": "a rating's body is at most 1 MiB"}


def test_two_sweeps_pages_in_one_folder_keep_each_other_s_posters(tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    for n, name in enumerate(["one", "two"]):
        folder = tmp_path / name
        synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / f"samples{n}", 2))
        out = pages / f"{name}.html"
        assert report("--store", str(folder / "comfysweep.db"), "--out", str(out)).exit_code == 0
    for name in ("one", "two"):
        posters = [c["p"] for c in page_data(pages / f"{name}.html")["cells"]]
        assert all(p and (pages / p).is_file() for p in posters), (name, posters)


def test_the_server_never_serves_a_store_of_another_name_in_the_folder(tmp_path: Path) -> None:
    import shutil

    from starlette.testclient import TestClient

    from orchestrator.locate import locate
    from orchestrator.report.serve import create_app

    folder = tmp_path / "sweep"
    synthetic_sweep(folder, {"seed": [1, 2]}, sample_videos(tmp_path / "samples", 1))
    store = folder / "my.sqlite"
    shutil.move(folder / "comfysweep.db", store)
    (folder / "my.sqlite-wal").write_bytes(b"wal")
    app = create_app(locate(None, str(store)))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/").status_code == 200
        for name in ("/my.sqlite", "/my.sqlite-wal"):
            assert client.get(name).status_code == 404, name
