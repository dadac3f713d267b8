"""Prompt templates (dynamicprompts syntax) as axis sources: counted before expanding, expanded
the same way in every process, the expanded text is the job's input, bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from dynamicprompts.generators import CombinatorialPromptGenerator
from dynamicprompts.sampling_context import SamplingContext
from dynamicprompts.wildcards import WildcardManager

from orchestrator import count_jobs, iter_jobs, load_spec, templates
from orchestrator.canonical import job_key
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import SpecError
from orchestrator.sources import Problem
from orchestrator.sweep import Overrides, run_sweep
from orchestrator.templates import MAX_PROMPTS, Template, _Expander, count, expand

from .sweeps import SPEC

VACE = "community/wan-2-2/vace-fun"
WILDCARDS = {
    "animals.txt": "cat\ndog\n# a comment line is skipped\n\nbird\n",
    "colors.txt": "red\n{light|dark} blue\n",
    "styles/ink.txt": "ink wash\ncharcoal\n",
    "empty.txt": "\n# nothing\n",
}


def folder(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    for name, text in (files if files is not None else WILDCARDS).items():
        target = tmp_path / "wildcards" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return tmp_path / "wildcards"


COUNTED = [
    ("a {red|green|blue} {cat|dog} __animals__", 18),
    ("{2$$a|b|c}", 6),  # ordered picks
    ("{1-2$$a|b|c}", 9),
    ("{2$$__animals__}", 6),
    ("__colors__ at dusk", 3),  # a wildcard value is itself a template
    ("{2::a|b} {a|a|b}", 4),  # weights do not change what can be made; equal options are one
    ("{0-2$$a|{b|c}}", 8),
    ("{2$$a|b|c|d} __colors__ {2$$__colors__}", 144),
    ("x {3$$a|b}", 2),  # a pick of more than there are takes them all
    ("__styles/ink__, __animals__", 6),
    ("plain text", 1),
]


@pytest.mark.parametrize(("text", "expected"), COUNTED)
def test_the_count_walks_the_template_and_equals_the_expansion(
    tmp_path: Path, text: str, expected: int
) -> None:
    template = Template(text, folder(tmp_path), "wildcards")
    prompts = template.expand()
    assert template.count() == expected == len(prompts) == len(set(prompts))


SAME_ORDER = [text for text, _ in COUNTED] + [
    "{2$$ and $$a|b|c}",  # a separator of its own
    "{0-2$$a|b}",  # an empty pick, trimmed from the join
    "{a|} z",
    "{ab|a}{|b}",
    "{2$$__nest__} {__nest__|q}",  # wildcard lines that are templates, picked among
    "{1-3$$__colors__|z}",
    "{2$$x|{x|y}}",  # texts that collide inside one pick
    "{~a|b} {x|y}",  # a random part: the library expands it, seeded
    "${c={a|b}} ${c} and ${c}",  # variables: the library too
]


@pytest.mark.parametrize("text", SAME_ORDER)
def test_the_expansion_is_the_librarys_in_its_order(tmp_path: Path, text: str) -> None:
    files = WILDCARDS | {"nest.txt": "a __colors__ thing\n{x|y|x}\nplain\n"}
    wildcards = folder(tmp_path, files)
    templates._build_parser()  # quietly: first built here, it warns (an error under pytest)
    library = CombinatorialPromptGenerator(WildcardManager(wildcards))
    generated = library.generate(text, max_prompts=None)
    if "~" in text:  # drawn: which one is the seed's affair, the shape is the library's
        assert [p.split()[1] for p in Template(text, wildcards, "w").expand()] == ["x", "y"]
    else:
        assert Template(text, wildcards, "w").expand() == generated


def test_a_large_wildcard_file_is_parsed_once_not_once_per_prompt(tmp_path: Path) -> None:
    lines = "\n".join(f"thing number {i}" for i in range(50_000))
    template = Template("{a|b} __big__", folder(tmp_path, {"big.txt": lines}), "wildcards")
    prompts = template.expand()  # the library alone takes about a minute here
    assert (len(prompts), prompts[0], prompts[-1]) == (
        100_000,
        "a thing number 0",
        "b thing number 9999",
    )


def test_a_template_of_millions_is_counted_without_expanding_and_refused_naming_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_expanding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the template was expanded")

    monkeypatch.setattr(SamplingContext, "sample_prompts", no_expanding)
    monkeypatch.setattr(_Expander, "of", no_expanding)
    text = "{a|b|c|d|e|f|g|h|i|j} " * 6 + "{3$$__animals__} {2$$p|q|r|s}"
    assert count(text, folder(tmp_path)) == 10**6 * 6 * 12
    spec = write(tmp_path, f"axes:\n  prompt:\n    template: '{text}'\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert str(caught.value) == (
        f"{spec}:7:5: axes.prompt: template expands to 72,000,000 prompts, over the limit of "
        f"{MAX_PROMPTS:,}; add sample: N to draw N of them (seed: S picks which)"
    )


def write(tmp_path: Path, body: str, *, files: dict[str, str] | None = None) -> Path:
    folder(tmp_path, files)
    path = tmp_path / "dataset.yaml"
    path.write_text(
        f"model: {VACE}\ninputs:\n  image: https://example.com/a.png\n  seed: 1\n" + body
    )
    return path


def test_each_expanded_prompt_is_a_jobs_input_and_its_key(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "axes:\n  prompt: {template: 'a {red|blue} __animals__'}\n"))
    jobs = list(iter_jobs(spec))
    assert [j.friendly()["prompt"] for j in jobs] == [
        "a red bird",
        "a red cat",
        "a red dog",
        "a blue bird",
        "a blue cat",
        "a blue dog",
    ]
    assert jobs[4].key == job_key(VACE, jobs[4].inputs)
    assert count_jobs(spec).axes == {"prompt": 6}


def test_texts_that_collide_collapse_like_other_axis_values(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "axes:\n  prompt: {template: '{ab|a}{|b}'}\n"))
    counted = count_jobs(spec)
    assert (counted.jobs, counted.duplicates) == (3, 1)


def test_a_template_in_a_zip_group_pairs_with_another_column(tmp_path: Path) -> None:
    body = "zip:\n  - prompt: {template: '{a|b|c} fox'}\n    steps: [4, 8, 12]\n"
    jobs = list(iter_jobs(load_spec(write(tmp_path, body))))
    assert [(j.friendly()["prompt"], j.friendly()["steps"]) for j in jobs] == [
        ("a fox", 4),
        ("b fox", 8),
        ("c fox", 12),
    ]


SAMPLED = """\
axes:
  prompt:
    template: '{a|an old|a young} {red|green|blue|black} __animals__ in {rain|fog}, __styles/ink__'
    sample: 12
    seed: 7
