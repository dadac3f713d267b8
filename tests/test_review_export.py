"""A hostile review of `comfysweep export` and the results folder's dataset: each test here failed
before its fix (seeds past int64, destinations that cannot be written or sit in the results folder,
a killed export's leftovers, input names that take a dataset column)."""

from __future__ import annotations

import base64
import csv
import errno
import gc
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestrator import conditioning
from orchestrator import export as export_module
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import ComfysweepError
from orchestrator.leftovers import HOST
from orchestrator.models import get_model
from orchestrator.results import ResultsFolder
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep
from tests.test_export import SPEC, START, FakeJob, schemaless

BIG = 2**64 - 1  # ComfyUI's seed widget goes up to 0xffffffffffffffff


def export(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def loaded(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, object]]:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    cache = tmp_path / f"cache-{folder.name}"
    dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))
    rows = list(dataset.cast_column("video", datasets.Video(decode=False)))
    gc.collect()  # datasets' csv reader leaves a file to the collector: here, not in a later test
    return rows


def test_a_seed_past_int64_exports_in_every_format_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int past int64 makes its column text (exact; `datasets` cannot read a uint64 from
    JSON), in every format, instead of a traceback from pyarrow or a dataset that fails to load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [(BIG, -1), (5, 2**63 - 1)]
    store = schemaless(tmp_path / "results", [{"seed": s, "small": m} for s, m in values])
    for fmt in ("hf", "parquet", "csv"):
        result = export(tmp_path / fmt, "--store", store, "--format", fmt)
        assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "parquet" / "metadata.parquet")
    assert table.schema.field("seed").type == pa.string()
    assert table.schema.field("small").type == pa.int64()
    assert table.column("seed").to_pylist() == [str(BIG), "5"]
    assert table.column("small").to_pylist() == [-1, 2**63 - 1]
    rows = loaded(tmp_path / "hf", tmp_path, monkeypatch)
    assert [(r["seed"], r["small"]) for r in rows] == [(str(BIG), -1), ("5", 2**63 - 1)]
    lines = (tmp_path / "csv" / "metadata.csv").read_text().splitlines()
    assert lines[1].endswith(f",{BIG},-1")


def test_a_destination_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEST under a file, or a disk that fills midway: one line, no traceback, nothing left."""
    store = schemaless(tmp_path / "results", [{"seed": 1}, {"seed": 2}])
    (tmp_path / "notes").write_text("mine")
    result = export(tmp_path / "notes" / "dest", "--store", store)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'notes' / 'dest'}: cannot export there: Not a directory\n"
    )

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module.os, "link", full)
    result = export(tmp_path / "out" / "dest", "--store", store)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'out' / 'dest'}: cannot export there: No space left on device\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "results"]  # not even out/


def test_a_destination_inside_the_results_folder_is_refused(tmp_path: Path) -> None:
    """The results folder loads as a dataset itself: an export inside it would be read with it
    (each output twice), and a later run would find files nobody recorded. Refused, through a
    symlink too, and so is an empty folder of the tool's (``.partial``)."""
    store = schemaless(tmp_path / "results", [{"seed": 1}])
    (tmp_path / "results" / ".partial").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "results")
    before = sorted(p.name for p in (tmp_path / "results").iterdir())
    for dest in (
        tmp_path / "results" / "dataset",
        tmp_path / "results" / "sub" / "dataset",
        tmp_path / "link" / "dataset",
        tmp_path / "results" / ".partial",
    ):
        result = export(dest, "--store", store)
        assert result.exit_code == 1, result.output
        assert result.output == (
            f"Error: {dest} is inside the results folder {tmp_path / 'results'}: give a DEST "
            "outside it (that folder loads as a dataset itself)\n"
        )
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == before
    assert export(tmp_path / "dataset", "--store", store).exit_code == 0


