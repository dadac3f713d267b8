"""LoRAs as object-valued inputs: mappings in inputs, axes, include/exclude and zip; ``none``
leaves the field out; the LoRA path rule; one label everywhere a person reads the value."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import count_jobs, iter_jobs, load_spec, naming, objects
from orchestrator.canonical import job_key
from orchestrator.cli import cli
from orchestrator.errors import SpecError
from orchestrator.models import Model, _registry

BASE = "test/lora-base/text-to-image"
ENTRY = {
    "model_id": BASE,
    "display_name": "A LoRA base",
    "categories": ["text-to-image"],
    "input_schema": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
            "lora": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "scale": {"type": "float", "minimum": 0, "maximum": 2, "default": 1.0},
                },
                "required": ["path"],
            },
        },
        "required": ["prompt"],
    },
}


@pytest.fixture(autouse=True)
def lora_base(monkeypatch: pytest.MonkeyPatch) -> Model:
    """A LoRA base model known to get_model, as the catalog cache would make it known."""
    model = Model.from_catalog(ENTRY)
    monkeypatch.setitem(_registry(), BASE, model)
    return model


def spec_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "loras.yaml"
    path.write_text(f"model: {BASE}\ninputs:\n  prompt: a fox\n" + body)
    return path


AXIS = """\
axes:
  lora:
    - {path: my-style.safetensors}
    - {path: my-style.safetensors, scale: 0.5}
    - {path: "https://example.com/loras/ink-wash.safetensors?download=1", scale: 2}
    - none
    - null
"""


def test_an_axis_of_loras_sends_each_mapping_and_none_leaves_the_field_out(
    tmp_path: Path,
) -> None:
    spec = load_spec(spec_file(tmp_path, AXIS))
    count = count_jobs(spec)
    assert (count.jobs, count.duplicates) == (4, 1)  # none and null are one value
    jobs = list(iter_jobs(spec))
    assert [job.inputs.get("lora") for job in jobs] == [
        {"path": "my-style.safetensors", "scale": 1.0},
        {"path": "my-style.safetensors", "scale": 0.5},
        {"path": "https://example.com/loras/ink-wash.safetensors?download=1", "scale": 2.0},
        None,
    ]
    assert "lora" not in jobs[3].inputs
    bare = load_spec(spec_file(tmp_path, ""))
    (plain,) = iter_jobs(bare)
    assert jobs[3].key == plain.key == job_key(BASE, {"prompt": "a fox", "seed": 0})


def test_the_default_scale_is_part_of_the_value_so_both_spellings_are_one_job(
    tmp_path: Path,
) -> None:
    body = "axes:\n  lora: [{path: a.safetensors}, {path: a.safetensors, scale: 1}]\n"
    spec = load_spec(spec_file(tmp_path, body))
    assert (count_jobs(spec).jobs, count_jobs(spec).duplicates) == (1, 1)


def test_loras_in_inputs_include_exclude_and_zip(tmp_path: Path) -> None:
    body = """\
  lora: {path: base.safetensors, scale: 0.8}
axes:
  seed: [1, 2]
"""
    spec = load_spec(spec_file(tmp_path, body))
    assert {job.inputs["lora"]["path"] for job in iter_jobs(spec)} == {"base.safetensors"}

    body = """\
zip:
  - lora: [{path: a.safetensors}, none]
    seed: [1, 2]
include:
  - {seed: 3, lora: {path: c.safetensors, scale: 0.25}}
  - {seed: 4, lora: none}
exclude:
  - {lora: none}
