"""Several models in one sweep: the model axis, common names mapped onto each model's fields,
each model's own inputs and axes, and the one-line errors of a bad list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import budget, count_jobs, drift, iter_jobs, load_spec
from orchestrator.canonical import job_key
from orchestrator.cli import cli
from orchestrator.errors import SpecError
from orchestrator.models import get_model
from orchestrator.naming import render_output_name
from orchestrator.plan import plan_summary
from tests.catalog_models import I2V_SEEDANCE, I2V_WAN, T2V_SEEDANCE, use_catalog

VACE = "community/wan-2-2/vace-fun"
URL = "https://example.com/a.png"
THREE = f"""\
name: three
model:
  - {{id: {I2V_WAN}, map: {{image: image_url}}, inputs: {{image: {URL}}},
     axes: {{resolution: [480p, 720p]}}}}
  - {{id: {I2V_SEEDANCE}, inputs: {{image: {URL}}}}}
  - id: {T2V_SEEDANCE}
    inputs: {{aspect_ratio: "1:1"}}
inputs:
  prompt: a fox runs
axes:
  duration: [5, 6]
"""
TWO = f"""\
name: two
model:
  - {{id: {I2V_WAN}, map: {{image: image_url}}, axes: {{resolution: [480p, 720p]}}}}
  - {I2V_SEEDANCE}
inputs:
  prompt: a fox runs
  image: {URL}
axes:
  duration: [5, 6]