KILLED = """\
import os, signal, sys
from pathlib import Path
from orchestrator import export
from orchestrator.locate import locate

def killed(self, name):  # SIGKILL as the first output lands in the staging folder
    os.kill(os.getpid(), signal.SIGKILL)

export._Files.put = killed
export.export_sweep(locate(None, sys.argv[1]), Path(sys.argv[2]), export.ExportOptions())
"""


def test_a_killed_exports_staging_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    """kill -9 leaves the staging folder (copies of every output, with --copy); the next export
    to that DEST removes it and says so; a live export's is left alone."""
    store = schemaless(tmp_path / "results", [{"seed": 1}, {"seed": 2}])
    dest = tmp_path / "out" / "dataset"
    child = subprocess.run(
        [sys.executable, "-c", KILLED, str(store), str(dest)],
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL
    (left,) = (tmp_path / "out").iterdir()
    assert left.name.startswith(".dataset.")
    assert left.name.endswith(".export")
    live = tmp_path / "out" / f".dataset.{HOST}~{os.getpid()}~x.export"
    live.mkdir()
    result = export(dest, "--store", store)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "removed 1 staging folder(s) a killed export left beside it"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["dataset", live.name])


def test_an_input_named_like_a_file_column_is_renamed_out_of_datasets_file_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file_name`` became ``input_file_name``, which `datasets` reads as a file column again
    (a video feature ``input``, decoding a file that is not there): the renamed column no longer
    ends in ``_file_name``."""
    values = [{"file_name": "a.mp4", "x_file_name": "b.mp4", "file_names": "c"}] * 2
    values = [v | {"seed": i} for i, v in enumerate(values)]
    store = schemaless(tmp_path / "results", values)
    assert export(tmp_path / "out", "--store", store).exit_code == 0
    rows = loaded(tmp_path / "out", tmp_path, monkeypatch)
    assert [r["video"]["path"] for r in rows] == [
        str(tmp_path / "out" / "data" / f"{i}.mp4") for i in range(2)
    ]
    assert [(r["input_filename"], r["input_x_filename"], r["input_filenames"]) for r in rows] == [
        ("a.mp4", "b.mp4", "c")
    ] * 2


def test_an_input_named_like_a_dataset_column_keeps_the_results_folders_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model without a schema may take an input named ``video`` (a control video), ``rating``
    or ``file_name``: in the results folder's metadata.jsonl it took the output's place (the
    dataset's video became the input's URL) or the rating's; it is ``input_<name>`` there, as
    in an export."""
    values = [
        {"video": f"https://x/{i}.mp4", "rating": 5, "file_name": "a.mp4", "job_key": "k"}
        for i in range(2)
    ]
    store_path = schemaless(tmp_path / "results", values)
    with Store.open(store_path) as store:
        rows = list(store.jobs())
        store.rate(rows[0].key, "up")
        folder = ResultsFolder(tmp_path / "results", get_model("someone/schemaless"), "{key}")
        folder.attach(store)
        folder.write_manifest(store.jobs())
    lines = (tmp_path / "results" / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file_name": f"{i}.mp4", "job_key": row.key, "rating": "up" if i == 0 else None}
        | {"kind": "video", "mime": "video/mp4"}
        | {"input_video": f"https://x/{i}.mp4", "input_rating": 5}
        | {"input_filename": "a.mp4", "input_job_key": "k"}
        for i, row in enumerate(rows)
    ]
    videos = loaded(tmp_path / "results", tmp_path, monkeypatch)
    assert [v["video"]["path"] for v in videos] == [
        str(tmp_path / "results" / "0.mp4"),
        str(tmp_path / "results" / "1.mp4"),
    ]
    assert [(v["rating"], v["input_video"]) for v in videos] == [
        ("up", "https://x/0.mp4"),
        (None, "https://x/1.mp4"),
    ]