"""
    spec = load_spec(spec_file(tmp_path, body))
    jobs = [(job.inputs["seed"], objects.label(job.inputs.get("lora"))) for job in iter_jobs(spec)]
    # The zip's second row is excluded; an include entry always runs, none there too.
    assert jobs == [(1, "a@1"), (3, "c@0.25"), (4, "none")]


def test_an_exclude_of_none_drops_the_jobs_without_the_field(tmp_path: Path) -> None:
    body = AXIS + "  seed: [1, 2]\nexclude:\n  - {lora: none, seed: 2}\n"
    spec = load_spec(spec_file(tmp_path, body))
    assert count_jobs(spec).jobs == 7
    assert len(list(iter_jobs(spec))) == 7


BAD = [
    ("axes:\n  lora: [{scale: 0.5}]\n", ":5:10: axes.lora[0]: path: required key missing"),
    ("axes:\n  lora: [{path: a.safetensors, scale: 3}]\n", "axes.lora[0]: scale: must be between"),
    ("axes:\n  lora: [{path: a.safetensors, scale: x}]\n", "scale: must be a number, got 'x'"),
    ("axes:\n  lora: [{path: a.safetensors, weight: 1}]\n", "weight: unknown key; allowed: path"),
    ("axes:\n  lora: [a.safetensors]\n", "axes.lora[0]: takes a mapping such as {path: my-style"),
    ("  lora: none\n", "inputs.lora: none leaves the field out; remove it from inputs instead"),
    ("axes:\n  prompt: [{path: a}]\n", "axes.prompt[0]: must be a single value"),
    ("  seed: {path: a}\n", "inputs.seed: takes one value"),
]
PATHS = ["http://example.com/a.safetensors", "s3://bucket/a.safetensors", "../x.safetensors"]
PATHS += ["/abs/path/a.safetensors", "", "dir/a.safetensors", "https://"]


@pytest.mark.parametrize(("body", "expected"), BAD)
def test_bad_lora_values_are_one_line_naming_the_field_and_key(
    tmp_path: Path, body: str, expected: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file(tmp_path, body))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "loras.yaml"))
    assert expected in message


@pytest.mark.parametrize("path", PATHS)
def test_a_lora_path_is_an_asset_name_or_an_https_url(tmp_path: Path, path: str) -> None:
    spec = spec_file(tmp_path, f'axes:\n  lora: [{{path: "{path}"}}]\n')
    result = CliRunner().invoke(cli, ["plan", str(spec)])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert "axes.lora[0]: path:" in line
    assert "neither a LoRA asset name" in line or "not a valid https URL" in line


def test_one_label_for_file_names_and_everywhere_else(tmp_path: Path) -> None:
    assert objects.label({"path": "my-style.safetensors", "scale": 0.5}) == "my-style@0.5"
    assert objects.label({"path": "https://x.org/l/ink.safetensors?dl=1"}) == "ink"
    assert objects.label(None) == objects.label(objects.ABSENT) == "none"
    assert objects.label({"path": "a.safetensors", "scale": 1.0, "rank": 8}) == "a@1,rank=8"
    spec = load_spec(spec_file(tmp_path, AXIS))
    names = [naming.render_output_name(spec, job, ext=".png") for job in iter_jobs(spec)]
    assert [n.rsplit("_", 1)[0] for n in names] == [
        "lora-my-style@1",
        "lora-my-style@0.5",
        "lora-ink-wash@2",
        "lora-none",
    ]
    named = spec_file(tmp_path, AXIS + "run:\n  filename: '{lora}/{key}'\n")
    names = [naming.render_output_name(load_spec(named), j, ext=".png") for j in iter_jobs(spec)]
    assert [n.split("/")[0] for n in names] == ["my-style@1", "my-style@0.5", "ink-wash@2", "none"]


def test_normalise_object_without_a_schema_of_keys_keeps_the_mapping() -> None:
    assert objects.normalise_object({"type": "object"}, {"a": 1}) == {"a": 1}
    with pytest.raises(objects.ObjectProblem, match="takes a mapping"):
        objects.normalise_object({"type": "object"}, [1])


def test_the_model_checks_an_object_input_as_the_server_would(lora_base: Model) -> None:
    """The emulator's 422 and the runner's checks go through Model.problems and complete."""
    assert lora_base.problems({"prompt": "x", "lora": {"path": "a.safetensors"}}) == []
    (problem,) = lora_base.problems({"prompt": "x", "lora": {"path": "a", "scale": 5}})
    assert str(problem) == "lora: scale: must be between 0 and 2, got 5"
    (problem,) = lora_base.problems({"prompt": "x", "lora": {"path": "../up.safetensors"}})
    assert str(problem).startswith("lora: path: '../up.safetensors' is neither a LoRA asset name")
    done = lora_base.complete({"prompt": "x", "lora": {"path": "a.safetensors"}})
    assert done["lora"] == {"path": "a.safetensors", "scale": 1.0}


LORA_VACE = "test/vace-fun-lora"
LORA_SHOWN = 'my-style@0.5 {"path":"my-style.safetensors","scale":0.5}'


def _forget_emulated_catalog() -> None:
    """The emulator's catalog, where it is cached, is built again: with the model registered."""
    from orchestrator.emulator import catalog

    built = getattr(catalog, "emulated_catalog", None)
    clear = getattr(built, "cache_clear", None)
    if clear is not None:
        clear()


EMULATED_BASE = "wan-ai/wan-3.0/image-to-video"  # a LoRA base of the emulated catalog


@pytest.fixture
def served_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A LoRA base the emulator serves and the spec knows: (its id, its inputs as YAML).

    The emulated catalog's own LoRA base where the emulator has one (known to the spec here as
    the catalog cache would make it known); else vace-fun's schema plus a lora input, registered
    before the emulator starts, which serves every registered model."""
    from orchestrator.emulator import catalog

    offers = getattr(catalog, "emulated_catalog", None)
    offer = offers().get(EMULATED_BASE) if offers is not None else None
    if offer is not None:
        monkeypatch.setitem(_registry(), EMULATED_BASE, offer.model)
        yield EMULATED_BASE, "  prompt: a fox\n  image_url: https://example.com/fox.png\n"
        return
    vace = _registry()["community/wan-2-2/vace-fun"]
    lora = ENTRY["input_schema"]["properties"]["lora"]  # type: ignore[index]
    schema = dict(vace.input_schema)
    schema["properties"] = {**vace.input_schema["properties"], "lora": lora}
    model = Model(
        model_id=LORA_VACE,
        input_schema=schema,
        output_schema=vace.output_schema,
        friendly_names=vace.friendly_names,
        media_inputs=vace.media_inputs,
    )
    monkeypatch.setitem(_registry(), LORA_VACE, model)
    _forget_emulated_catalog()
    yield LORA_VACE, "  prompt: a fox\n  image: https://example.com/fox.png\n"
    monkeypatch.undo()
    _forget_emulated_catalog()


RUN = """\
name: loras
model: {model}
inputs:
{inputs}axes:
  lora:
    - {{path: my-style.safetensors, scale: 0.5}}
    - {{path: "https://h.example/ink.safetensors"}}
    - none
