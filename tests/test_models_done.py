"""The models issue's "done when", the way a user gets there: `models sync` from the emulator (no
test hook registers a model), then one prompt and one image over three video models with two
LoRA scales, killed mid-run and resumed (the emulator's ledger: nothing paid twice), `model` on
a report axis; and an image dataset from a template and a wildcard file that `datasets` loads."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.canonical import canonical_json, input_sha256
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.report.view import build_view, choose_axes
from orchestrator.store import Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import run_until_killed

DRIVER = Path(__file__).with_name("kill_driver.py")
START = Path(__file__).parents[1] / "sweeps" / "start.png"
WAN = "wan-ai/wan-3.0/image-to-video"
SEEDANCE = "bytedance/seedance-2.5/image-to-video/1080p"
VACE = "community/wan-2-2/vace-fun"
T2I = "google/nano-banana-2-lite/text-to-image"
LORAS = "{lora: [{path: fox-style.safetensors, scale: 0.5}, {path: fox-style.safetensors}]}"
THREE = f"""\
name: three
model:
  - id: {WAN}
    map: {{image: image_url}}
    inputs: {{resolution: 480p, duration: 2}}
    axes: {LORAS}
  - id: {SEEDANCE}
    inputs: {{duration: 4}}
    axes: {LORAS}
  - id: {VACE}
    inputs: {{resolution: 480x480 (1:1), frames: 81, steps: 4}}
inputs:
  prompt: a red fox trotting through fresh snow
  image: start.png
run: {{output: results, poll_interval: 0.02, rate: 1000, concurrency: 2}}
"""
DATASET = f"""\
name: animals
model: {T2I}
axes:
  prompt:
    template: "a {{watercolor|pencil}} drawing of a __animals__"
  aspect_ratio: ["1:1", "16:9"]
run: {{output: results, poll_interval: 0.02, rate: 1000}}
"""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def synced(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """`comfysweep models sync` against the emulator, as a user pointed at it would run it."""
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", emu.base_url)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", emu.token)
    result = CliRunner().invoke(cli, ["models", "sync"])
    assert result.exit_code == 0, result.output


def billed(emu: Emulator) -> Counter[str]:
    ledger = emu.ledger()
    assert set(ledger["submissions_by_input"].values()) == {1}  # nothing paid twice
    return Counter(job["model_id"] for job in ledger["jobs"])


@pytest.mark.timeout(300)  # a killed run in a subprocess: slow on a busy machine
def test_three_video_models_and_two_lora_scales_resume_after_a_kill_and_report_by_model(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced(emulator, monkeypatch)
    shutil.copy(START, tmp_path / "start.png")
    spec = tmp_path / "three.yaml"
    spec.write_text(THREE)
    run_until_killed(DRIVER, spec, emulator, "downloading", "2")  # dies mid-download
    report = run_sweep(
        spec, base_url=emulator.base_url, token=emulator.token, overrides=Overrides()
    )
    assert report.complete, report
    assert billed(emulator) == {WAN: 2, SEEDANCE: 2, VACE: 1}
    folder = tmp_path / "results" / "three"
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 5
    for entry in entries:
        (output,) = entry["outputs"]
        assert (folder / output["path"]).stat().st_size == output["size"]
    # What the emulator was sent is what the store holds: each LoRA scale once on each base.
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        jobs = list(db.jobs())
    assert {input_sha256(j.inputs) for j in jobs} == {
        job["input_sha256"] for job in emulator.ledger()["jobs"]
    }
    loras = Counter((j.model_id, canonical_json(j.inputs.get("lora"))) for j in jobs)
    for model in (WAN, SEEDANCE):
        assert loras[(model, '{"path":"fox-style.safetensors","scale":0.5}')] == 1
        assert loras[(model, '{"path":"fox-style.safetensors","scale":1.0}')] == 1
    assert loras[(VACE, "null")] == 1
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        view = choose_axes(build_view(db, folder), x="model", y="lora")
    assert sorted(view.axis("model").labels) == ["seedance-2.5", "wan-2-2", "wan-3.0"]
    assert "fox-style@0.5" in view.axis("lora").labels
    result = CliRunner().invoke(cli, ["report", str(spec), "--x", "model", "--y", "lora"])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").stat().st_size > 0


def test_a_template_and_a_wildcard_file_make_an_image_dataset_that_datasets_loads(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    synced(emulator, monkeypatch)
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "animals.txt").write_text("fox\nheron\nbadger\n")
    spec = tmp_path / "animals.yaml"
    spec.write_text(DATASET)
    plan = CliRunner().invoke(cli, ["plan", str(spec), "--json"])
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.output)["jobs"] == 12  # 2 styles x 3 animals x 2 aspect ratios
    report = run_sweep(
        spec, base_url=emulator.base_url, token=emulator.token, overrides=Overrides()
    )
    assert report.complete, report
    assert billed(emulator) == {T2I: 12}
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", str(spec), str(dest), "--format", "hf"])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 12
    assert sorted(set(loaded["prompt"])) == sorted(
        f"a {style} drawing of a {animal}"
        for style in ("watercolor", "pencil")
        for animal in ("fox", "heron", "badger")
    )
    # Decoded by Pillow: real images of the asked aspect ratios.
    ratios = {round(row["image"].size[0] / row["image"].size[1], 1) for row in loaded}
    assert ratios == {1.0, 1.8}