def png(colour: tuple[int, int, int]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    "values",
    [[{"seed": 1}], [{"image": png((255, 0, 0))}, {"image": png((0, 0, 255))}]],
    ids=["one-output", "as-many-images-as-videos"],
)
def test_the_results_folder_loads_as_its_videos_whatever_the_file_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: list[dict[str, object]]
) -> None:
    """`datasets` picks a folder's loader by its most common extension: one output beside
    manifest.jsonl loaded as JSON (and failed), two videos beside two conditioning images as an
    image folder (no video column). A dataset card in the results folder names its data files."""
    store_path = schemaless(tmp_path / "results", values)
    with Store.open(store_path) as store:
        folder = ResultsFolder(tmp_path / "results", get_model("someone/schemaless"), "{key}")
        folder.attach(store)
        folder.write_manifest(store.jobs())
    rows = loaded(tmp_path / "results", tmp_path, monkeypatch)
    assert [r["video"]["path"] for r in rows] == [
        str(tmp_path / "results" / f"{i}.mp4") for i in range(len(values))
    ]


def test_a_readme_of_the_users_in_the_results_folder_is_left_alone(tmp_path: Path) -> None:
    store_path = schemaless(tmp_path / "results", [{"seed": 1}])
    (tmp_path / "results" / "README.md").write_text("my notes")
    with Store.open(store_path) as store:
        folder = ResultsFolder(tmp_path / "results", get_model("someone/schemaless"), "{key}")
        folder.attach(store)
        folder.write_manifest(store.jobs())
        assert (tmp_path / "results" / "README.md").read_text() == "my notes"
        (tmp_path / "results" / "README.md").unlink()
        (tmp_path / "results" / "README.md").mkdir()  # not even a file: the manifest still is
        folder.write_manifest(store.jobs())
    assert (tmp_path / "results" / "metadata.jsonl").read_text().count("0.mp4") == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fmt", ["hf", "parquet", "csv"])
def test_every_folder_export_loads_as_its_videos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """One job and its conditioning image (a `--rated up` of one): parquet and csv had no card,
    and `datasets` loaded the folder as images (the .png won the extension count against the one
    .mp4), with no video column. Every folder format carries the card now."""
    store = schemaless(tmp_path / "results", [{"image": png((255, 0, 0)), "rating": "x"}])
    assert export(tmp_path / fmt, "--store", store, "--format", fmt).exit_code == 0
    (row,) = loaded(tmp_path / fmt, tmp_path, monkeypatch)
    assert row["video"]["path"] == str(tmp_path / fmt / "data" / "0.mp4")
    assert (row["rating"], row["input_rating"], row["image"][:7]) == (None, "x", "inputs/")


KILLED_WRITE = """\
import os, signal, sys
from pathlib import Path
from orchestrator import conditioning

def killed(*args):  # SIGKILL with the image written, before its rename
    os.kill(os.getpid(), signal.SIGKILL)

conditioning.os.replace = killed
media = conditioning.decode_data_uri(sys.argv[2])
conditioning.MediaFolder(Path(sys.argv[1])).place(media)
"""


def test_a_conditioning_image_half_written_by_a_killed_run_is_removed_at_the_next(
    tmp_path: Path,
) -> None:
    """A kill while inputs/ gets an image left its temporary file there for ever (prepare()
    cleaned only the folder's top); it is named by host and pid now, and removed once dead."""
    folder = tmp_path / "results"
    folder.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(folder), png((1, 2, 3))],
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL
    (left,) = (folder / "inputs").iterdir()
    assert left.name.endswith(".tmp")
    live = folder / "inputs" / f".0123456789abcdef.png.{HOST}~{os.getpid()}~x.tmp"
    live.write_bytes(b"a live runner's")
    mine = folder / "inputs" / "notes.tmp"
    mine.write_text("not comfysweep's")
    results = ResultsFolder(folder, get_model("someone/schemaless"), "{key}")
    assert results.prepare() == 1
    assert sorted(p.name for p in (folder / "inputs").iterdir()) == sorted([live.name, mine.name])


