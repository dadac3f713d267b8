"""What a new user hit following the README's "Models, media, LoRAs and templates", each pinned."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.grid import iter_jobs
from orchestrator.models import _registry as models_registry
from orchestrator.models import catalog
from orchestrator.naming import render_output_name
from orchestrator.results import STORE_FILE
from orchestrator.spec import load_spec
from orchestrator.store import Store

from .catalog_models import I2V_SEEDANCE, I2V_WAN, use_catalog

_SAMPLE = Path(__file__).with_name("catalog_sample.json")


def _emulated_cache() -> None:
    """The sample catalog cached for the emulator, as `models sync --emulator` leaves it."""
    entries = json.loads(_SAMPLE.read_text(encoding="utf-8"))["models"]
    catalog.save(catalog.EMULATOR, "http://127.0.0.1:1/v1", entries)


def _wan_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "w.yaml"
    spec.write_text(
        f"name: w\nmodel: {I2V_WAN}\n"
        "inputs: {prompt: a fox, image_url: 'https://example.com/fox.png'}\n"
        "axes: {duration: [2, 3]}\nrun: {output: out}\n"
    )
    return spec


def test_status_of_a_sweep_run_with_emulator_finds_the_emulators_catalog(tmp_path: Path) -> None:
    # `models sync --emulator`, `run three-models.yaml --emulator`, then `status SPEC` said
    # "unknown model ...: add --emulator", and status, show, report and export take no --emulator.
    _emulated_cache()
    spec = _wan_spec(tmp_path)
    out = CliRunner().invoke(cli, ["status", str(spec)])
    assert out.exit_code == 1  # the emulator's catalog knows the model: no store yet is the news
    assert "no store yet" in out.output
    (tmp_path / "out" / "w").mkdir(parents=True)
    Store.open(tmp_path / "out" / "w" / STORE_FILE).close()
    out = CliRunner().invoke(cli, ["status", str(spec)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("w: 0 jobs")
    out = CliRunner().invoke(cli, ["retry", str(spec), "--failed"])  # no --emulator either
    assert out.exit_code == 0, out.output
    assert out.output.startswith("0 job(s) back to pending")


def test_a_default_name_leaves_out_a_field_the_jobs_model_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sweeps/three-models.yaml said seedance's files are model-seedance-2.5_<key>.mp4; they were
    # model-seedance-2.5_seed-__<key>.mp4 (seedance has no seed).
    use_catalog(monkeypatch, I2V_WAN, I2V_SEEDANCE)
    spec_path = tmp_path / "two.yaml"
    spec_path.write_text(
        f"name: two\nmodel:\n"
        f"  - {{id: {I2V_WAN}, map: {{image: image_url}}, axes: {{seed: [1]}}}}\n"
        f"  - {I2V_SEEDANCE}\n"
        "inputs: {prompt: a fox, image: 'https://example.com/a.png'}\n"
    )
    spec = load_spec(spec_path)
    labels = {p.definition.model_id: p.label for p in spec.parts}
    names = [
        render_output_name(spec, j, ext="mp4", model=j.definition, label=labels[j.model_id])
        for j in iter_jobs(spec)
    ]
    keys = [j.key[:10] for j in iter_jobs(spec)]
    assert names == [f"model-wan-3.0_seed-1_{keys[0]}.mp4", f"model-seedance-2.5_{keys[1]}.mp4"]


def test_the_emulated_catalogs_commands_say_emulator() -> None:
    # After `models sync --emulator`, the README's `models --output image --search banana` listed
    # vace-fun alone, and three-models.yaml's `plan sweeps/three-models.yaml` said unknown model.
    root = Path(__file__).parent.parent
    for text in ((root / "README.md").read_text(), (root / "sweeps/three-models.yaml").read_text()):
        lines = re.findall(r"comfysweep (?:plan|run) sweeps/three-models\.yaml[^`\n]*", text)
        assert lines
        assert all("--emulator" in line for line in lines), lines
    assert (
        "add `--emulator` to\n`models`, `models show`, `plan` and `run`"
        in (root / "README.md").read_text()
    )


def test_the_report_puts_no_axis_the_model_already_decides_on_z() -> None:
    # `report done.yaml --x model --y lora` of wan (duration 2), seedance (4), vace-fun (none) put
    # duration on Z: each tab showed one model alone, the model axis all "no job" but one column.
    from orchestrator.report.view import Axis, Cell, View, choose_axes

    def axis(name: str, values: list[Any]) -> Axis:
        return Axis(name, values, [str(v) for v in values])

    def cell(at: list[int]) -> Cell:
        return Cell("k", "done", at, {}, None, None, None, None, None, None)

    axes = [axis("model", ["a", "b", "c"]), axis("duration", [2, 4, None]), axis("lora", [1, 2])]
    cells = [cell([m, m, lo]) for m in range(3) for lo in range(2)]
    view = View("s", axes, {}, cells, {}, {}, [], [])
    chosen = choose_axes(view, x="model", y="lora")
    assert (chosen.x, chosen.y, chosen.z) == ("model", "lora", None)
    chosen = choose_axes(view)
    assert (chosen.x, chosen.y, chosen.z) == ("model", "lora", None)
    assert choose_axes(view, z="duration").z == "duration"  # asked for: given


def test_the_readme_dataset_examples_first_prompt_is_the_one_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README said ds[0]["prompt"] is "a pencil drawing of a young lynx in tall reeds"; its own
    # spec and wildcard files give another (expansion is the same on every machine).
    use_catalog(monkeypatch, "google/nano-banana-2-lite/text-to-image")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```yaml\n# animals/animals.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards/animals.txt").write_text("fox\nheron\nlynx\notter\n")
    (tmp_path / "wildcards/places.txt").write_text("a birch forest\na frozen lake\ntall reeds\n")
    (tmp_path / "animals.yaml").write_text(block)
    first = next(iter(iter_jobs(load_spec(tmp_path / "animals.yaml"))))
    shown = re.search(r'ds\[0\]\["prompt"\]  # "([^"]+)"', readme)
    assert shown is not None
    assert first.inputs["prompt"] == shown.group(1)


def test_plan_of_several_models_says_plainly_where_its_total_comes_from(tmp_path: Path) -> None:
    # `plan three-models.yaml --emulator` ended "estimated cost: $1.39 (the sum of each model's
    # (see models))": a sentence cut short, and `models` is no line of plan's output.
    from orchestrator import budget, prices

    _emulated_cache()
    infos = {I2V_WAN: budget.Price(0.1, "second"), I2V_SEEDANCE: budget.Price(0.12, "second")}
    prices.remember_prices(infos, api_base="http://127.0.0.1:1/v1")
    spec = tmp_path / "two.yaml"
    spec.write_text(
        f"name: two\nmodel:\n  - {{id: {I2V_WAN}, map: {{image: image_url}}}}\n"
        f"  - {I2V_SEEDANCE}\n"
        "inputs: {prompt: a fox, image: 'https://example.com/a.png', duration: 5}\n"
    )
    out = CliRunner().invoke(cli, ["plan", str(spec), "--emulator"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("estimated cost:"))
    assert line.endswith("(the sum of the models' estimates above)"), line


def test_show_names_the_jobs_model() -> None:
    # `show 1202 three-models.yaml` told inputs, attempts and files, but not which of the three
    # models made the job.
    from orchestrator.viewtext import job_lines

    view = {
        "key": "k" * 64,
        "state": "done",
        "attempts_made": 1,
        "index": 2,
        "orphaned": False,
        "model": I2V_SEEDANCE,
        "request_id": "r",
        "cost_usd": 0.48,
        "rating": None,
        "error_text": None,
        "inputs": {"prompt": "a fox"},
        "attempts": [],
        "events": [],
        "files": [],
    }
    lines = job_lines(view)
    assert f"  model      {I2V_SEEDANCE}" in lines


def test_the_readme_glob_example_is_an_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's `image_urls: {glob: "refs/*.png", per_job: 3}` put under `inputs` (where a list
    # input's list goes) said "takes one value; to vary it, move it under axes or zip".
    from PIL import Image

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    shown = re.search(r"`(axes: \{image_urls: \{glob: [^`]+\}\})`", readme)
    assert shown is not None
    (tmp_path / "refs").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"refs/r{i}.png")
    spec = tmp_path / "g.yaml"
    spec.write_text(
        "model: google/nano-banana-2-lite/edit\ninputs: {prompt: blend}\n" + shown.group(1) + "\n"
    )
    use_catalog(monkeypatch, "google/nano-banana-2-lite/edit")
    assert len(list(iter_jobs(load_spec(spec)))) == 2


def test_plans_wall_time_note_is_readable(tmp_path: Path) -> None:
    # `plan lora.yaml --emulator` said "0m00s (0.402458 s a job (last median) x 1 rounds of 8)".
    from orchestrator import prices

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nmodel: community/wan-2-2/vace-fun\n"
        "inputs: {prompt: p, image: 'https://example.com/x.png'}\nrun: {output: out}\n"
    )
    prices.remember_duration("community/wan-2-2/vace-fun", 0.402458)
    guess = prices.estimate(load_spec(spec), 1)
    assert guess.time_note == "0.402 s a job (last median) x 1 round(s) of 8"


def test_the_readme_says_how_to_read_an_audio_export_without_torch(tmp_path: Path) -> None:
    # `load_dataset(DEST)` of an audio export fails with DatasetGenerationError (torchcodec) before
    # any cast_column; the README's way without torch must work.
    datasets = pytest.importorskip("datasets")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    shown = re.search(r'`datasets\.load_dataset\("json", data_files="DEST/metadata\.jsonl"', readme)
    assert shown is not None
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.wav").write_bytes(b"RIFF")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "data/a.wav", "tags": "lofi"}\n')
    files = str(tmp_path / "metadata.jsonl")
    ds = datasets.load_dataset("json", data_files=files, split="train")
    assert ds[0]["file_name"] == "data/a.wav"


def test_plan_after_an_axis_is_added_counts_the_new_jobs_as_left(tmp_path: Path) -> None:
    # README: "plan shows the new total and, once the sweep ran, what is left of it". After an
    # axis value was added, plan said "10 jobs" then "left: 0 of 6 job(s); 6 done" and "$0.00":
    # it counted the store's jobs of the old spec; the run then said "left: 4 of 10".
    from orchestrator.sweep import sweep_left

    from .sweeps import write_spec

    spec_path = write_spec(tmp_path)
    first = load_spec(spec_path)
    store = first.results_dir / STORE_FILE
    first.results_dir.mkdir(parents=True)
    with Store.open(store) as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(first), first.models)
    stamp = store.stat().st_mtime_ns
    spec_path.write_text(spec_path.read_text().replace("steps: [4, 8]", "steps: [4, 8, 12]"))
    left = sweep_left(load_spec(spec_path))
    assert left is not None
    assert (left.total, left.pending, left.done) == (6, 6, 0)
    assert store.stat().st_mtime_ns == stamp  # plan never writes to the sweep
    with Store.open(store, readonly=True) as db:
        assert sum(db.counts().values()) == 4


def test_an_export_of_a_lora_base_swept_without_loras_has_no_lora_label_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's animals dataset (a LoRA base, no lora in the spec) loaded with a lora_label
    # column of "none" in all 40 rows, and no lora column beside it.
    from orchestrator.emulator import Emulator, EmulatorConfig
    from orchestrator.emulator.catalog import emulated_catalog
    from orchestrator.sweep import Overrides, run_sweep

    t2i = "google/nano-banana-2-lite/text-to-image"
    monkeypatch.setitem(models_registry(), t2i, emulated_catalog()[t2i].model)
    spec = tmp_path / "a.yaml"
    spec.write_text(
        f"name: a\nmodel: {t2i}\naxes: {{prompt: [a fox, an owl]}}\n"
        f"run: {{output: {tmp_path / 'results'}, poll_interval: 0.02, rate: 1000}}\n"
    )
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(poll_interval=0.02)
        )
    assert report.complete
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", str(spec), str(out), "--format", "csv"])
    assert result.exit_code == 0, result.output
    header = (out / "metadata.csv").read_text().splitlines()[0].split(",")
    assert "prompt" in header
    assert "lora_label" not in header


def test_the_readme_says_where_run_emulator_keeps_its_ledger() -> None:
    # The "resumes after a kill without paying twice", checked with the emulator's ledger:
    # the README's ledger needs a standalone emulator; `run --emulator`'s was nowhere said.
    import inspect

    from orchestrator import sweep

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert 'state_path=spec.results_dir / ".emulator"' in inspect.getsource(sweep._backend)
    assert "cp results/quickstart/.emulator /tmp/ledger.jsonl" in readme
    assert "comfysweep emulator --state /tmp/ledger.jsonl --port 8199 &" in readme
