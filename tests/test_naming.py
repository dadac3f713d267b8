from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import Job, get_model, iter_jobs, load_spec
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.naming import (
    TemplateError,
    default_template,
    render_output_name,
    validate_template,
)
from orchestrator.results import ResultsFolder
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

WAN = "community/wan-2-2/vace-fun"
KEY = "ab12cd34ef" + "0" * 54
FIELDS = get_model(WAN).field_names()


def job(**friendly: Any) -> Job:
    """A job of the first model with the given friendly inputs over complete defaults."""
    model = get_model(WAN)
    inputs = model.complete({"prompt": "a fox", "image": "https://x.io/start.png", **friendly})
    return Job(key=KEY, index=3, model_id=WAN, inputs=inputs)


def inside(name: str, root: Path) -> bool:
    """Whether ``name`` joined to ``root`` resolves to a path inside ``root``."""
    target = Path(os.path.normpath(root / name))
    return target.is_relative_to(root) and target != root


def test_the_issue_template_renders_readably() -> None:
    template = "seed-{seed}/steps-{steps}_cfg-{cfg}_shift-{shift}.mp4"
    name = render_output_name(template, job(seed=1234, steps=8, cfg=2, shift=5), ext=".mp4")
    assert name == "seed-1234/steps-8_cfg-2.0_shift-5.0.mp4"


def test_the_output_type_decides_the_extension() -> None:
    assert render_output_name("{seed}.mp4", job(seed=1), ext="png") == "1.png"
    assert render_output_name("{seed}", job(seed=1), ext=".webm") == "1.webm"
    assert render_output_name("cfg-{cfg}", job(cfg=2.5), ext="") == "cfg-2.5"


def test_several_outputs_get_a_number() -> None:
    names = [render_output_name("{seed}", job(seed=1), n=n, count=2, ext="mp4") for n in (1, 2)]
    assert names == ["1-1.mp4", "1-2.mp4"]


def test_special_fields_and_format_specs() -> None:
    name = render_output_name("{index:04d}_{key}_{seed:08d}_{cfg:.2f}", job(seed=7), ext="mp4")
    assert name == "0003_ab12cd34ef_00000007_3.50.mp4"
    assert render_output_name("{98_seed}", job(seed=7), ext="mp4") == "7.mp4"


def test_media_render_as_their_file_stem() -> None:
    local = Job(
        KEY, 0, WAN, {"118_image": "data:image/png;base64,AAAA"}, 0, {"118_image": "in/cat.png"}
    )
    assert render_output_name("{image}", local, ext="mp4") == "cat.mp4"
    assert render_output_name("{image}", job(), ext="mp4") == "start.mp4"
    bare = Job(KEY, 0, WAN, {"118_image": "data:image/png;base64,AAAA"})
    other = Job(KEY, 0, WAN, {"118_image": "data:image/png;base64,AAAB"})
    assert render_output_name("{image}", bare, ext="mp4").startswith("data-")
    assert render_output_name("{image}", bare, ext="mp4") != render_output_name(
        "{image}", other, ext="mp4"
    )


