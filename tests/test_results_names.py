"""File names made from prompts and URLs cannot escape the results folder, through a real run."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import iter_jobs, load_spec
from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ComfysweepError
from orchestrator.models import get_model
from orchestrator.results import ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

HOSTILE_PROMPTS = [
    "../../../../escaped",
    "/etc/passwd",
    "..",
    ".",
    "./.hidden",
    "nul\x00byte/../..",
    "back\\slash\\..\\..\\up",
    "C:\\Windows\\evil",
    "CON",
    "x" * 3000,
    "é" * 400,  # 800 bytes of UTF-8 in one part
    "new\nline\r\ttab",
]
HOSTILE_IMAGES = [
    "https://example.com/../../etc/shadow.png",
    "https://example.com/a/..",
    "https://example.com/%2e%2e%2f%2e%2e%2fescape.png?x=../../y#../z",
]
SPEC = """\
name: names
model: community/wan-2-2/vace-fun
inputs:
  resolution: 480x480 (1:1)
  frames: 81
  seed: 1
axes:
  prompt: {prompts}
  image: {images}
run:
  concurrency: 8
  output: {output}
  filename: "{{prompt}}/{{image}}/seed-{{seed}}"
  poll_interval: 0.02
  rate: 1000
"""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=5000.0, workers=8)) as emu:
        yield emu


def test_hostile_prompts_and_urls_stay_inside_the_results_folder(
    tmp_path: Path, emulator: Emulator
) -> None:
    sandbox = tmp_path / "a" / "b" / "c" / "d"  # deep enough that '../../..' would land in tmp_path
    sandbox.mkdir(parents=True)
    spec = sandbox / "names.yaml"
    spec.write_text(
        SPEC.format(
            prompts=json.dumps(HOSTILE_PROMPTS),
            images=json.dumps(HOSTILE_IMAGES),
            output=sandbox / "results",
        )
    )
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
        retry=RetryPolicy(wait=False),
    )
    jobs = len(HOSTILE_PROMPTS) * len(HOSTILE_IMAGES)
    assert report.complete, report
    assert report.counts["done"] == jobs
    folder = (sandbox / "results" / "names").resolve()

    # Nothing was written outside the results folder (the spec file is the only other file).
    outside = [
        p for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(folder)
    ]
    assert outside == [spec]

    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    paths = [o["path"] for e in entries for o in e["outputs"]]
    assert len(paths) == len(set(paths)) == jobs
    for path in paths:
        assert not path.startswith("/")
        assert "\x00" not in path
        assert "\\" not in path
        parts = path.split("/")
        assert ".." not in parts
        assert "." not in parts
        assert all(part and not part.startswith(".") for part in parts), path
        assert all(len(part.encode()) <= 255 for part in parts), path
        target = folder / path
        assert Path(os.path.normpath(target)).is_relative_to(folder)
        assert target.is_file()
        assert target.stat().st_size == next(
            o["size"] for e in entries for o in e["outputs"] if o["path"] == path
        )
    files = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix == ".mp4"
    }
    assert files == set(paths)


ONE_PROMPT = """\
name: owned
model: community/wan-2-2/vace-fun
inputs:
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  seed: 1
axes:
  prompt: {prompts}
run:
  concurrency: 1
  downloads: 1
  output: {output}
  filename: "{template}"
  poll_interval: 0.02
  rate: 1000
