"""`comfysweep report`: the page's data against the store and the disk, posters, bad input, the
rating server (files, ratings, never a path outside the folder) and the mosaic video."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.locate import locate
from orchestrator.models import get_model
from orchestrator.report.build import write_report
from orchestrator.report.serve import create_app
from orchestrator.report.view import ReportError
from orchestrator.results import ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.store import Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import SPEC, write_spec
from .waiting import PATIENCE, wait_for

HOSTILE = "a fox </script><img src=x onerror=alert(1)> <!-- & ]]>"


def grid_spec(tmp_path: Path, name: str = "grid", prompt: str = "a red fox in the snow") -> Path:
    body = SPEC.replace('"a red fox in the snow"', json.dumps(prompt))
    body = body.replace("  steps: [4, 8]\n", "  steps: [4, 8]\n  cfg: [3, 5]\n")
    return write_spec(tmp_path, name, body)


def run_grid(spec: Path, faults: dict[str, Any] | None = None) -> None:
    profile = FaultProfile.parse({"seed": 7, "faults": faults or {}})
    with Emulator(EmulatorConfig(speed=2000.0, workers=4, faults=profile)) as emu:
        run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(poll_interval=0.02),
            retry=RetryPolicy(wait=False),
        )


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A finished 2x2x2 sweep (seed, steps, cfg) whose first job failed; returns its spec."""
    spec = grid_spec(tmp_path, prompt=HOSTILE)
    run_grid(spec, {"fail_object": {"rate": 1.0, "limit": 1}})
    return spec


def report(*args: str) -> Any:
    return CliRunner().invoke(cli, ["report", *args])


def page_data(page: Path) -> dict[str, Any]:
    html = page.read_text()
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]


def test_cells_are_the_manifest_s_jobs_with_state_error_video_and_poster(grid: Path) -> None:
    folder = grid.parent / "results" / "grid"
    entries = {e["key"]: e for e in manifest(folder)}
    gone = next(e for e in entries.values() if e["state"] == "done")
    (folder / gone["outputs"][0]["path"]).unlink()
    result = report(str(grid))
    assert result.exit_code == 0, result.output
    assert (
        result.output.splitlines()[0]
        == f"{folder / 'report.html'}: 8 cells (6 posters made, 0 reused)"
    )
    data = page_data(folder / "report.html")
    assert [a["name"] for a in data["axes"]] == ["cfg", "steps", "seed"]
    assert (data["x"], data["y"], data["z"]) == ("cfg", "steps", "seed")
    assert data["fixed"]["prompt"] == HOSTILE
    labels = {a["name"]: a["labels"] for a in data["axes"]}
    assert {c["k"] for c in data["cells"]} == set(entries)
    for cell in data["cells"]:
        entry = entries[cell["k"]]
        for i, name in enumerate(labels):
            assert labels[name][cell["v"][i]] == json.dumps(entry["inputs"][name])
        if entry["state"] == "failed":
            assert cell["s"] == "failed"
            assert cell["e"]
            assert cell["f"] is None
        elif cell["k"] == gone["key"]:
            assert cell["s"] == "missing"
            assert "not on disk" in cell["e"]
            assert cell["f"] is None
            assert cell["p"] is None
        else:
            assert cell["s"] == "done"
            assert cell["f"] == quote(entry["outputs"][0]["path"])
            with Image.open(folder / cell["p"]) as poster:
                assert (poster.format, poster.size) == ("JPEG", (320, 320))  # of 480x480
    assert data["summary"]["counts"] == {"done": 6, "failed": 1, "missing": 1}
    (_error, count), *_ = data["summary"]["errors"]
    assert count == 1
    assert sum(data["summary"]["histogram"]["bins"]) == 8