def test_default_template_names_varying_fields_and_short_key(tmp_path: Path) -> None:
    assert default_template(["seed", "steps"]) == "seed-{seed}_steps-{steps}_{key}"
    assert default_template([]) == "{key}"
    body = {
        "model": WAN,
        "inputs": {"prompt": "a fox", "image": "https://x.io/a.png"},
        "axes": {"seed": [1234, 5], "steps": [8], "cfg": [2, 3]},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    spec = load_spec(tmp_path / "s.yaml")
    jobs = list(iter_jobs(spec))
    names = [render_output_name(spec, j, ext="mp4") for j in jobs]
    assert names[0] == f"seed-1234_steps-8_cfg-2.0_{jobs[0].key[:10]}.mp4"
    assert len(set(names)) == len(jobs)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{sead}.mp4",
            "unknown field {sead}; allowed: prompt, image, resolution, frames, fps, seed",
        ),
        ("{seed!r}", "{seed!r}: conversions are not supported"),
        ("{seed:{cfg}}", "nested fields are not supported"),
        ("/abs/{seed}", "must be a relative path inside the results folder"),
        ("a/../{seed}", "must not contain '..' or '.' folders"),
        ("{seed", "expected '}' before end of string"),
        (".mp4", "gives an empty name"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        validate_template(template, FIELDS)
    assert message in str(caught.value)


def test_unknown_field_lists_special_fields_too() -> None:
    with pytest.raises(TemplateError, match=r"allowed: .*shift, .*, key, index, repeat$"):
        validate_template("{nope}", FIELDS)
    assert validate_template("s-{seed}/{key}.mp4", FIELDS) == {"seed", "key"}


@pytest.mark.parametrize(
    "prompt",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".",
        "a\x00b",
        "C:\\Windows\\system32",
        "  ",
        "con",
        "x" * 1000,
        "é" * 400,
        "line\nbreak\ttab",
    ],
)
def test_hostile_values_stay_inside_the_folder(prompt: str, tmp_path: Path) -> None:
    for template in ("{prompt}", "p/{prompt}/{prompt}", "{prompt}{prompt}{prompt}{prompt}x"):
        name = render_output_name(template, job(prompt=prompt), ext="mp4")
        assert inside(name, tmp_path), name
        assert "\x00" not in name
        assert "\\" not in name
        assert all(0 < len(part.encode()) <= 255 for part in PurePosixPath(name).parts)
        assert not any(part.startswith(".") for part in PurePosixPath(name).parts)
        assert name.endswith(".mp4")
        assert PurePosixPath(name).stem.upper() != "CON"


def test_long_values_stay_distinct() -> None:
    a = render_output_name("{prompt}", job(prompt="x" * 300 + "a"), ext="mp4")
    b = render_output_name("{prompt}", job(prompt="x" * 300 + "b"), ext="mp4")
    assert a != b
    assert len(a) < 80


@given(st.text(min_size=1, max_size=300))
def test_any_prompt_stays_inside(prompt: str) -> None:
    name = render_output_name("runs/{prompt}/{seed}", job(prompt=prompt), ext=".mp4")
    root = Path("/results/sweep")
    assert inside(name, root), name
    assert all(0 < len(part.encode()) <= 255 for part in PurePosixPath(name).parts)
    assert "\x00" not in name


def test_a_value_the_format_does_not_suit_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"\{seed:c\}: format does not suit '1000000000'"):
        render_output_name("{seed:c}", job(seed=10**9), ext="mp4")
    assert render_output_name("{seed:c}", job(seed=65), ext="mp4") == "A.mp4"


def test_a_paid_output_whose_name_cannot_be_made_is_named_by_its_key(tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path, get_model(WAN), "{seed:c}")
    name = folder.output_name(job(seed=10**9), 0, 1, "https://cdn.runcomfy.net/o/x.mp4")
    assert name == f"{KEY[:10]}.mp4"
    assert "format does not suit" in str(folder.name_problem(job(seed=10**9)))
    assert folder.name_problem(job(seed=65)) is None


UNNAMEABLE = """\
name: unnameable
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
axes:
  seed: [65, 1000000000]
run:
  output: {output}
  filename: "{{seed:c}}"
  poll_interval: 0.02
  rate: 1000
"""


def test_a_job_whose_name_cannot_be_made_fails_before_its_submit(tmp_path: Path) -> None:
    """The spec's check tries the first seed only; the second cannot be formatted with :c."""
    spec = tmp_path / "unnameable.yaml"
    spec.write_text(UNNAMEABLE.format(output=tmp_path / "results"))
    with Emulator(EmulatorConfig(speed=5000.0, workers=2)) as emu:
        for _ in range(2):  # and the next run does not trip over it either
            report = run_sweep(
                spec,
                base_url=emu.base_url,
                token=emu.token,
                overrides=Overrides(poll_interval=0.02),
                retry=RetryPolicy(wait=False),
            )
            assert report.counts["done"] == 1, report
            assert report.counts["failed"] == 1, report
        assert len(emu.ledger()["jobs"]) == 1  # the unnameable job was never paid for
    with Store.open(tmp_path / "results" / "unnameable" / "comfysweep.db", readonly=True) as db:
        (failed,) = db.jobs([JobState.FAILED])
    assert failed.inputs["98_seed"] == 10**9
    assert "run.filename cannot name this job's output" in str(failed.error)
    assert (tmp_path / "results" / "unnameable" / "A.mp4").is_file()
