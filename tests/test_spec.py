from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import count_jobs, iter_jobs, load_spec
from orchestrator.cli import cli
from orchestrator.errors import SpecError
from orchestrator.sources import MAX_MEDIA_BYTES, random_seeds, span
from tests.catalog_models import catalog_ids, use_catalog

PNG = Path(__file__).resolve().parents[1] / "sweeps" / "start.png"
HEAD = """\
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox
  image: https://example.com/a.png
"""


def write(folder: Path, text: str, files: dict[str, bytes | str] | None = None) -> Path:
    """A spec file (and the files beside it) in ``folder``."""
    for name, content in (files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


# (case, spec text, files beside it, the exact tail of the one-line error after "<file>:")
BAD: list[tuple[str, str, dict[str, bytes | str], str]] = [
    (
        "yaml syntax",
        HEAD + "axes:\n  steps: [8, 12\n",
        {},
        r":7:1: YAML syntax error: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "unknown top-level key",
        HEAD + "axs:\n  steps: [8]\n",
        {},
        r":5:1: axs: unknown key \(did you mean 'axes'\?\); allowed: name, model, ",
    ),
    (
        "unknown input",
        HEAD + "axes:\n  stepz: [8]\n",
        {},
        r":6:3: axes.stepz: unknown input \(did you mean 'steps'\?\); inputs: prompt, image, ",
    ),
    (
        "unknown run key",
        HEAD + "run:\n  concurency: 3\n",
        {},
        r":6:3: run.concurency: unknown key \(did you mean 'concurrency'\?\); allowed: ",
    ),
    (
        "wrong type in an axis",
        HEAD + "axes:\n  steps: [8, 12.5]\n",
        {},
        r":6:14: axes.steps\[1\]: must be a whole number, got 12.5$",
    ),
    (
        "wrong type of a run setting",
        HEAD + "run:\n  concurrency: eight\n",
        {},
        r":6:16: run.concurrency: must be a whole number, got 'eight'$",
    ),
    (
        "out of range",
        HEAD + "axes:\n  cfg: {start: 2.0, stop: 12.0, step: 5.0}\n",
        {},
        r":6:8: axes.cfg: must be between 0 and 10, got 12.0$",
    ),
    (
        "out of range in inputs",
        HEAD + "  fps: 60\n",
        {},
        r":5:8: inputs.fps: must be between 12 and 24, got 60$",
    ),
    (
        "not in the enum",
        HEAD + "  resolution: 480x480\n",
        {},
        r":5:15: inputs.resolution: '480x480' is not allowed \(did you mean '480x480 \(1:1\)'\?\); "
        r"allowed: '480x480 \(1:1\)', ",
    ),
    ("empty axis", HEAD + "axes:\n  steps: []\n", {}, r":6:10: axes.steps: empty axis; "),
    (
        "unknown model",
        "model: community/wan-2-2/vace-fan\ninputs: {prompt: a, image: https://x.io/a.png}\n",
        {},
        r":1:8: model: unknown model 'community/wan-2-2/vace-fan' \(did you mean "
        r"'community/wan-2-2/vace-fun'\?\): no model catalog cached for model-api.runcomfy.net "
        r"yet; set RUNCOMFY_API_TOKEN and run `comfysweep models sync`",
    ),
    (
        "prompt file with no lines",
        "model: community/wan-2-2/vace-fun\ninputs: {image: https://x.io/a.png}\n"
        "axes:\n  prompt: {file: prompts.txt}\n",
        {"prompts.txt": "\n  \n"},
        r":4:11: axes.prompt: prompts.txt has no lines; put one value on each line$",
    ),
    (
        "image file missing",
        "model: community/wan-2-2/vace-fun\ninputs: {prompt: a, image: gone.png}\n",
        {},
        r":2:28: inputs.image: image file not found: gone.png; ",
    ),
    (
        "image file too big",
        "model: community/wan-2-2/vace-fun\ninputs: {prompt: a, image: big.png}\n",
        {"big.png": b"\0" * (MAX_MEDIA_BYTES["image"] + 1)},
        r":2:28: inputs.image: big.png is 6.0 MiB, above the 6 MiB limit for a data: URI image; "
        r"host it at a public https URL instead$",
    ),
    (
        "zip lists differ in length",
        "model: community/wan-2-2/vace-fun\ninputs: {image: https://x.io/a.png}\n"
        "zip:\n  - prompt: [a, b, c]\n    seed: [1, 2]\n",
        {},
        r":4:5: zip\[0\]: lists differ in length: prompt has 3, seed has 2; make them equal$",
    ),
    (
        "template with an unknown field",
        HEAD + "axes:\n  seed: [1, 2]\nrun:\n  filename: '{seed}_{sead}.mp4'\n",
        {},
        r":8:13: run.filename: unknown field \{sead\}; allowed: prompt, image, resolution, ",
    ),
    (
        "template that does not tell jobs apart",
        HEAD + "axes:\n  seed: [1, 2]\n  steps: [4, 8]\nrun:\n  filename: 'seed-{seed}.mp4'\n",
        {},
        r"run.filename: names would repeat across jobs: add \{key\} or \{steps\}",
    ),
    (
        "template climbing out",
        HEAD + "axes:\n  seed: [1, 2]\nrun:\n  filename: '../{seed}.mp4'\n",
        {},
        r"run.filename: must not contain '\.\.' or '\.' folders$",
    ),
    (
        "template format that does not fit",
        HEAD + "axes:\n  seed: [1, 2]\nrun:\n  filename: '{seed}_{prompt:d}'\n",
        {},
        r"run.filename: \{prompt:d\}: format does not suit 'a fox'$",
    ),
    (
        "duplicate key",
        HEAD + "axes:\n  seed: [1]\n  seed: [2]\n",
        {},
        r":7:3: axes.seed: duplicate key; give each key once$",
    ),
    (
        "field in an axis and a zip group",
        "model: community/wan-2-2/vace-fun\ninputs: {image: https://x.io/a.png}\n"
        "zip:\n  - {prompt: [a, b], seed: [1, 2]}\naxes:\n  seed: [3]\n",
        {},
        r":6:9: axes.seed: seed already varies in zip\[0\]; a field may vary in one place$",
    ),
    (
        "friendly and raw name of one input",
        HEAD + "  56_text: another\n",
        {},
        r":5:3: inputs.56_text: names the same input as 'prompt'; give it once$",
    ),
    (
        "required input missing",
        "model: community/wan-2-2/vace-fun\ninputs: {image: https://x.io/a.png}\n",
        {},
        r":2:9: inputs: prompt: required input missing; add it to inputs$",
    ),
    (
        "a list in inputs",
        HEAD + "  seed: [1, 2]\n",
        {},
        r":5:9: inputs.seed: takes one value; to vary it, move it under axes or zip$",
    ),
    (
        "unknown value source",
        HEAD + "axes:\n  cfg: {start: 1, stop: 3, stepp: 1}\n",
        {},
        r":6:28: axes.cfg.stepp: unknown key \(did you mean 'step'\?\); ",
    ),
    (
        "a step of zero",
        HEAD + "axes:\n  cfg: {start: 1, stop: 3, step: 0}\n",
        {},
        r":6:8: axes.cfg: step must not be 0$",
    ),
    (
        "a scalar axis",
        HEAD + "axes:\n  steps: 8\n",
        {},
        r":6:10: axes.steps: must be a list, \{start, stop, step\}, \{count, from\}, ",
    ),
    (
        "glob that matches nothing",
        "model: community/wan-2-2/vace-fun\ninputs: {prompt: a}\naxes:\n"
        "  image: {glob: 'pics/*.png'}\n",
        {},
        r":4:10: axes.image: no files match 'pics/\*.png' in ",
    ),
    (
        "spec that is not a mapping",
        "- model: x\n",
        {},
        r":1:1: the spec must be a mapping of keys",
    ),
    (
        "bad folder name",
        "name: ../up\n" + HEAD,
        {},
        r":1:7: name: must be a folder name: letters, digits, '\.', '_' and '-', got '\.\./up'$",
    ),
    (
        "zero repeat",
        HEAD + "repeat: 0\n",
        {},
        r":5:9: repeat: must be at least 1, got 0$",
    ),
]

DATA_FILE_BAD: list[tuple[str, dict[str, bytes | str], str]] = [
    (
        "csv cell of the wrong type",
        {"rows.csv": "prompt,steps\na,8\nb,eight\n"},
        r"^rows\.csv:3: steps: must be a whole number, got 'eight'$",
    ),
    (
        "csv cell out of range",
        {"rows.csv": "prompt,steps\na,8\nb,99\n"},
        r"^rows\.csv:3: steps: must be between 2 and 40, got 99$",
    ),
    (
        "csv unknown column",
        {"rows.csv": "prompt,stepz\na,8\n"},
        r"^rows\.csv:1: stepz: unknown input \(did you mean 'steps'\?\)$",
    ),
    (
        "csv row of the wrong width",
        {"rows.csv": "prompt,steps\na,8,9\n"},
        r"^rows\.csv:2: file: has 3 cells, the header has 2$",
    ),
    (
        "jsonl line that is not JSON",
        {"rows.jsonl": '{"prompt": "a", "steps": 8}\n{"prompt": \n'},
        r"^rows\.jsonl:2: file: not JSON: ",
    ),
    (
        "image missing in a csv row",
        {"rows.csv": "prompt,image\na,gone.png\n"},
        r"^rows\.csv:2: image: image file not found: gone\.png; ",
    ),
]


@pytest.mark.parametrize(("case", "text", "files", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_one_line_naming_file_and_place(
    tmp_path: Path, case: str, text: str, files: dict[str, bytes | str], expected: str
) -> None:
    path = write(tmp_path, text, files)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message, case
    assert message.startswith(f"{path}:"), message
    assert re.search(expected, message[len(str(path)) :]), message
    assert_cli_error(path, message)


@pytest.mark.parametrize(
    ("case", "files", "expected"), DATA_FILE_BAD, ids=[b[0] for b in DATA_FILE_BAD]
)
def test_bad_data_file_names_its_line(
    tmp_path: Path, case: str, files: dict[str, bytes | str], expected: str
) -> None:
    table = next(iter(files))
    text = f"model: community/wan-2-2/vace-fun\ninputs: {{image: {PNG}}}\n"
    text += f"zip:\n  - {{file: {table}}}\n"
    if "image" in case:
        text = "model: community/wan-2-2/vace-fun\nzip:\n  - {file: rows.csv}\n"
    path = write(tmp_path, text, files)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert re.search(expected, str(caught.value)), str(caught.value)
    assert_cli_error(path, str(caught.value))


def assert_cli_error(path: Path, message: str) -> None:
    """The CLI shows the same error as one stderr line and exits 1, with no traceback."""
    result = CliRunner().invoke(cli, ["plan", str(path)], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"Error: {message}"]


def test_missing_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml: no such spec file$"):
        load_spec(path)
    assert_cli_error(path, f"{path}: no such spec file")


def test_empty_spec_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    with pytest.raises(SpecError, match="empty spec; it needs at least model and inputs"):
        load_spec(path)


def test_inputs_only_is_one_job_with_defaults_and_run_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD))
    assert spec.name == "sweep"  # the file's stem when the spec gives no name
    assert spec.model == "community/wan-2-2/vace-fun"
    assert spec.base_dir == tmp_path.resolve()
    assert spec.run.concurrency == 8
    assert spec.run.max_cost is None
    assert spec.run.downloads == 4
    assert spec.run.poll_interval == 2.0
    assert spec.results_dir == tmp_path.resolve() / "results" / "sweep"
    assert count_jobs(spec).jobs == 1
    (job,) = iter_jobs(spec)
    assert job.inputs["108_cfg"] == 3.5
    assert job.inputs["56_text"] == "a fox"


def test_run_settings_and_cli_override(tmp_path: Path) -> None:
    text = "name: grid-1\n" + HEAD + "run:\n  concurrency: 3\n  max_cost: 25\n  output: out\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.run.concurrency == 3
    assert spec.run.max_cost == 25.0
    assert spec.results_dir == tmp_path.resolve() / "out" / "grid-1"
    assert spec.with_run(concurrency=None).run.concurrency == 3
    assert spec.with_run(concurrency=16).run.concurrency == 16
    with pytest.raises(SpecError, match=r"^--concurrency: must be at least 1, got 0$"):
        spec.with_run(concurrency=0)


def test_unknown_model_allowed_with_server_schema(tmp_path: Path) -> None:
    text = "model: someone/other-model\nschema: server\ninputs: {prompt: a, 12_x: 4}\n"
    (job,) = iter_jobs(load_spec(write(tmp_path, text)))
    assert job.inputs == {"prompt": "a", "12_x": 4}


def test_range_is_inclusive_and_does_not_drift() -> None:
    assert span(2.0, 6.0, 1.0) == [2.0, 3.0, 4.0, 5.0, 6.0]
    tenths = span(0.1, 1.0, 0.1)
    assert tenths == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert span(8, 20, 4) == [8, 12, 16, 20]
    assert all(isinstance(v, int) for v in span(8, 20, 4))
    assert span(3.0, 1.0, -1.0) == [3.0, 2.0, 1.0]
    assert span(1, 2.5, 1) == [1.0, 2.0]


@given(st.integers(-500, 500), st.integers(1, 300), st.integers(0, 60))
def test_decimal_ranges_hit_stop_exactly_without_drift(start: int, step: int, n: int) -> None:
    # start/step with up to 2 decimals: every value must print with at most 2 decimals too.
    first, by = start / 100, step / 100
    last = (start + n * step) / 100
    values = span(first, last, by)
    assert len(values) == n + 1
    assert values[0] == first
    assert values[-1] == last
    assert all(len(repr(v).split(".")[1]) <= 2 for v in values)


def test_random_seeds_are_fixed_forever() -> None:
    # These values fix job keys of existing sweeps: if this test fails, every store resubmits.
    assert random_seeds(4, 1234) == [2481976026, 2738852391, 112046624, 3161528321]
    assert random_seeds(3, 1234) == random_seeds(4, 1234)[:3]
    many = random_seeds(5000, 0)
    assert len(set(many)) == 5000
    assert all(0 <= s < 2**32 for s in many)


def test_local_image_becomes_data_uri_and_url_passes_through(tmp_path: Path) -> None:
    text = (
        "model: community/wan-2-2/vace-fun\ninputs: {prompt: a}\n"
        "axes:\n  image: [pics/a.png, 'https://example.com/b.png']\n"
    )
    path = write(tmp_path, text, {"pics/a.png": PNG.read_bytes()})
    first, second = iter_jobs(load_spec(path))
    expected = "data:image/png;base64," + base64.b64encode(PNG.read_bytes()).decode()
    assert first.inputs["118_image"] == expected
    assert first.sources == {"118_image": "pics/a.png"}
    assert second.inputs["118_image"] == "https://example.com/b.png"
    assert second.sources == {}


def test_files_named_in_data_files_resolve_beside_them(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        "data/rows.csv": "prompt,image,cfg\nhello,pics/a.png,4\n",
        "data/pics/a.png": PNG.read_bytes(),
    }
    text = "model: community/wan-2-2/vace-fun\nzip:\n  - {file: data/rows.csv}\n"
    (job,) = iter_jobs(load_spec(write(tmp_path, text, files)))
    assert job.inputs["108_cfg"] == 4.0
    assert job.sources == {"118_image": "data/pics/a.png"}


def test_shipped_example_specs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    use_catalog(monkeypatch, *catalog_ids())  # the emulated catalog's models
    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    counts = {p.name: count_jobs(load_spec(p)).jobs for p in sorted(sweeps.rglob("*.yaml"))}
    assert counts == {
        "cfg-steps-grid.yaml": 4 * 3 * 5 * 2 - 4 * 2 + 1,
        "dataset-rows.yaml": 8,
        "dataset.yaml": 8,
        "quickstart.yaml": 8,
        "three-models.yaml": 2 + 1 + 2,
    }
    quickstart = load_spec(sweeps / "quickstart.yaml")
    for job in iter_jobs(quickstart):
        assert job.inputs["4_valuex3_value"] == "480x480 (1:1)"
        assert job.inputs["25_value"] == 81
        assert job.inputs["47_value"] <= 8


def test_spec_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r": is a folder; give a \.yaml spec file$"):
        load_spec(tmp_path)
    assert_cli_error(tmp_path, f"{tmp_path}: is a folder; give a .yaml spec file")


def test_an_axis_overrides_inputs_which_stay_the_base_of_includes(tmp_path: Path) -> None:
    text = HEAD + "  cfg: 3\naxes:\n  cfg: [4, 5]\ninclude:\n  - {seed: 7}\n"
    jobs = list(iter_jobs(load_spec(write(tmp_path, text))))
    assert [(j.inputs["108_cfg"], j.inputs["98_seed"]) for j in jobs] == [
        (4.0, 96860978),
        (5.0, 96860978),
        (3.0, 7),
    ]


def test_index_or_key_in_a_template_tells_jobs_apart(tmp_path: Path) -> None:
    for template in ("{index}", "run/{key}.mp4"):
        text = HEAD + f"axes:\n  seed: [1, 2]\nrepeat: 2\nrun:\n  filename: '{template}'\n"
        assert load_spec(write(tmp_path, text)).filename == template