def test_an_output_that_leads_out_of_the_results_folder_is_never_exported(
    tmp_path: Path,
) -> None:
    """A results folder copied from someone else may hold an output that is a symlink to a file
    of yours (of the recorded size: a private key is ~400 bytes), or a store whose output path
    climbs out (``../``). The export hard-linked or copied that file into the dataset you then
    share; now such an output counts as missing."""
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"SECRET!")  # the size schemaless() records: len(b"video 0")
    store = schemaless(tmp_path / "results", [{"seed": i} for i in range(3)])
    (tmp_path / "results" / "0.mp4").unlink()
    (tmp_path / "results" / "0.mp4").symlink_to(secret)
    with sqlite3.connect(store) as db:  # a store crafted by hand
        (outputs,) = db.execute('SELECT outputs FROM jobs WHERE "index" = 1').fetchone()
        crafted = json.dumps([json.loads(outputs)[0] | {"path": "../id_ed25519"}])
        db.execute('UPDATE jobs SET outputs = ? WHERE "index" = 1', (crafted,))
    result = export(tmp_path / "out", "--store", store)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'results' / '0.mp4'}: not a file of the results folder (a symlink, "
        "or out of it) (2 output file(s) of done jobs gone); `comfysweep run` downloads them "
        "again, or give --skip-missing\n"
    )
    for fmt in ("hf", "webdataset"):
        dest = tmp_path / f"out-{fmt}"
        result = export(dest, "--store", store, "--skip-missing", "--copy", "--format", fmt)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"exported 1 row(s) to {dest}")
        files = [p for p in dest.rglob("*") if p.is_file()]
        assert not any(b"SECRET" in p.read_bytes() for p in files)
    other = schemaless(tmp_path / "other", [{"seed": 1}])
    (tmp_path / "other" / "0.mp4").write_bytes(b"cut")  # truncated since its download
    assert export(tmp_path / "out", "--store", other).output == (
        f"Error: {tmp_path / 'other' / '0.mp4'}: not the file downloaded (another size) (1 "
        "output file(s) of done jobs gone); `comfysweep run` downloads them again, or give "
        "--skip-missing\n"
    )


def test_repeats_and_orphaned_jobs_are_told_apart_in_the_table(tmp_path: Path) -> None:
    """Two copies of one combination (``repeat``) had identical rows but for their key, and a
    job an edit of the spec removed (orphaned: `status` counts it apart) was exported as any
    other: the table carries ``repeat`` and ``orphaned``."""
    folder = tmp_path / "results"
    folder.mkdir()
    jobs = [FakeJob(f"{i:064x}", i, {"seed": 1}, repeat=i) for i in range(2)]
    jobs.append(FakeJob(f"{2:064x}", 2, {"seed": 2}))
    with Store.open(folder / "comfysweep.db") as db:
        db.sync_jobs(jobs, FakeJob.model_id)
        for row in db.claim(3):
            (folder / f"{row.index}.mp4").write_bytes(b"video")
            output = {"path": f"{row.index}.mp4", "size": 5, "sha256": "", "url": "u"}
            db.transition(row.key, JobState.QUEUED, request_id=f"r{row.index}")
            db.transition(row.key, JobState.SUCCEEDED, cost=0.5)
            db.transition(row.key, JobState.DONE, outputs=[output])
        db.sync_jobs(jobs[:2], FakeJob.model_id)  # an edit of the spec drops seed 2
    dest = tmp_path / "out"
    assert export(dest, "--store", folder / "comfysweep.db", "--format", "csv").exit_code == 0
    table = csv.DictReader((dest / "metadata.csv").read_text().splitlines())
    assert sorted((r["seed"], r["repeat"], r["orphaned"]) for r in table) == [
        ("1", "0", "False"),
        ("1", "1", "False"),
        ("2", "0", "True"),
    ]