"""


def sweep(tmp_path: Path, prompts: list[str], template: str = "{prompt}") -> Path:
    spec = tmp_path / "owned.yaml"
    output = tmp_path / "results"
    body = ONE_PROMPT.format(prompts=json.dumps(prompts), output=output, template=template)
    spec.write_text(body)
    return spec


def run(spec: Path, emulator: Emulator) -> Any:
    return run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
        retry=RetryPolicy(wait=False),
    )


def outputs(folder: Path) -> list[dict[str, Any]]:
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    return [o for e in entries for o in e["outputs"]]


def check_outputs_are_their_own(folder: Path, jobs: int) -> list[str]:
    """Every job's recorded file is on disk, holds what it downloaded, and is nobody else's."""
    recorded = outputs(folder)
    paths = [o["path"] for o in recorded]
    assert len(paths) == len(set(paths)) == jobs, paths
    for output in recorded:
        data = (folder / output["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == output["sha256"], output["path"]
    return paths


def test_a_job_never_takes_the_name_of_another_jobs_deleted_output(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two prompts make the same name; the first output is deleted before the second lands."""
    folder = tmp_path / "results" / "owned"
    real_download = ModelApiClient.download
    calls: list[str] = []

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        calls.append(url)
        if len(calls) == 2:  # one download at a time: the first job's file is in place
            (deleted,) = folder.glob("*.mp4")
            deleted.unlink()
        return await real_download(self, url, dest)

    monkeypatch.setattr(ModelApiClient, "download", download)
    spec = sweep(tmp_path, ["a/b", "a?b"])
    assert run(spec, emulator).complete
    # The next run downloads the deleted output again, under its own name, over nobody's file.
    report = run(spec, emulator)
    assert report.complete, report
    paths = check_outputs_are_their_own(folder, 2)
    assert "a_b.mp4" in paths
    assert len(emulator.ledger()["jobs"]) == 2


def test_names_the_tool_uses_are_renamed_not_fatal(tmp_path: Path, emulator: Emulator) -> None:
    tool = ["run.log", "manifest.jsonl", "comfysweep.db", "comfysweep.db-wal", "summary.md"]
    spec = sweep(tmp_path, tool, template="{prompt}/{seed}")
    report = run(spec, emulator)
    assert report.complete, report
    folder = tmp_path / "results" / "owned"
    paths = check_outputs_are_their_own(folder, len(tool))
    tops = {p.split("/")[0].casefold() for p in paths}
    assert not tops & {name.casefold() for name in tool}, paths
    for name in ("run.log", "manifest.jsonl", "metadata.jsonl", "comfysweep.db"):
        assert (folder / name).is_file(), name