def test_posters_are_made_once_and_again_only_for_a_changed_video(grid: Path) -> None:
    folder = grid.parent / "results" / "grid"
    assert report(str(grid)).exit_code == 0
    again = report(str(grid))
    assert "(0 posters made, 7 reused)" in again.output
    (folder / "report_assets" / "mine.jpg").write_bytes(b"a user's file")
    video = folder / manifest(folder)[-1]["outputs"][0]["path"]
    os.utime(video, ns=(1, 1))
    third = report(str(grid))
    assert "(1 posters made, 6 reused)" in third.output
    assert len(list((folder / "report_assets").glob("*.jpg"))) == 8  # the old poster is gone
    assert (folder / "report_assets" / "mine.jpg").read_bytes() == b"a user's file"
    assert not list((folder / "report_assets").glob(".*"))


def test_user_text_stays_text_in_the_page(grid: Path) -> None:
    assert report(str(grid)).exit_code == 0
    html = (grid.parent / "results" / "grid" / "report.html").read_text()
    assert html.count("</script>") == 2  # the data's and the code's, nothing from a prompt
    assert "<img" not in html
    assert "<!--" not in html
    assert page_data(grid.parent / "results" / "grid" / "report.html")["fixed"]["prompt"] == HOSTILE


def test_axes_and_filters_from_flags_and_from_the_results_folder(
    grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = grid.parent / "results" / "grid"
    monkeypatch.chdir(folder)
    out = grid.parent / "elsewhere" / "view.html"
    args = ["--x", "seed", "--y", "cfg", "--filter", "steps=8", "--out", str(out)]
    result = report(*args)
    assert result.exit_code == 0, result.output
    data = page_data(out)
    assert (data["x"], data["y"], data["z"], data["tab"]) == ("seed", "cfg", "steps", "8")
    done = next(c for c in data["cells"] if c["s"] == "done")
    # linked from the page's own folder: file:// resolves it
    assert (out.parent / done["f"].replace("%20", " ")).is_file()
    assert (out.parent / done["p"]).is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--x", "prompt"],
            "--x 'prompt': this input does not vary; the inputs that vary: cfg, steps, seed",
        ),
        (["--z", "colour"], "--z 'colour': no such input; the inputs that vary: cfg, steps, seed"),
        (
            ["--x", "seed", "--y", "seed"],
            "'seed' is given for two axes; each axis needs its own input",
        ),
        (["--filter", "seed=9"], "--filter seed=9: no job has that value (it has 1, 2)"),
        (["--filter", "seed"], "--filter 'seed': give INPUT=VALUE, such as seed=1"),
        (
            ["--filter", "seed=1", "--filter", "seed=2"],
            "--filter seed is given twice: give one value",
        ),
    ],
)
def test_bad_axes_are_one_line_and_leave_the_page_alone(
    tmp_path: Path, args: list[str], message: str
) -> None:
    spec = grid_spec(tmp_path)
    run_grid(spec)
    page = tmp_path / "results" / "grid" / "report.html"
    page.write_text("the old page")
    result = report(str(spec), *args)
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines()[-1].endswith(message), result.stderr
    assert "Traceback" not in result.output
    assert page.read_text() == "the old page"
    assert not (tmp_path / "results" / "grid" / "report_assets").exists()


def test_a_store_without_jobs_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "comfysweep.db"
    Store.open(db).close()
    result = report("--store", str(db))
    assert result.exit_code == 1
    assert result.stderr == f"Error: store {db} has no jobs yet: `comfysweep run SPEC` makes them\n"
    assert not (tmp_path / "report.html").exists()


# -- the rating server ------------------------------------------------------------------------


@pytest.fixture
def served(grid: Path) -> Iterator[tuple[TestClient, Path]]:
    app = create_app(locate(grid, None))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client, grid.parent / "results" / "grid"


def rate(client: Any, key: str, rating: str | None, row: list[str] | None = None, **kw: Any) -> Any:
    body = {"key": key, "rating": rating, "row": row or []}
    return client.post("/api/rating", json=body, **kw)


