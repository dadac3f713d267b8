"""Several models and added axes, run end to end against the embedded emulator: each model's
jobs submitted with its own fields (the emulator validates each against its own schema), and an
axis added later, or a model list whose first entry is the original model, pays only for the
new jobs (the emulator's ledger)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.report.view import build_view, choose_axes
from orchestrator.store import Store
from orchestrator.sweep import Overrides, run_sweep, sweep_status
from tests.catalog_models import I2V_SEEDANCE, I2V_WAN, use_catalog
from tests.sweeps import run_until_killed

VACE = "community/wan-2-2/vace-fun"
DRIVER = Path(__file__).with_name("kill_driver.py")
FAST = Overrides(poll_interval=0.02)
ONE = """\
name: grow
model: {model}
inputs:
  prompt: a red fox in the snow
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
axes:
  seed: [1, 2]
run: {{output: {output}, poll_interval: 0.02, rate: 1000}}
"""
WAN = f"{{id: {I2V_WAN}, map: {{image: image_url}}, inputs: {{resolution: 480p, duration: 2}}}}"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator serving vace-fun and the catalog models these tests use."""
    use_catalog(monkeypatch, I2V_WAN, I2V_SEEDANCE)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        served = getattr(getattr(emu, "state", None), "models", None)
        if served is not None and I2V_WAN not in served:
            pytest.skip("the emulator does not serve the catalog models")
        yield emu


def run(spec: Path, emu: Emulator) -> Any:
    return run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=FAST)


def write(tmp_path: Path, model: str, extra: str = "") -> Path:
    path = tmp_path / "grow.yaml"
    path.write_text(ONE.format(model=model, output=tmp_path / "results") + extra)
    return path


def billed(emu: Emulator) -> Counter[str]:
    ledger = emu.ledger()
    assert set(ledger["submissions_by_input"].values()) == {1}  # nothing paid twice
    return Counter(job["model_id"] for job in ledger["jobs"])


def test_two_models_run_each_with_its_own_fields_and_names(
    tmp_path: Path, emulator: Emulator
) -> None:
    model = f"\n  - {VACE}\n  - {WAN}"
    spec = write(tmp_path, model).read_text().replace("  resolution: 480x480 (1:1)\n", "")
    path = tmp_path / "grow.yaml"
    path.write_text(spec)
    report = run(path, emulator)
    assert report.complete, report
    assert billed(emulator) == {VACE: 2, I2V_WAN: 2}
    folder = tmp_path / "results" / "grow"
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    wan = [e for e in entries if e["model"] == I2V_WAN]
    assert {e["inputs"]["image"] for e in wan} == {"https://example.com/fox.png"}
    names = sorted(e["outputs"][0]["path"] for e in entries)
    assert [n.split("_")[0] for n in names] == ["model-wan-2-2"] * 2 + ["model-wan-3.0"] * 2
    assert run(path, emulator).complete  # resumed: nothing more submitted
    assert billed(emulator) == {VACE: 2, I2V_WAN: 2}
    by_model = sweep_status(path)["models"]
    assert list(by_model) == [VACE, I2V_WAN]
    assert {m: c["done"] for m, c in by_model.items()} == {VACE: 2, I2V_WAN: 2}
    shown = CliRunner().invoke(cli, ["status", str(path)])
    assert f"  {I2V_WAN}: 2 done" in shown.output.splitlines()
    # The report puts model on an axis; the image is one input (its common name) on both.
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        view = choose_axes(build_view(db, folder), x="model")
    assert view.axis("model").labels == ["wan-2-2", "wan-3.0"]
    assert view.fixed["image"] == "https://example.com/fox.png"
    assert "image_url" not in view.fixed
    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", str(path), str(dest), "--format", "csv"])
    assert result.exit_code == 0, result.output
    with (dest / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["model"] for r in rows) == [VACE] * 2 + [I2V_WAN] * 2
    assert {r["image"] for r in rows} == {"https://example.com/fox.png"}


def test_an_axis_added_later_runs_only_the_new_jobs(tmp_path: Path, emulator: Emulator) -> None:
    spec = write(tmp_path, VACE)
    assert run(spec, emulator).complete
    assert billed(emulator) == {VACE: 2}
    # steps' schema default is 12: the axis [12, 20] keeps both finished jobs.
    spec.write_text(
        spec.read_text().replace("  seed: [1, 2]\n", "  seed: [1, 2]\n  steps: [12, 20]\n")
    )
    assert run(spec, emulator).complete
    assert billed(emulator) == {VACE: 4}
    # A fixed input turned into an axis that includes its value: the same again.
    text = spec.read_text().replace("  resolution: 480x480 (1:1)\n", "")
    text = text.replace(
        "  steps: [12, 20]\n", "  steps: [12, 20]\n  resolution: [480x480 (1:1), 720x720 (1:1)]\n"
    )
    spec.write_text(text)
    assert run(spec, emulator).complete
    assert billed(emulator) == {VACE: 8}
    # A model list whose first entry is the original model: only the new model's jobs.
    text = spec.read_text().replace(f"model: {VACE}", f"model:\n  - {VACE}\n  - {WAN}")
    text = text.replace("  steps: [12, 20]\n  resolution: [480x480 (1:1), 720x720 (1:1)]\n", "")
    text = text.replace(
        f"  - {VACE}\n",
        f"  - {{id: {VACE}, axes: {{steps: [12, 20], resolution: "
        "[480x480 (1:1), 720x720 (1:1)]}}\n",
    )
    spec.write_text(text)
    report = run(spec, emulator)
    assert report.complete, report
    assert billed(emulator) == {VACE: 8, I2V_WAN: 2}


@pytest.mark.timeout(300)  # runs in a subprocess: slow on a busy machine
@pytest.mark.parametrize("point", ["submit-sent", "downloading"])
def test_two_models_resume_after_a_kill_without_paying_twice(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    monkeypatch.setenv("COMFYSWEEP_TEST_CATALOG", I2V_WAN)  # the killed process knows it too
    spec = write(tmp_path, f"\n  - {VACE}\n  - {WAN}")
    spec.write_text(spec.read_text().replace("  resolution: 480x480 (1:1)\n", ""))
    run_until_killed(DRIVER, spec, emulator, point, "3")
    report = run(spec, emulator)
    assert report.counts["done"] + report.counts["unknown"] == 4
    # A submit in flight at the kill is unknown, never resent: every input was submitted once.
    ledger = billed(emulator)
    assert ledger[VACE] == 2
    assert ledger[I2V_WAN] == 2
