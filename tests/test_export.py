"""`comfysweep export`: a real sweep on the emulator (a local conditioning image, two failed jobs,
ratings) exported in every format, each checked against the manifest and the disk."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestrator import export as export_module
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.export import ExportOptions, export_sweep
from orchestrator.locate import locate
from orchestrator.results import ResultsFolder
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

SPEC = """\
name: look
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: start.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  seed: [1, 2]
  steps: [4, 8]
  cfg: [3.0, 5.5]
run:
  output: {output}
  poll_interval: 0.01
  rate: 1000
  concurrency: 2
  retries: 0
"""
START = Path(__file__).parent.parent / "sweeps" / "start.png"
OOM = "CUDA out of memory"


@dataclass(frozen=True)
class Sweep:
    spec: Path
    folder: Path
    ratings: dict[str, str]
    done: list[dict[str, Any]]  # manifest entries of done jobs
    failed: list[dict[str, Any]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """8 jobs, 2 of them failed by the emulator; one done job rated up, one pick, one down."""
    root = tmp_path_factory.mktemp("sweep")
    shutil.copy(START, root / "start.png")
    spec = root / "look.yaml"
    spec.write_text(SPEC.format(output=root / "results"))
    fault = {"fail_string": {"rate": 1.0, "limit": 2}}
    config = EmulatorConfig(speed=2000.0, workers=2, faults=FaultProfile.parse({"faults": fault}))
    with pytest.MonkeyPatch.context() as mp, Emulator(config) as emu:
        mp.setenv("COMFYSWEEP_HOME", str(root / "home"))
        run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=Overrides())
    folder = root / "results" / "look"
    entries = manifest(folder)
    done = [e for e in entries if e["state"] == "done"]
    failed = [e for e in entries if e["state"] != "done"]
    assert len(done) == 6, [e["state"] for e in entries]
    assert len(failed) == 2
    ratings = {done[0]["key"]: "up", done[1]["key"]: "pick", done[2]["key"]: "down"}
    with Store.open(folder / "comfysweep.db") as store:
        for key, verdict in ratings.items():
            store.rate(key, verdict)
    return Sweep(spec, folder, ratings, done, failed)


def manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def export(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)


def read_csv(dest: Path) -> list[dict[str, str]]:
    with (dest / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def start_name() -> str:
    return f"inputs/{hashlib.sha256(START.read_bytes()).hexdigest()[:16]}.png"


def test_hf_export_loads_with_datasets_typed_rated_with_the_image_by_file(
    sweep: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dataset"
    result = export(sweep.spec, dest)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"exported 6 row(s) to {dest} (hf): 6 file(s) (6 hard-linked, 0 copied), "
        "1 conditioning file(s)\n"
    )
    assert not (dest / "metadata.jsonl").read_text().count("data:")
    assert [p.name for p in (dest / "inputs").iterdir()] == [start_name().split("/")[1]]
    assert (dest / start_name()).read_bytes() == START.read_bytes()

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    loaded = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    rows = list(loaded.cast_column("video", datasets.Video(decode=False)))
    assert len(rows) == len(sweep.done)
    features = loaded.features
    assert features["cfg"] == datasets.Value("float64")
    assert features["steps"] == datasets.Value("int64")
    assert features["seed"] == datasets.Value("int64")
    assert features["rating"] == datasets.Value("string")
    by_key = {e["key"]: e for e in sweep.done}
    for row in rows:
        entry = by_key[row["job_key"]]
        (output,) = entry["outputs"]
        assert row["video"]["path"] == str(dest / "data" / output["path"])
        assert os.path.samefile(row["video"]["path"], sweep.folder / output["path"])
        assert row["rating"] == sweep.ratings.get(row["job_key"])
        assert row["state"] == "done"
        assert row["cost_usd"] == entry["cost_usd"]
        assert row["image"] == start_name()
        assert row["image_source"] == "start.png"
        assert {k: row[k] for k in ("seed", "steps", "cfg")} == {
            k: entry["inputs"][k] for k in ("seed", "steps", "cfg")
        }


def test_include_failed_adds_rows_without_files_and_rated_keeps_only_those(
    sweep: Sweep, tmp_path: Path
) -> None:
    result = export(sweep.spec, tmp_path / "all", "--format", "csv", "--include-failed")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "all")
    assert len(rows) == 8
    failed = [r for r in rows if r["state"] != "done"]
    assert {r["job_key"] for r in failed} == {e["key"] for e in sweep.failed}
    for row in failed:
        assert row["file_name"] == ""
        assert OOM in row["error"]
    assert all((tmp_path / "all" / r["file_name"]).is_file() for r in rows if r["file_name"])

    up, down, pick = (tmp_path / name for name in ("up", "down", "pick"))
    for verdict, dest in (("up", up), ("down", down), ("pick", pick)):
        assert export(sweep.spec, dest, "--format", "csv", "--rated", verdict).exit_code == 0
    keys = {d.name: {r["job_key"] for r in read_csv(d)} for d in (up, down, pick)}
    picked = {k for k, v in sweep.ratings.items() if v == "pick"}
    assert keys["up"] == {k for k, v in sweep.ratings.items() if v in ("up", "pick")}
    assert keys["down"] == {k for k, v in sweep.ratings.items() if v == "down"}
    assert keys["pick"] == picked


def test_parquet_is_the_same_table_typed(sweep: Sweep, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    result = export(sweep.spec, tmp_path / "pq", "--format", "parquet", "--include-failed")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "pq" / "metadata.parquet")
    assert table.schema.field("cfg").type == pa.float64()
    assert table.schema.field("steps").type == pa.int64()
    assert table.schema.field("file_name").type == pa.string()
    rows = table.to_pylist()
    assert sorted(r["job_key"] for r in rows) == sorted(e["key"] for e in sweep.done + sweep.failed)
    for row in rows:
        assert row["rating"] == sweep.ratings.get(row["job_key"])
        assert (row["file_name"] is None) == (row["state"] != "done")
        assert row["image"] == start_name()


def test_webdataset_shards_group_video_json_and_image_by_basename(
    sweep: Sweep, tmp_path: Path
) -> None:
    dest = tmp_path / "wds"
    result = export(sweep.spec, dest, "--format", "webdataset", "--shard-size", "4")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"exported 6 row(s) to {dest} (webdataset): 6 file(s) in 2 shard(s), "
        "6 conditioning file(s)\n"
    )
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    shards = sorted(dest.iterdir())
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                base, _, suffix = member.name.partition(".")
                reader = tar.extractfile(member)
                assert reader is not None
                samples[base][suffix] = reader.read()
    by_key = {e["key"]: e for e in sweep.done}
    assert set(samples) == set(by_key)
    for key, sample in samples.items():
        assert set(sample) == {"json", "mp4", "image.png"}
        (output,) = by_key[key]["outputs"]
        assert sample["mp4"] == (sweep.folder / output["path"]).read_bytes()
        assert sample["image.png"] == START.read_bytes()
        record = json.loads(sample["json"])
        assert record["job_key"] == key
        assert record["image"] == "image.png"
        assert record["rating"] == sweep.ratings.get(key)
        assert record["cfg"] == by_key[key]["inputs"]["cfg"]

    by_size = tmp_path / "wds-size"
    assert (
        export(sweep.spec, by_size, "--format", "webdataset", "--shard-size", "1KB").exit_code == 0
    )
    assert len(list(by_size.iterdir())) == 6  # every sample is over 1 KB: one per shard


def test_a_missing_file_refuses_the_export_unless_skipped(sweep: Sweep, tmp_path: Path) -> None:
    victim = sweep.folder / sweep.done[-1]["outputs"][0]["path"]
    kept = tmp_path / "kept.mp4"
    shutil.copy(victim, kept)
    victim.unlink()
    try:
        dest = tmp_path / "out"
        result = CliRunner().invoke(cli, ["export", str(sweep.spec), str(dest)])
        assert result.exit_code == 1
        assert result.output == (
            f"Error: {victim}: missing (1 output file(s) of done jobs gone); `comfysweep run` "
            "downloads them again, or give --skip-missing\n"
        )
        assert not dest.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]
        result = export(sweep.spec, dest, "--skip-missing")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[1] == "1 missing output(s) skipped (--skip-missing)"
        lines = (dest / "metadata.jsonl").read_text().splitlines()
        assert len(lines) == len(sweep.done) - 1
    finally:
        shutil.copy(kept, victim)


def test_a_destination_that_is_not_empty_is_refused_untouched(sweep: Sweep, tmp_path: Path) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["export", str(sweep.spec), str(dest)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {dest} exists and is not empty: give a new DEST, or empty it first\n"
    )
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    (dest / "notes.txt").unlink()  # an empty folder is fine: the export takes its place
    assert export(sweep.spec, dest).exit_code == 0
    assert (dest / "metadata.jsonl").is_file()


def test_a_copy_failing_midway_leaves_no_half_export(
    sweep: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[str] = []
    real = shutil.copyfile

    def flaky(src: Any, dst: Any) -> Any:
        if len(copied) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the copies
        copied.append(str(dst))
        return real(src, dst)

    monkeypatch.setattr(export_module.shutil, "copyfile", flaky)
    dest = tmp_path / "out"
    options = ExportOptions(copy=True)
    with pytest.raises(KeyboardInterrupt):
        export_sweep(locate(sweep.spec), dest, options)
    assert len(copied) == 3
    assert list(tmp_path.iterdir()) == []  # neither DEST nor its temporary folder


def test_bad_input_is_one_line(
    sweep: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: str) -> str:
        result = CliRunner().invoke(cli, ["export", *args])
        assert result.exit_code != 0
        return result.output

    dest = str(tmp_path / "x")
    assert fails(str(sweep.spec), dest, "--format", "webdataset", "--shard-size", "12XB") == (
        "Error: --shard-size 12XB: expected a number of samples (1000) or a size (500MB, 1GB)\n"
    )
    assert fails().endswith("Error: give DEST, or SPEC and DEST\n")
    monkeypatch.chdir(tmp_path)
    assert fails(dest) == (
        f"Error: no sweep here ({tmp_path} holds no comfysweep.db): give SPEC or --store, "
        "or run this inside a sweep's results folder\n"
    )
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    assert fails(str(sweep.spec), dest, "--format", "parquet") == (
        "Error: --format parquet needs pyarrow: pip install 'comfysweep[parquet]'\n"
    )
    (tmp_path / "file").write_text("mine")
    assert fails(str(sweep.spec), str(tmp_path / "file")) == (
        f"Error: {tmp_path / 'file'} exists and is not a folder: give a new DEST\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_inside_the_results_folder_spec_is_optional(
    sweep: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sweep.folder)
    result = export(tmp_path / "d", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "metadata.csv").is_file()


def test_the_results_folder_names_the_image_by_its_file_and_carries_ratings(
    sweep: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = sweep.folder / start_name()
    assert image.read_bytes() == START.read_bytes()
    assert [p.name for p in (sweep.folder / "inputs").iterdir()] == [image.name]

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets  # the results folder itself loads as a dataset too

    loaded = datasets.load_dataset(str(sweep.folder), split="train", cache_dir=str(tmp_path))
    rows = list(loaded.cast_column("video", datasets.Video(decode=False)))
    assert sorted(r["job_key"] for r in rows) == sorted(e["key"] for e in sweep.done)
    assert {r["image"] for r in rows} == {start_name()}
    metadata = [json.loads(x) for x in (sweep.folder / "metadata.jsonl").read_text().splitlines()]
    assert len(metadata) == len(sweep.done)
    for line in metadata:
        assert line["image"] == start_name()
        assert line["image_source"] == "start.png"
    assert all(e["inputs"]["image"] == start_name() for e in manifest(sweep.folder))
    assert "data:" not in (sweep.folder / "manifest.jsonl").read_text()
    assert all(line["rating"] is None for line in metadata)  # rated after the run's last rewrite

    spec = load_spec(sweep.spec)
    folder = ResultsFolder(sweep.folder, spec.definition, spec.filename)
    with Store.open(sweep.folder / "comfysweep.db") as store:
        folder.attach(store)
        folder.write_manifest(store.jobs())  # as the runner does after every change
    ratings = {e["key"]: e["rating"] for e in manifest(sweep.folder)}
    assert ratings == {e["key"]: sweep.ratings.get(e["key"]) for e in sweep.done + sweep.failed}
    metadata = [json.loads(x) for x in (sweep.folder / "metadata.jsonl").read_text().splitlines()]
    assert {m["job_key"]: m["rating"] for m in metadata} == {
        e["key"]: sweep.ratings.get(e["key"]) for e in sweep.done
    }
    assert [p.name for p in (sweep.folder / "inputs").iterdir()] == [image.name]

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets  # the results folder itself loads as a dataset too

    loaded = datasets.load_dataset(str(sweep.folder), split="train", cache_dir=str(tmp_path))
    rows = list(loaded.cast_column("video", datasets.Video(decode=False)))
    assert sorted(r["job_key"] for r in rows) == sorted(e["key"] for e in sweep.done)
    assert {r["image"] for r in rows} == {start_name()}


@dataclass(frozen=True)
class FakeJob:
    key: str
    index: int
    inputs: dict[str, Any]
    model_id: str = "someone/schemaless"
    repeat: int = 0
    sources: dict[str, str] | None = None


def schemaless(folder: Path, values: list[dict[str, Any]]) -> Path:
    """A finished sweep of a model without a schema, one done job per input dict; its store."""
    folder.mkdir()
    jobs = [FakeJob(hashlib.sha256(bytes([i])).hexdigest(), i, v) for i, v in enumerate(values)]
    with Store.open(folder / "comfysweep.db") as store:
        store.sync_jobs(jobs, FakeJob.model_id)
        for row in store.claim(len(jobs)):
            name = f"{row.index}.mp4"
            (folder / name).write_bytes(b"video %d" % row.index)
            output = {"path": name, "size": len(b"video 0"), "sha256": "", "url": "u"}
            store.transition(row.key, JobState.QUEUED, request_id=f"r{row.index}")
            store.transition(row.key, JobState.SUCCEEDED, cost=0.5)
            store.transition(row.key, JobState.DONE, outputs=[output])
    return folder / "comfysweep.db"


def test_a_column_keeps_one_type_across_rows(tmp_path: Path) -> None:
    """A value that is an int in one job and a float in another is a float in every row (as
    `datasets` needs), and a column mixing numbers and text is text."""
    values = [(None, 3, True, [1]), (4, "auto", False, {"a": 1}), (4.5, 7, True, None)]
    store = schemaless(
        tmp_path / "results",
        [{"strength": s, "label": lb, "on": on, "extra": e} for s, lb, on, e in values],
    )
    dest = tmp_path / "out"
    assert export(dest, "--store", store).exit_code == 0
    lines = [json.loads(x) for x in (dest / "metadata.jsonl").read_text().splitlines()]
    assert [(x["strength"], x["label"], x["on"], x["extra"]) for x in lines] == [
        (None, "3", True, "[1]"),
        (4.0, "auto", False, '{"a": 1}'),
        (4.5, "7", True, None),
    ]
    assert isinstance(lines[1]["strength"], float)
    card = (dest / "README.md").read_text()
    kinds = (("strength", "float64"), ("label", "string"), ("on", "bool"), ("extra", "string"))
    for name, dtype in kinds:
        assert f'  - name: "{name}"\n    dtype: {dtype}\n' in card


def test_nothing_to_export_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    store = schemaless(tmp_path / "results", [{"video": 1, "rating": 2, "x_file_name": 3}])
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out"), "--store", str(store)])
    assert result.exit_code == 0, result.output  # an input named as a column is renamed, kept
    lines = (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()
    assert {k: v for k, v in json.loads(lines[0]).items() if k.startswith("input_")} == {
        "input_video": 1,
        "input_rating": 2,
        "input_x_filename": 3,
    }
    result = CliRunner().invoke(
        cli, ["export", str(tmp_path / "up"), "--store", str(store), "--rated", "up"]
    )
    assert result.exit_code == 1
    assert result.output == "Error: nothing to export: no done job rated up in results\n"
    assert not (tmp_path / "up").exists()