def test_ratings_are_stored_a_pick_clears_its_row_and_survive_a_new_page(
    served: tuple[Any, Path], grid: Path
) -> None:
    client, folder = served
    page = client.get("/")
    assert page.status_code == 200
    data = json.loads(
        re.search(r'type="application/json">(.*?)</script>', page.text).group(1)  # type: ignore[union-attr]
    )
    assert data["served"] is True
    keys = [c["k"] for c in data["cells"]]
    assert rate(client, keys[0], "up").json() == {"key": keys[0], "rating": "up"}
    assert rate(client, keys[1], "pick", keys[:4]).status_code == 200
    assert rate(client, keys[2], "pick", keys[:4]).status_code == 200
    with Store.open(folder / "comfysweep.db") as run, run.lock("a live run"):
        assert rate(client, keys[3], "down").status_code == 200  # a short write beside the run
    assert rate(client, keys[3], None).status_code == 200
    expected = {keys[0]: "up", keys[2]: "pick"}
    assert client.get("/api/ratings").json() == expected
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        assert db.ratings() == expected
    assert report(str(grid)).exit_code == 0
    offline = page_data(folder / "report.html")
    assert offline["served"] is False
    assert {c["k"]: c["r"] for c in offline["cells"] if c["r"]} == expected


def test_a_bad_rating_is_refused_with_its_reason(served: tuple[Any, Path]) -> None:
    client, _ = served
    assert rate(client, "f" * 64, "up").status_code == 400
    assert "no job" in rate(client, "f" * 64, "up").json()["error"]
    assert rate(client, "f" * 64, "great").json()["error"].startswith("rating 'great' is not")
    plain = client.post(
        "/api/rating", content='{"key": "x"}', headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 415
    evil = rate(client, "f" * 64, "up", headers={"origin": "http://evil.example"})
    assert evil.status_code == 403
    # a site that rebinds its name to 127.0.0.1 reads nothing either
    assert client.get("/", headers={"host": "evil.example:8000"}).status_code == 400
    assert client.get("/api/ratings", headers={"host": "evil.example"}).status_code == 400


def test_the_server_serves_the_folder_s_files_and_nothing_outside(
    served: tuple[Any, Path], tmp_path: Path
) -> None:
    client, folder = served
    entry = next(e for e in manifest(folder) if e["state"] == "done")
    path = entry["outputs"][0]["path"]
    video = client.get("/" + quote(path))
    assert video.status_code == 200
    assert video.content == (folder / path).read_bytes()
    part = client.get("/" + quote(path), headers={"range": "bytes=0-99"})
    assert part.status_code == 206
    assert len(part.content) == 100
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "linked").symlink_to(tmp_path)
    for wanted in (
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/link.txt",
        "/linked/secret.txt",
        "/comfysweep.db",
        "/nothing.mp4",
    ):
        answer = client.get(wanted)
        assert answer.status_code == 404, wanted
        assert "secret" not in answer.text


def test_serve_prints_its_url_and_ctrl_c_exits_0(grid: Path) -> None:
    command = [sys.executable, "-m", "orchestrator", "report", str(grid), "--serve", "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
            page = wait_for(lambda: _get(url), "the served page", proc=proc)
            assert "comfysweep report" in page
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=PATIENCE) == 0, proc.stderr.read()
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.TransportError:
        return None


# -- the mosaic video ---------------------------------------------------------------------