def test_a_sweep_over_many_images_decodes_each_once_however_often_the_manifest_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner rewrites metadata.jsonl after every change, naming each job's image by its
    content. A cache of 8 decoded URIs thrashed on a sweep over 10 images: every job's image
    (6 MiB of base64 for a 4K still) was decoded and hashed again at every rewrite, minutes per
    rewrite at 10,000 jobs. Each distinct image is decoded once now."""
    store_path = schemaless(tmp_path / "results", [{"image": png((i, 0, 0))} for i in range(10)])
    decoded: list[int] = []
    real = conditioning.base64.b64decode

    def counted(data: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(conditioning.base64, "b64decode", counted)
    conditioning._KNOWN.clear()  # another test in this worker may have decoded the same image
    conditioning._payload.cache_clear()
    with Store.open(store_path) as store:
        folder = ResultsFolder(tmp_path / "results", get_model("someone/schemaless"), "{key}")
        folder.attach(store)
        for _ in range(3):
            folder.write_manifest(store.jobs())
    assert len(decoded) == 10
    assert len(list((tmp_path / "results" / "inputs").iterdir())) == 10
    result = export(tmp_path / "out", "--store", store_path)
    assert result.exit_code == 0, result.output
    assert len(decoded) == 10 + 10  # the export writes each image into its own inputs/ once


def test_dest_the_current_folder_or_a_symlink_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mkdir ds && cd ds && comfysweep export ... .` said "appeared, not empty, during the
    export: [Errno 16] Device or resource busy"; a symlink to an empty folder "is not a folder".
    The export replaces DEST whole (a rename), which neither allows: each says why, in one line."""
    store = schemaless(tmp_path / "results", [{"seed": 1}])
    (tmp_path / "ds").mkdir()
    monkeypatch.chdir(tmp_path / "ds")
    result = export(".", "--store", store)
    assert result.exit_code == 1
    assert result.output == (
        "Error: . is the current folder (or holds it): the export takes DEST's place whole; "
        "give it from outside (cd ..)\n"
    )
    (tmp_path / "link").symlink_to(tmp_path / "ds")
    result = export(tmp_path / "link", "--store", store)
    assert result.output == (
        f"Error: {tmp_path / 'link'} is a symlink: the export would replace the link, not fill "
        f"{tmp_path / 'ds'}; give that folder, or a new DEST\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "link", "results"]
    assert list((tmp_path / "ds").iterdir()) == []


def test_an_input_named_output_keeps_its_value_in_a_webdataset_sample(tmp_path: Path) -> None:
    """A sample's json names its file in ``output``, which overwrote an input of that name."""
    store = schemaless(tmp_path / "results", [{"output": "png", "seed": 1}])
    dest = tmp_path / "wds"
    assert export(dest, "--store", store, "--format", "webdataset").exit_code == 0
    with tarfile.open(dest / "shard-000000.tar") as tar:
        reader = tar.extractfile(next(m for m in tar if m.name.endswith(".json")))
        assert reader is not None
        record = json.loads(reader.read())
    assert (record["output"], record["input_output"], record["seed"]) == ("0.mp4", "png", 1)


def test_an_inputs_folder_that_is_a_symlink_stops_the_run_before_any_spend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results folder copied from elsewhere may hold ``inputs`` as a link: the run paid its
    jobs, then stopped at its first manifest write ("not a real folder"). Like ``.partial``,
    it is checked at the start now: one line, nothing submitted, nothing written through."""
    shutil.copy(START, tmp_path / "start.png")
    spec = tmp_path / "look.yaml"
    spec.write_text(SPEC.format(output=tmp_path / "results"))
    folder = tmp_path / "results" / "look"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "inputs").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv("COMFYSWEEP_HOME", str(tmp_path / "home"))
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        with pytest.raises(ComfysweepError) as caught:
            run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
        assert emu.ledger()["jobs"] == []
    assert str(caught.value) == (
        f"{folder / 'inputs'} is a symlink: comfysweep writes the conditioning images into a "
        "real folder there and never follows a link out of the results folder; move it away "
        "and run again"
    )
    assert list(elsewhere.iterdir()) == []