"""


def sampled(tmp_path: Path) -> list[str]:
    return [j.friendly()["prompt"] for j in iter_jobs(load_spec(write(tmp_path, SAMPLED)))]


def test_sampled_prompts_are_the_same_in_every_process(tmp_path: Path) -> None:
    here = sampled(tmp_path)
    assert len(here) == len(set(here)) == 12
    code = (
        "import json, sys\n"
        "from orchestrator import iter_jobs, load_spec\n"
        "spec = load_spec(sys.argv[1])\n"
        "print(json.dumps([j.friendly()['prompt'] for j in iter_jobs(spec)]))\n"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "dataset.yaml")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == here
    other = write(tmp_path, SAMPLED.replace("seed: 7", "seed: 8"))
    assert [j.friendly()["prompt"] for j in iter_jobs(load_spec(other))] != here


def test_sample_draws_distinct_prompts_and_fewer_when_the_template_has_fewer(
    tmp_path: Path,
) -> None:
    assert sorted(expand({"template": "{a|b}", "sample": 5}, tmp_path)) == ["a", "b"]
    drawn = expand({"template": "{a|b|c|d|e|f} {1|2|3}", "sample": 10, "seed": 3}, tmp_path)
    assert len(set(drawn)) == 10


def test_a_template_file_beside_the_spec(tmp_path: Path) -> None:
    (tmp_path / "prompts.tmpl").write_text("a {red|blue}\n  __animals__\n")
    spec = load_spec(write(tmp_path, "axes:\n  prompt: {template_file: prompts.tmpl}\n"))
    assert [j.friendly()["prompt"] for j in iter_jobs(spec)][:2] == ["a red bird", "a red cat"]


def test_a_wildcards_folder_set_in_the_spec(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "moods.txt").write_text("calm\nwild\n")
    body = "axes:\n  prompt: {template: '__moods__ sea', wildcards: lists/}\n"
    spec = load_spec(write(tmp_path, body))
    assert [j.friendly()["prompt"] for j in iter_jobs(spec)] == ["calm sea", "wild sea"]


BAD = [
    ("{template: 'a {red|blue'}", "axes.prompt: template 'a {red|blue' does not parse at"),
    ("{template: 'a __birds__'}", "axes.prompt: wildcard __birds__: no file wildcards/birds.txt"),
    ("{template: 'a __empty__'}", "axes.prompt: wildcard __empty__: wildcards/empty.txt has no"),
    ("{template: 'a __x/../animals__'}", "axes.prompt: wildcard __x/../animals__: must name a"),
    ("{template: 'a __../animals__'}", "axes.prompt: wildcard __../animals__: must name a file"),
    ("{template: 'a', seed: 1}", "axes.prompt: seed draws random prompts: give sample: N"),
    ("{template: 'a', sample: 0}", "axes.prompt: sample must be a whole number from 1 to"),
    ("{template: 'a', smaple: 3}", "axes.prompt.smaple: unknown key (did you mean 'sample'?)"),
    ("{template: ''}", "axes.prompt: template is empty"),
    ("{template_file: nope.tmpl}", "axes.prompt: template_file nope.tmpl: no such file"),
    ("{template: 'a', file: p.txt}", "axes.prompt: file: not a template key"),
    ("{template: '__x__', wildcards: nowhere/}", "axes.prompt: wildcard __x__: no wildcards"),
    ("{template: 'a __broken__'}", "axes.prompt: wildcard __broken__: template '{red' does not"),
    ("{template: '__loop__'}", "axes.prompt: wildcards nest more than 20 deep; does one name"),
]


@pytest.mark.parametrize(("source", "expected"), BAD)
def test_bad_templates_are_one_line_naming_the_spec_and_field(
    tmp_path: Path, source: str, expected: str
) -> None:
    files = WILDCARDS | {"broken.txt": "{red\n", "loop.txt": "again __loop__\n"}
    spec = write(tmp_path, f"axes:\n  prompt: {source}\n", files=files)
    result = CliRunner().invoke(cli, ["plan", str(spec)])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {spec}:"), line
    assert expected in line


def test_a_template_suits_text_inputs_only(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"axes.steps: template makes text"):
        load_spec(write(tmp_path, "axes:\n  steps: {template: '{4|8}'}\n"))


def test_plan_counts_the_expansion(tmp_path: Path) -> None:
    spec = write(tmp_path, "axes:\n  prompt: {template: '{a|b|c} __animals__'}\n")
    result = CliRunner().invoke(cli, ["plan", str(spec), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jobs"] == 9


def test_a_resume_never_re_rolls_the_prompts_and_the_export_loads_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = SPEC.replace('  prompt: "a red fox in the snow"\n', "").replace(
        "axes:\n  seed: [1, 2]\n  steps: [4, 8]\n",
        "axes:\n  prompt:\n    template: '{a|the} {red|grey} __animals__'\n    sample: 3\n"
        "    seed: 5\n",
    )
    folder(tmp_path)
    spec = tmp_path / "grid.yaml"
    spec.write_text(body.replace("{name}", "grid").replace("{output}", str(tmp_path / "results")))
    wanted = [j.friendly()["prompt"] for j in iter_jobs(load_spec(spec))]
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        price = httpx.get(
            f"{emu.base_url}/models/{VACE}", headers={"Authorization": f"Bearer {emu.token}"}
        ).json()["base_price_usd"]
        one_job = price * 81 / 16  # 81 frames at 16 fps, priced by the second
        budget = Overrides(concurrency=1, max_cost=one_job * 1.5, poll_interval=0.02)
        first = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=budget)
        assert first.counts["done"] == 1  # the budget stopped it: two prompts wait
        assert len(emu.ledger()["jobs"]) == 1
        overrides = Overrides(poll_interval=0.02)
        again = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=overrides)
        ledger = emu.ledger()
    assert again.complete
    assert len(ledger["jobs"]) == 3
    assert set(ledger["submissions_by_input"].values()) == {1}
    lines = (tmp_path / "results" / "grid" / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["inputs"]["prompt"] for line in lines) == sorted(wanted)

    dest = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", str(spec), str(dest)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    loaded = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["prompt"]) == sorted(wanted)


def test_expand_refuses_what_is_not_a_template(tmp_path: Path) -> None:
    with pytest.raises(Problem, match="template must be text"):
        expand({"template": 3}, tmp_path)
    with pytest.raises(Problem, match="give template or template_file, not both"):
        expand({"template": "a", "template_file": "b"}, tmp_path)