"""


@pytest.fixture(autouse=True)
def catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    use_catalog(monkeypatch, I2V_WAN, I2V_SEEDANCE, T2V_SEEDANCE)


def write(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def test_each_model_gets_its_own_fields_defaults_and_keys(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, THREE))
    jobs = list(iter_jobs(spec))
    assert spec.models == (I2V_WAN, I2V_SEEDANCE, T2V_SEEDANCE)
    assert [j.model_id for j in jobs] == [I2V_WAN] * 4 + [I2V_SEEDANCE] * 2 + [T2V_SEEDANCE] * 2
    assert [j.index for j in jobs] == list(range(8))
    wan, seedance, t2v = jobs[0], jobs[4], jobs[6]
    # The wan model's own axis and its own defaults; seedance's defaults are its own.
    assert {j.inputs["resolution"] for j in jobs[:4]} == {"480p", "720p"}
    assert wan.inputs["prompt_extend"] is True
    assert "resolution" not in seedance.inputs
    assert seedance.inputs["generate_audio"] is True
    assert "enable_audio" not in seedance.inputs
    assert t2v.inputs["aspect_ratio"] == "1:1"  # its own input, its jobs only
    assert "aspect_ratio" not in seedance.inputs
    for job in jobs:
        assert job.key == job_key(job.model_id, job.inputs, job.repeat)
    count = count_jobs(spec)
    assert count.jobs == 8
    assert count.axes == {"model": 3, "duration": 2, "resolution": 2}


def test_a_common_name_maps_onto_each_models_field(tmp_path: Path) -> None:
    text = TWO
    spec = load_spec(write(tmp_path, text))
    jobs = list(iter_jobs(spec))
    assert jobs[0].inputs["image_url"] == "https://example.com/a.png"
    assert "image" not in jobs[0].inputs
    assert jobs[-1].inputs["image"] == "https://example.com/a.png"
    # Shown by the common name, on both models.
    assert jobs[0].friendly()["image"] == jobs[-1].friendly()["image"]


def test_a_single_model_spec_keeps_its_keys(tmp_path: Path) -> None:
    """The keys of an existing one-model spec do not move (the store's done jobs stay done)."""
    text = f"model: {VACE}\ninputs: {{prompt: a fox, image: https://x.io/a.png}}\n"
    text += "axes: {seed: [1, 2]}\n"
    spec = load_spec(write(tmp_path, text))
    assert not spec.parts
    assert spec.models == (VACE,)
    keys = [j.key for j in iter_jobs(spec)]
    expected = [job_key(VACE, j.inputs, 0) for j in iter_jobs(spec)]
    assert keys == expected
    # The same spec as a list of one model: the same keys.
    listed = load_spec(write(tmp_path, text.replace(f"model: {VACE}", f"model: [{VACE}]")))
    assert [j.key for j in iter_jobs(listed)] == keys


def test_names_carry_the_model_label_and_common_names(tmp_path: Path) -> None:
    text = TWO
    spec = load_spec(write(tmp_path, text))
    assert spec.filename == "model-{model}_duration-{duration}_resolution-{resolution}_{key}"
    assert [p.label for p in spec.parts] == ["wan-3.0", "seedance-2.5"]
    three = load_spec(write(tmp_path, THREE))
    labels = ["wan-3.0", "seedance-2.5-image-to-video", "seedance-2.5-text-to-video"]
    assert [p.label for p in three.parts] == labels
    jobs = list(iter_jobs(spec))
    names = [
        render_output_name(spec, j, ext="mp4", model=j.definition, label=p.label)
        for j, p in zip(jobs, [spec.parts[0]] * 4 + [spec.parts[1]] * 2, strict=True)
    ]
    assert names[0].startswith("model-wan-3.0_duration-5_resolution-480p_")
    assert names[4] == f"model-seedance-2.5_duration-5_{jobs[4].key[:10]}.mp4"  # no resolution
    given = text + "run: {filename: '{model}/{image}-{duration}-{resolution}'}\n"
    spec = load_spec(write(tmp_path, given))
    job = next(iter_jobs(spec))
    label = spec.parts[0].label
    assert render_output_name(spec, job, ext="mp4", model=job.definition, label=label) == (
        "wan-3.0/a-5-480p.mp4"
    )


def test_include_and_exclude_name_a_model(tmp_path: Path) -> None:
    text = TWO
    text += "exclude:\n  - {model: seedance-2.5, duration: 6}\ninclude:\n"
    text += f"  - {{model: {I2V_WAN}, duration: 9, resolution: 1080p}}\n"
    spec = load_spec(write(tmp_path, text))
    jobs = list(iter_jobs(spec))
    seeds = [(j.model_id, j.inputs["duration"]) for j in jobs]
    assert seeds.count((I2V_SEEDANCE, 6)) == 0
    assert (I2V_SEEDANCE, 5) in seeds
    assert (I2V_WAN, 6) in seeds
    assert (I2V_WAN, 9) in seeds
    assert count_jobs(spec).jobs == len(jobs) == 4 + 1 + 1


def test_breadth_order_gives_every_model_its_first_jobs_first(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, THREE))
    jobs = sorted(iter_jobs(spec), key=lambda j: j.rank or 0)
    assert {j.model_id for j in jobs[:3]} == set(spec.models)
    assert len({j.rank for j in jobs}) == len(jobs)