def test_a_users_files_at_the_name_and_its_fallback_are_kept(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = sweep(tmp_path, ["fox"])
    (job,) = iter_jobs(load_spec(spec))
    folder = tmp_path / "results" / "owned"
    folder.mkdir(parents=True)
    mine = {"fox.mp4": b"the user's fox", f"fox_{job.key[:10]}.mp4": b"the user's other fox"}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    assert run(spec, emulator).complete
    for name, data in mine.items():
        assert (folder / name).read_bytes() == data
    (path,) = check_outputs_are_their_own(folder, 1)
    assert path not in mine


def test_a_symlinked_folder_inside_the_results_is_never_followed(
    tmp_path: Path, emulator: Emulator
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "results" / "owned"
    folder.mkdir(parents=True)
    (folder / "out").symlink_to(elsewhere, target_is_directory=True)
    (folder / "file").write_text("a user's file where a folder would go")
    spec = sweep(tmp_path, ["out", "file"], template="{prompt}/{seed}")
    report = run(spec, emulator)
    assert report.complete, report
    assert list(elsewhere.iterdir()) == []
    assert sorted(check_outputs_are_their_own(folder, 2)) == ["file_/1.mp4", "out_/1.mp4"]
    assert (folder / "out").is_symlink()
    assert (folder / "file").read_text() == "a user's file where a folder would go"


KEY = "ab12cd34ef" + "0" * 54


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_after_the_name_was_chosen_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    if not hard_links:

        def no_link(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{key}")
    folder.prepare()
    name = folder.final_name("x.mp4", KEY)
    assert name == "x.mp4"
    (tmp_path / "x.mp4").write_bytes(b"the user's")  # between the choice and the rename
    tmp = folder.temp_path(KEY, 0)
    tmp.write_bytes(b"the output")
    assert folder.place(tmp, name, KEY) == "x_ab12cd34ef.mp4"
    assert (tmp_path / "x.mp4").read_bytes() == b"the user's"
    assert (tmp_path / "x_ab12cd34ef.mp4").read_bytes() == b"the output"
    assert not tmp.exists()


@pytest.mark.parametrize(
    ("top", "what"),
    [
        ("x" * 255, "symlink"),
        ("é" * 127 + "x", "file"),  # 255 bytes, two of them per character
        ("comfysweep." + "x" * 244, "nothing"),  # the store's prefix, 255 bytes
    ],
)
def test_a_folder_renamed_out_of_the_way_stays_within_255_bytes(
    tmp_path: Path, top: str, what: str
) -> None:
    """A 255-byte folder name with a file or a symlink there (or the tool's own name) still gets
    a usable name: adding its `_` used to make a name no file system takes, and the paid output
    was deleted and the run stopped, on every run."""
    assert len(top.encode()) == 255
    root = tmp_path / "results"
    folder = ResultsFolder(root, get_model("community/wan-2-2/vace-fun"), "{key}")
    folder.prepare()
    if what == "symlink":
        (root / top).symlink_to(tmp_path, target_is_directory=True)
    elif what == "file":
        (root / top).write_text("the user's")
    name = folder.final_name(f"{top}/1.mp4", KEY)
    tmp = folder.temp_path(KEY, 0)
    tmp.write_bytes(b"the output")
    assert folder.place(tmp, name, KEY) == name
    assert all(len(part.encode()) <= 255 for part in name.split("/")), name
    assert name.split("/")[0] != top
    assert (root / name).read_bytes() == b"the output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_run_log_that_is_a_symlink_or_a_fifo_is_one_line_and_never_written_through(
    tmp_path: Path, emulator: Emulator, kind: str
) -> None:
    """A results folder copied from elsewhere may hold run.log as a link to, say, ~/.bashrc:
    log lines (with a server's error text) were appended there; a FIFO hung the start."""
    spec = sweep(tmp_path, ["fox"])
    folder = tmp_path / "results" / "owned"
    folder.mkdir(parents=True)
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# the user's\n")
    if kind == "symlink":
        (folder / "run.log").symlink_to(bashrc)
    else:
        os.mkfifo(folder / "run.log")
    with pytest.raises(ComfysweepError) as caught:
        run(spec, emulator)
    message = str(caught.value)
    assert "\n" not in message
    assert "run.log" in message
    assert "symlink" in message
    assert bashrc.read_text() == "# the user's\n"
    assert emulator.ledger()["jobs"] == []


class RecordingStore:
    """The store's output records, as ResultsFolder reads them (path None: not in the folder)."""

    path = None

    def __init__(self) -> None:
        self.outputs: dict[str, list[dict[str, Any]]] = {}

    def jobs(self) -> list[Any]:
        return [SimpleNamespace(key=k, outputs=v) for k, v in self.outputs.items()]


def test_a_kill_after_a_fallback_placement_never_lets_the_job_replace_the_users_file(
    tmp_path: Path,
) -> None:
    """A file of the user's appears at the chosen name before the rename, so the output takes
    the fallback; a kill before the final record left the job owning the first name, and the
    next run replaced the user's file there."""
    model = get_model("community/wan-2-2/vace-fun")
    store = RecordingStore()

    def record(path: str) -> None:
        store.outputs[KEY] = [{"url": "u", "path": path}]

    first = ResultsFolder(tmp_path, model, "{key}")
    first.attach(store)  # type: ignore[arg-type]
    first.prepare()
    name = first.final_name("x.mp4", KEY)
    record(name)  # the runner records the name before the file takes it
    (tmp_path / "x.mp4").write_bytes(b"the user's")
    tmp = first.temp_path(KEY, 0)
    tmp.write_bytes(b"the output")
    assert first.place(tmp, name, KEY, record) == "x_ab12cd34ef.mp4"
    # Killed here, before the record with the size: the next run downloads the output again.
    again = ResultsFolder(tmp_path, model, "{key}")
    again.attach(store)  # type: ignore[arg-type]
    name = again.final_name("x.mp4", KEY)
    tmp.write_bytes(b"the output")
    again.place(tmp, name, KEY, record)
    assert (tmp_path / "x.mp4").read_bytes() == b"the user's"
    assert (tmp_path / "x_ab12cd34ef.mp4").read_bytes() == b"the output"


def test_names_that_differ_only_in_unicode_composition_are_one_name(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On APFS "café" as one code point and as e plus a combining accent are the same file: with
    the first job's output deleted mid-run, the second took its name (and the first, downloaded
    again, replaced the second's). Ownership compares names as such a file system does."""
    folder = tmp_path / "results" / "owned"
    real_download = ModelApiClient.download
    calls: list[str] = []

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        calls.append(url)
        if len(calls) == 2:
            (deleted,) = folder.glob("*.mp4")
            deleted.unlink()
        return await real_download(self, url, dest)

    monkeypatch.setattr(ModelApiClient, "download", download)
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    spec = sweep(tmp_path, [composed, decomposed])
    assert run(spec, emulator).complete
    assert run(spec, emulator).complete  # downloads the deleted output again
    paths = check_outputs_are_their_own(folder, 2)
    assert len({unicodedata.normalize("NFC", p) for p in paths}) == 2, paths


def test_a_name_two_runners_both_recorded_is_replaced_by_neither(tmp_path: Path) -> None:
    """Runners sharing a store read its names once: after the user deleted job A's output, a
    runner that read the store before A's name was recorded gave it to job B. The next run
    downloaded A again and replaced B's output, its "own" name."""
    model = get_model("community/wan-2-2/vace-fun")
    store = RecordingStore()
    other = "cd34ef56ab" + "1" * 54
    first, second = (ResultsFolder(tmp_path, model, "{key}") for _ in range(2))
    for folder in (first, second):
        folder.attach(store)  # type: ignore[arg-type]
    first.prepare()
    second.final_name("warm.mp4", other)  # its first download: it reads the store now

    def take(folder: ResultsFolder, key: str, data: bytes) -> str:
        name = folder.final_name("x.mp4", key)
        store.outputs[key] = [{"url": "u", "path": name}]
        tmp = folder.temp_path(key, 0)
        tmp.write_bytes(data)
        return folder.place(tmp, name, key)

    assert take(first, KEY, b"A's") == "x.mp4"
    (tmp_path / "x.mp4").unlink()  # the user deletes A's output
    assert take(second, other, b"B's") == "x.mp4"  # B's runner never saw A's record
    again = ResultsFolder(tmp_path, model, "{key}")
    again.attach(store)  # type: ignore[arg-type]
    assert take(again, KEY, b"A's again") != "x.mp4"
    assert (tmp_path / "x.mp4").read_bytes() == b"B's"


def test_a_job_whose_every_foreseeable_name_is_taken_still_gets_one(tmp_path: Path) -> None:
    """The numbered fallbacks follow from the job key: with all of them taken in advance, the
    paid output was deleted and every run stopped at it."""
    folder = ResultsFolder(tmp_path, get_model("community/wan-2-2/vace-fun"), "{key}")
    folder.prepare()
    taken = ["x.mp4", "x_ab12cd34ef.mp4", *(f"x_ab12cd34ef-{i}.mp4" for i in range(2, 100))]
    for name in taken:
        (tmp_path / name).write_text("taken")
    name = folder.final_name("x.mp4", KEY)
    tmp = folder.temp_path(KEY, 0)
    tmp.write_bytes(b"the output")
    name = folder.place(tmp, name, KEY)
    assert name not in taken
    assert (tmp_path / name).read_bytes() == b"the output"
    assert all((tmp_path / t).read_text() == "taken" for t in taken)