run:
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""


def test_a_lora_sweep_runs_and_every_view_names_each_lora_by_its_label(
    tmp_path: Path, served_base: tuple[str, str]
) -> None:
    from orchestrator.emulator import Emulator, EmulatorConfig
    from orchestrator.sweep import Overrides, run_sweep

    spec = tmp_path / "loras.yaml"
    model, inputs = served_base
    spec.write_text(RUN.format(model=model, inputs=inputs, output=tmp_path / "results"))
    with Emulator(EmulatorConfig(speed=2000.0, workers=3)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(poll_interval=0.02)
        )
        ledger = emu.ledger()
    assert report.complete
    assert len(ledger["jobs"]) == 3
    folder = tmp_path / "results" / "loras"
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    names = sorted(e["outputs"][0]["path"].split("_")[0] for e in entries)
    assert names == ["lora-ink@1", "lora-my-style@0.5", "lora-none"]
    assert sorted(str(e["inputs"].get("lora")) for e in entries)[0].startswith("None")

    runner = CliRunner()
    key = next(e["key"] for e in entries if e["inputs"].get("lora", {}).get("scale") == 0.5)
    shown = runner.invoke(cli, ["show", key[:12], str(spec)], catch_exceptions=False).output
    assert "  lora  " in shown
    assert shown.split("  lora  ")[1].split("\n")[0].strip() == LORA_SHOWN

    out = tmp_path / "export"
    args = ["export", str(spec), str(out), "--format", "csv"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = (out / "metadata.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert sorted(r["lora_label"] for r in rows) == ["ink@1", "my-style@0.5", "none"]
    assert {r["lora"] for r in rows} >= {'{"path": "my-style.safetensors", "scale": 0.5}'}

    result = runner.invoke(cli, ["report", str(spec)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (folder / "report.html").read_text()
    # The axis labels (and so the tiles' hover text): the report calls an absent input (none).
    assert '"labels":["my-style@0.5","ink@1","(none)"]' in page


def test_plan_shows_each_lora_by_its_label(tmp_path: Path) -> None:
    body = "axes:\n  lora: [none, {path: my-style.safetensors, scale: 0.5}]\n"
    result = CliRunner().invoke(cli, ["plan", str(spec_file(tmp_path, body))])
    assert result.exit_code == 0, result.output
    rows = [line.split("│") for line in result.output.splitlines() if "│" in line]
    assert [r[3].strip() for r in rows] == ["none", "my-style@0.5"]
    fixed = spec_file(tmp_path, "  lora: {path: a.safetensors, scale: 0.25}\n")
    result = CliRunner().invoke(cli, ["plan", str(fixed)])
    assert "fixed: seed=0, prompt=a fox, lora=a@0.25\n" in result.output


def test_none_cannot_leave_out_a_required_object_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = {**ENTRY["input_schema"], "required": ["prompt", "lora"]}  # type: ignore[dict-item]
    monkeypatch.setitem(_registry(), BASE, Model.from_catalog({**ENTRY, "input_schema": schema}))
    with pytest.raises(SpecError, match=r"axes.lora\[1\]: none would leave out a required input"):
        load_spec(spec_file(tmp_path, "axes:\n  lora: [{path: a.safetensors}, none]\n"))


def test_an_exclude_of_none_matches_a_spec_that_never_sets_the_field(tmp_path: Path) -> None:
    body = "axes:\n  seed: [1, 2]\nexclude:\n  - {lora: none, seed: 2}\n"
    spec = load_spec(spec_file(tmp_path, body))
    assert count_jobs(spec).jobs == 1
    assert [job.inputs["seed"] for job in iter_jobs(spec)] == [1]


def test_a_jsonl_table_gives_loras_per_row_and_null_leaves_it_out(tmp_path: Path) -> None:
    rows = [
        {"seed": 1, "lora": {"path": "a.safetensors", "scale": 0.5}},
        {"seed": 2, "lora": None},
        {"seed": 3, "lora": "none"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = load_spec(spec_file(tmp_path, "zip:\n  - {file: rows.jsonl}\n"))
    shown = [(j.inputs["seed"], objects.label(j.inputs.get("lora"))) for j in iter_jobs(spec)]
    assert shown == [(1, "a@0.5"), (2, "none"), (3, "none")]
    (tmp_path / "rows.jsonl").write_text(json.dumps({"seed": 1, "lora": {"path": "/x"}}) + "\n")
    with pytest.raises(SpecError, match=r"^rows.jsonl:1: lora: path: '/x' is neither"):
        load_spec(spec_file(tmp_path, "zip:\n  - {file: rows.jsonl}\n"))