def test_plan_shows_jobs_and_cost_per_model(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, THREE))
    summary = plan_summary(spec)
    assert summary["model"] == I2V_WAN  # the old key: the first model
    per = {m["model"]: m for m in summary["models"]}
    assert [m["model"] for m in summary["models"]] == list(spec.models)
    assert per[I2V_WAN]["jobs"] == 4
    assert per[T2V_SEEDANCE]["jobs"] == 2
    assert per[I2V_WAN]["label"] == "wan-3.0"
    assert "model" in summary["varying"]
    assert summary["first_jobs"][0]["model"] == I2V_WAN
    result = CliRunner().invoke(cli, ["plan", str(spec.path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [m["jobs"] for m in data["models"]] == [4, 2, 2]
    shown = CliRunner().invoke(cli, ["plan", str(spec.path)])
    assert shown.exit_code == 0, shown.output
    assert f"{T2V_SEEDANCE}: 2 job(s), cost unknown; axes: duration (2)" in shown.output
    # Each model's axes on its own line: "model (3) x duration (2) x resolution (2)" read as 12.
    assert f"{I2V_WAN}: 4 job(s), cost unknown; axes: duration (2) x resolution (2)" in (
        shown.output
    )
    assert "axes: model (3), each model's own on its line above" in shown.output
    # Seedance has no resolution: its rows show a dash there, not "none" (a LoRA left out).
    rows = [line for line in shown.output.splitlines() if "│" in line]
    row = next(line for line in rows if "bytedance/seedance" in line)
    assert row.split("│")[-2].strip() == "-"


# (case, spec text, the exact tail of the one-line error after "<file>:")
BAD = [
    (
        "a field one model lacks",
        TWO.replace("  image:", "  image_url:"),
        r":7:3: inputs.image_url: bytedance/seedance-2.5/image-to-video/1080p has no input "
        r"'image_url' \(did you mean 'image'\?\); map it \(map: \{image_url: <its field>\} under "
        r"that model\) or move 'image_url' into the own inputs/axes of the models that have it$",
    ),
    (
        "an include entry with a field one model lacks",
        TWO + "include:\n  - {duration: 9, resolution: 1080p}\n",
        r":11:19: include\[0\].resolution: bytedance/seedance-2.5/image-to-video/1080p has no "
        r"input 'resolution'; map it \(map: \{resolution: <its field>\} under that model\) or "
        r"name the model this entry is for \(model: <id or label>\)$",
    ),
    (
        "an unknown model",
        THREE.replace(T2V_SEEDANCE, "bytedance/seedance-2.5/text-to-vide/1080p"),
        r":6:9: model\[2\].id: unknown model 'bytedance/seedance-2.5/text-to-vide/1080p' "
        r"\(did you mean 'bytedance/seedance-2.5/text-to-video/1080p', "
        r"'bytedance/seedance-2.5/image-to-video/1080p'\?\): .*run `comfysweep models sync`"
        r" \(or set schema: server to skip local validation\)$",
    ),
    (
        "a model listed twice",
        THREE.replace(f"id: {I2V_SEEDANCE}", f"id: {I2V_WAN}"),
        r":5:5: model\[1\]: wan-ai/wan-3.0/image-to-video is listed twice \(first at "
        r"model\[0\]\); list a model once and vary its inputs with axes \(its own, for that "
        r"model only\)$",
    ),
    (
        "a map onto a field the model lacks",
        THREE.replace("map: {image: image_url}", "map: {image: image_uri}"),
        r":3:54: model\[0\].map.image: wan-ai/wan-3.0/image-to-video has no input 'image_uri' "
        r"\(did you mean 'image_url'\?\); inputs: prompt, ",
    ),
    (
        "a map whose name is another field",
        THREE.replace("map: {image: image_url}", "map: {prompt: image_url}"),
        r":3:47: model\[0\].map.prompt: 'prompt' already names wan-ai/wan-3.0/image-to-video's "
        r"input 'prompt'; map another common name onto 'image_url'$",
    ),
    (
        "a common name of different kinds",
        TWO.replace("map: {image: image_url}", "map: {image: prompt}").replace(
            "  prompt: a fox runs\n", ""
        ),
        r":6:3: inputs.image: means different kinds of input \(non-media on "
        r"wan-ai/wan-3.0/image-to-video, image on bytedance/seedance-2.5/image-to-video/1080p\); "
        r"give each model its own value in its own inputs or axes$",
    ),
    (
        "a required field missing on one model",
        TWO.replace("map: {image: image_url}, ", "").replace(f"  image: {URL}\n", ""),
        r":3:5: model\[0\]: image_url: required input of wan-ai/wan-3.0/image-to-video missing; "
        r"add it to inputs \(or to this model's own inputs\)$",
    ),
    (
        "an unknown key in a model entry",
        THREE.replace("map: {image", "mapping: {image"),
        r":3:41: model\[0\].mapping: unknown key \(did you mean 'map'\?\); allowed: id, map, "
        r"inputs, axes$",
    ),
    (
        "an exclude naming no model of the sweep",
        THREE + "exclude:\n  - {model: veo, duration: 5}\n",
        r":13:13: exclude\[0\].model: not a model of this sweep; models: ",
    ),
    (
        "a template that cannot tell models apart",
        THREE + "run: {filename: '{duration}-{resolution}-{aspect_ratio}'}\n",
        r":12:17: run.filename: names would repeat across models: add \{model\} or \{key\}$",
    ),
]


@pytest.mark.parametrize(("case", "text", "tail"), BAD, ids=[b[0] for b in BAD])
def test_bad_model_lists_are_one_line(tmp_path: Path, case: str, text: str, tail: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    import re

    assert re.search(tail, message[len(str(path)) :]), message


def test_each_job_is_reserved_at_its_own_models_price(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store hands the estimator a job's inputs: the models those fit price it, the highest
    estimate wins (a reservation is never below the job's own), a model without a price makes
    it unknown."""
    t2i, t2v = use_catalog(monkeypatch, "google/nano-banana-2-lite/text-to-image", T2V_SEEDANCE)
    vace = get_model(VACE)
    per_second = budget.Price(0.05, "second", "test")
    priced = [(vace, per_second), (t2i, budget.Price(0.1, "output", "test"))]
    priced.append((t2v, budget.Price(0.5, "output", "test")))
    estimate = budget.several_estimator(priced)
    vace_job = vace.complete({"prompt": "a", "image": "https://x.io/a.png"})
    assert estimate(vace_job) == pytest.approx(0.05 * 81 / 16)
    assert estimate(t2v.complete({"prompt": "a"})) == 0.5
    # A text-to-image input fits the text-to-video schema too: reserved at the higher price.
    assert estimate(t2i.complete({"prompt": "a"})) == 0.5
    unpriced = budget.several_estimator([(vace, per_second), (t2v, None)])
    assert unpriced(t2v.complete({"prompt": "a"})) is None
    assert unpriced(vace_job) == pytest.approx(0.05 * 81 / 16)


def test_defaults_are_recorded_and_checked_per_model(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, THREE))
    meta = drift.current_defaults(spec)
    assert meta["model"] == I2V_WAN
    assert set(meta["models"]) == set(spec.models)
    assert meta["names"] == {I2V_WAN: {"image": "image_url"}}
    # A store of the first model alone (before the list): its defaults are the first's.
    single = {"model": I2V_WAN, "values": meta["models"][I2V_WAN]}
    assert drift.recorded(single, None, spec) == {I2V_WAN: meta["models"][I2V_WAN]}
    # One model's default changed since: a guard for that model's jobs only.
    old = dict(meta["models"])
    old[T2V_SEEDANCE] = old[T2V_SEEDANCE] | {"generate_audio": False}
    guard = drift.DefaultsDrift.between(spec, old)
    assert isinstance(guard, drift.SeveralDrift)
    assert set(guard.guards) == {T2V_SEEDANCE}
    jobs = list(iter_jobs(spec))
    assert all(guard.twin(j) is None for j in jobs if j.model_id != T2V_SEEDANCE)
    twin = guard.twin(jobs[-1])
    assert twin == job_key(T2V_SEEDANCE, jobs[-1].inputs | {"generate_audio": False}, 0)


def test_the_example_sweeps_three_models() -> None:
    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "three-models.yaml")
    assert spec.models == (I2V_WAN, I2V_SEEDANCE, VACE)
    assert [p.label for p in spec.parts] == ["wan-3.0", "seedance-2.5", "wan-2-2"]
    assert count_jobs(spec).jobs == 5
    jobs = list(iter_jobs(spec))
    assert jobs[0].inputs["image_url"].startswith("data:image/png;base64,")
    assert jobs[2].inputs["image"] == jobs[0].inputs["image_url"]
    assert {j.sources.get("image_url") or j.sources.get("image") for j in jobs} != {None}


def test_run_flags_reach_every_model(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, THREE)).with_run(order="shuffle", concurrency=2)
    assert {part.run.order for part in spec.parts} == {"shuffle"}
    ranks = sorted(j.rank for j in iter_jobs(spec))
    assert ranks == list(range(8))  # one permutation of the whole sweep


def test_a_bad_model_list_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, TWO.replace("  image:", "  image_url:"))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {path}:7:3: inputs.image_url: {I2V_SEEDANCE} has no input")
    assert not (tmp_path / "results").exists()