def test_video_writes_the_xy_view_as_one_mosaic(
    grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.report import mosaic

    calls: list[dict[str, Any]] = []
    real = mosaic.write_mosaic

    def spy(dest: Path, rows: Any, **kwargs: Any) -> Any:
        calls.append({"dest": dest, "rows": rows, **kwargs})
        return real(dest, rows, **kwargs)

    monkeypatch.setattr(mosaic, "write_mosaic", spy)
    result = report(str(grid), "--video", "--x", "cfg", "--y", "seed", "--filter", "steps=8")
    assert result.exit_code == 0, result.output
    out = grid.parent / "results" / "grid" / "report.mp4"
    assert out.is_file()
    assert out.stat().st_size > 0
    (call,) = calls
    assert call["x_labels"] == ["3.0", "5.0"]
    assert call["y_labels"] == ["1", "2"]
    assert "steps=8" in call["title"]
    states = [cell.state for row in call["rows"] for cell in row]
    assert len(states) == 4
    done = [cell for row in call["rows"] for cell in row if cell.state == "done"]
    assert all(cell.video is not None and cell.video.is_file() for cell in done)
    assert all("cfg=" in cell.caption and "seed=" in cell.caption for cell in done)


@pytest.mark.parametrize("name", ["report.mp4", "report_assets/fox.mp4", "Report_Assets/a.mp4"])
def test_no_output_takes_the_report_s_names(tmp_path: Path, name: str) -> None:
    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{prompt}")
    taken = folder.final_name(name, "a" * 64)
    assert taken.split("/")[0].casefold() not in {"report.mp4", "report_assets"}


def test_jobs_differing_only_by_repeat_get_a_repeat_axis_and_pending_cells(tmp_path: Path) -> None:
    from orchestrator.report.view import build_view, choose_axes

    from .reportdata import MODEL, Job

    jobs = [
        Job(f"{i:064x}", i, inputs={"56_text": "a fox", "98_seed": i // 2}, repeat=i % 2)
        for i in range(4)
    ]
    with Store.open(tmp_path / "comfysweep.db") as db:
        db.sync_jobs(jobs, MODEL)
        view = choose_axes(build_view(db, tmp_path))
    assert view.varying() == ["seed", "repeat"]
    assert (view.x, view.y, view.z) == ("seed", "repeat", None)
    assert view.fixed == {"prompt": "a fox"}
    assert [(c.state, c.video, c.at) for c in view.cells] == [
        ("pending", None, [0, 0]),
        ("pending", None, [0, 1]),
        ("pending", None, [1, 0]),
        ("pending", None, [1, 1]),
    ]


def test_out_naming_a_folder_is_refused(grid: Path) -> None:
    result = report(str(grid), "--out", str(grid.parent))
    assert result.exit_code == 2
    assert f"Invalid value for '--out': File '{grid.parent}' is a directory." in result.stderr
    with pytest.raises(ReportError, match="is a folder: give --out a file name"):
        write_report(locate(grid, None), out=grid.parent)


def test_a_video_that_cannot_be_decoded_has_no_poster(tmp_path: Path) -> None:
    from orchestrator.report.posters import Posters

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    posters = Posters(tmp_path / "assets")
    assert posters.poster(bad) is None
    assert posters.poster(tmp_path / "gone.mp4") is None
    assert not (tmp_path / "assets").exists() or not list((tmp_path / "assets").iterdir())


def test_a_local_image_is_shown_by_its_file_name_on_an_axis_and_in_the_fixed_inputs(
    tmp_path: Path,
) -> None:
    """The spec names start.png; the job sends a data: URI. The page names the file (an image
    axis of two files reads `fox.png`, `owl.png`, never two alike `data:image/png;base64,…`)."""
    start = Path(__file__).parents[1] / "sweeps" / "start.png"
    for name in ("fox.png", "owl.png"):
        (tmp_path / name).write_bytes(start.read_bytes() + name.encode())  # two distinct files
    body = SPEC.replace("  image: https://example.com/fox.png\n", "")
    body = body.replace("  seed: [1, 2]\n", "  seed: [1]\n  image: [fox.png, owl.png]\n")
    spec = write_spec(tmp_path, "images", body)
    run_grid(spec)
    assert report(str(spec)).exit_code == 0
    data = page_data(tmp_path / "results" / "images" / "report.html")
    labels = {a["name"]: a["labels"] for a in data["axes"]}
    assert labels["image"] == ["fox.png", "owl.png"]
    one = SPEC.replace("https://example.com/fox.png", str(start))
    spec = write_spec(tmp_path, "one", one)
    run_grid(spec)
    assert report(str(spec)).exit_code == 0
    assert page_data(tmp_path / "results" / "one" / "report.html")["fixed"]["image"] == str(start)
