"""A hostile review of LoRAs as object inputs and of prompt templates (issue 11): each test
failed before the fix committed with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator import templates
from orchestrator.sources import Problem
from orchestrator.templates import Template


def wildcards(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "wildcards"
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("text", ["a{2$$a|a}", "{2$$a|a}", "x {2$$b|b} y"])
def test_a_part_that_makes_no_text_is_one_line_not_a_runtime_error(
    tmp_path: Path, text: str
) -> None:
    template = Template(text, wildcards(tmp_path, {}), "wildcards")
    assert template.count() == 0
    with pytest.raises(Problem, match=r"^template makes no prompt$"):
        template.expand()
    templates._build_parser()


def test_a_symlink_out_of_the_wildcards_folder_is_refused_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("hunter2\n")
    root = wildcards(tmp_path, {"animals.txt": "fox\n"})
    (root / "leak").symlink_to(secret)
    (root / "key.txt").symlink_to(secret / "key.txt")
    for text in ("__animals__", "__leak/key__", "__*__", "__key__"):
        with pytest.raises(Problem, match=r"^wildcards: wildcards/(leak|key.txt) links outside"):
            Template(text, root, "wildcards").expand()


def test_a_symlink_loop_in_the_wildcards_folder_is_refused(tmp_path: Path) -> None:
    root = wildcards(tmp_path, {"a/animals.txt": "fox\n"})
    (root / "a" / "up").symlink_to(root)
    (root / "a" / "again").symlink_to(root / "a")
    with pytest.raises(Problem, match=r"^wildcards: wildcards/a/\w+ links to a folder holding"):
        Template("__a/animals__", root, "wildcards").expand()


def test_a_fifo_in_the_wildcards_folder_is_refused_not_waited_on(tmp_path: Path) -> None:
    root = wildcards(tmp_path, {"animals.txt": "fox\n"})
    os.mkfifo(root / "birds.txt")  # the library would block reading it, for ever
    with pytest.raises(Problem, match=r"^wildcards: wildcards/birds.txt is not a regular file$"):
        Template("__birds__", root, "wildcards").expand()


def test_a_wildcard_file_that_is_not_utf8_is_refused_not_cut_short(tmp_path: Path) -> None:
    root = wildcards(tmp_path, {"cafe.txt": "café\n".encode("latin-1"), "ok.txt": "thé\n"})
    assert Template("__ok__", root, "wildcards").expand() == ["thé"]
    with pytest.raises(Problem, match=r"^wildcard __cafe__: wildcards/cafe.txt is not UTF-8"):
        Template("a __cafe__", root, "wildcards")


def test_two_loras_of_one_label_stay_apart_in_the_report() -> None:
    from orchestrator.report.view import _axes

    first = {"path": "https://a.example/x/style.safetensors", "scale": 1.0}
    second = {"path": "https://b.example/y/style.safetensors", "scale": 1.0}
    named = [{"lora": first, "seed": 1}, {"lora": second, "seed": 1}, {"lora": None, "seed": 1}]
    (axis,), _fixed = _axes(named)
    assert axis.values == [first, second, None]
    # the page finds a value by its label (tabs, filters): each must find its own
    assert [axis.labels.index(label) for label in axis.labels] == [0, 1, 2]
    assert axis.labels[0].startswith("style@1 #")
    assert axis.labels[2] == "(none)"


def test_a_lora_label_stays_short_for_a_10kb_url_and_two_such_urls_stay_apart() -> None:
    from orchestrator import objects

    first = {"path": "https://x.example/" + "a" * 10_000 + ".safetensors", "scale": 0.5}
    second = {"path": "https://y.example/" + "a" * 10_000 + ".safetensors", "scale": 0.5}
    shown = [objects.label(first), objects.label(second)]
    assert all(len(text) <= 60 for text in shown)
    assert shown[0] != shown[1]
    assert shown[0].startswith("aaaa")
    assert shown[0].endswith("@0.5")
    assert objects.label({"path": "my-style.safetensors", "scale": 0.5}) == "my-style@0.5"


DATASET = """\
name: animals
model: google/nano-banana-2-lite/text-to-image
axes:
  prompt:
    template: "a {watercolor|linocut} of a __animals__"
  lora:
    - {path: "https://a.example/x/style.safetensors", scale: 0.5}
    - {path: "https://b.example/y/style.safetensors", scale: 0.5}
run:
  output: OUT
  filename: "{lora}_{prompt}"
  poll_interval: 0.02
  rate: 1000
"""


def test_a_dataset_of_a_template_and_two_loras_of_one_label_loses_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two LoRAs named alike render to one file name: each paid output still gets its own
    file, and the image dataset `datasets` loads holds all of them with their prompts."""
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.emulator import Emulator, EmulatorConfig, catalog
    from orchestrator.models import _registry
    from orchestrator.sweep import Overrides, run_sweep

    model = "google/nano-banana-2-lite/text-to-image"
    monkeypatch.setitem(_registry(), model, catalog.emulated_catalog()[model].model)
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "animals.txt").write_text("fox\r\nheron\r\n# a comment\r\n")
    spec = tmp_path / "animals.yaml"
    spec.write_text(DATASET.replace("OUT", str(tmp_path / "results")))
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(poll_interval=0.02)
        )
        paid = len(emu.ledger()["jobs"])
    assert report.complete
    assert paid == 8
    folder = tmp_path / "results" / "animals"
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    paths = [e["outputs"][0]["path"] for e in entries]
    assert len(set(paths)) == 8
    assert all((folder / p).is_file() for p in paths)
    assert len({e["outputs"][0]["sha256"] for e in entries}) == 8
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", str(spec), str(out), "--format", "hf"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features["image"] == datasets.Image()
    made = [f"a {s} of a {a}" for s in ("watercolor", "linocut") for a in ("fox", "heron")]
    assert sorted(r["prompt"] for r in loaded) == sorted(made * 2)


def test_a_missing_wildcard_is_an_error_not_a_file_of_that_name_in_a_sub_folder(
    tmp_path: Path,
) -> None:
    root = wildcards(tmp_path, {"old/birds.txt": "dodo\n", "animals.txt": "fox\n"})
    with pytest.raises(Problem, match=r"^wildcard __birds__: no file wildcards/birds.txt$"):
        Template("a __birds__", root, "wildcards")
    assert Template("a __old/birds__", root, "wildcards").expand() == ["a dodo"]


def _fuzz_template(draw: Any, depth: int, letters: list[str]) -> str:
    """A small template whose every literal is a fresh word (so no two prompts collide)."""
    from hypothesis import strategies as st

    kind = draw(st.sampled_from(["lit", "alt", "pick", "seq"] if depth < 2 else ["lit"]))
    if kind == "lit":
        letters.append(f"w{len(letters)}")
        return letters[-1]
    parts = [_fuzz_template(draw, depth + 1, letters) for _ in range(draw(st.integers(1, 3)))]
    if kind == "seq":
        return " ".join(parts)
    head = (
        draw(st.sampled_from(["", "2::", "2$$", "1-2$$", "2$$ and $$"])) if kind == "pick" else ""
    )
    return "{" + head + "|".join(parts) + "}"


def test_fuzz_count_equals_the_expansion_and_the_expansion_is_the_librarys(
    tmp_path: Path,
) -> None:
    from dynamicprompts.generators import CombinatorialPromptGenerator
    from dynamicprompts.wildcards import WildcardManager
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root = wildcards(tmp_path, {"w.txt": "wa\nwb\n{wc|wd}\n"})
    templates._build_parser()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data(), st.booleans())
    def check(data: Any, with_wildcard: bool) -> None:
        text = _fuzz_template(data.draw, 0, [])
        text = f"{text} __w__" if with_wildcard else text
        template = Template(text, root, "wildcards")
        counted = template.count()
        assert counted is not None
        if counted > 2_000:  # kept fast
            return
        prompts = template.expand()
        library = CombinatorialPromptGenerator(WildcardManager(root))
        assert prompts == library.generate(text, max_prompts=None)
        assert counted == len(prompts) == len(set(prompts))

    check()


def test_a_resume_after_a_wildcard_file_is_edited_keeps_the_done_jobs_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line added to a wildcard file: the prompts it adds are new jobs, every prompt still
    made is a job already done (not paid again); the README says what an edit does."""
    from orchestrator.emulator import Emulator, EmulatorConfig, catalog
    from orchestrator.models import _registry
    from orchestrator.sweep import Overrides, run_sweep

    model = "google/nano-banana-2-lite/text-to-image"
    monkeypatch.setitem(_registry(), model, catalog.emulated_catalog()[model].model)
    root = wildcards(tmp_path, {"animals.txt": "fox\nheron\n"})
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"model: {model}\naxes:\n  prompt: {{template: 'a {{red|blue}} __animals__'}}\n"
        f"run:\n  output: {tmp_path / 'results'}\n  poll_interval: 0.02\n  rate: 1000\n"
    )
    fast = Overrides(poll_interval=0.02)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        assert run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=fast).complete
        (root / "animals.txt").write_text("fox\nlynx\nheron\n")
        assert run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=fast).complete
        paid = [job["input_sha256"] for job in emu.ledger()["jobs"]]
    assert len(paid) == len(set(paid)) == 6  # 4, then the 2 of lynx: none paid twice
    manifest = (tmp_path / "results" / "s" / "manifest.jsonl").read_text().splitlines()
    prompts = sorted(json.loads(line)["inputs"]["prompt"] for line in manifest)
    made = [f"a {c} {a}" for c in ("red", "blue") for a in ("fox", "heron", "lynx")]
    assert prompts == sorted(made)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "**Editing a wildcard file**" in readme


def test_an_include_of_none_for_a_field_the_grid_never_sets_is_the_grids_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``include: [{seed: 1, lora: none}]`` is the grid's seed-1 job (one key): it was listed
    twice, counted in plan and the budget's estimate as one more job."""
    from orchestrator import count_jobs, iter_jobs, load_spec
    from orchestrator.models import Model, _registry

    from .test_loras import BASE, ENTRY

    monkeypatch.setitem(_registry(), BASE, Model.from_catalog(ENTRY))
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"model: {BASE}\ninputs:\n  prompt: a fox\naxes:\n  seed: [1, 2]\n"
        "include:\n  - {seed: 1, lora: none}\n  - {seed: 3, lora: none}\n"
    )
    loaded = load_spec(spec)
    keys = [job.key for job in iter_jobs(loaded)]
    assert len(keys) == len(set(keys)) == 3
    assert count_jobs(loaded).jobs == 3


@pytest.mark.parametrize(
    "path",
    [
        "https://[::1/a.safetensors",  # ValueError: a traceback
        "https://x.example:99999/a.safetensors",
        "https://x.example/a\tb.safetensors",  # urlsplit drops the tab: label ab, sent a\tb
        "https://x.example/a\nb.safetensors",
        "https://x.example/a\u200bb.safetensors",
    ],
)
def test_a_broken_https_lora_path_is_one_line(tmp_path: Path, path: str) -> None:
    from orchestrator import objects

    prop = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    with pytest.raises(objects.ObjectProblem, match=r"^path: .* is not a valid https URL$"):
        objects.normalise_object(prop, {"path": path})
    assert objects.normalise_object(prop, {"path": "https://x.example:8443/é.safetensors?a=1"})


def test_sample_is_every_prompt_when_a_weight_hides_one_from_the_draws(tmp_path: Path) -> None:
    from orchestrator.templates import expand

    assert sorted(expand({"template": "{1000::a|b}", "sample": 2}, tmp_path)) == ["a", "b"]
    drawn = expand({"template": "{50::a|b} {50::c|d}", "sample": 4, "seed": 3}, tmp_path)
    assert sorted(drawn) == ["a c", "a d", "b c", "b d"]
    assert len(expand({"template": "{~a|b} {c|d}", "sample": 9}, tmp_path)) == 4
    # draws that find N prompts stay as they were (a resume finds the same jobs)
    assert expand({"template": "{a|b|c}", "sample": 2, "seed": 5}, tmp_path) == expand(
        {"template": "{a|b|c}", "sample": 2, "seed": 5}, tmp_path
    )


def test_a_byte_order_mark_is_not_sent_as_part_of_a_prompt(tmp_path: Path) -> None:
    from orchestrator.templates import expand

    root = wildcards(tmp_path, {"animals.txt": b"\xef\xbb\xbffox\r\nheron\r\n"})
    (tmp_path / "p.tmpl").write_bytes(b"\xef\xbb\xbfa __animals__\r\n")
    assert Template("__animals__", root, "wildcards").expand() == ["fox", "heron"]
    assert expand({"template_file": "p.tmpl"}, tmp_path) == ["a fox", "a heron"]


def test_wildcards_naming_each_other_thrice_over_are_checked_and_counted_once_each(
    tmp_path: Path,
) -> None:
    """16 files of one line each, each naming the next three times: plan hung (3**15 walks)."""
    from orchestrator.templates import expand

    files = {f"w{i}.txt": f"__w{i + 1}__ __w{i + 1}__ __w{i + 1}__\n" for i in range(15)}
    root = wildcards(tmp_path, {**files, "w15.txt": "x\ny\n"})
    template = Template("__w0__", root, "wildcards")
    assert template.count() == 10**30  # 2 ** (3**15): each of 3**15 slots takes x or y
    with pytest.raises(Problem, match=r"^template expands to more than 10\^30 prompts, over"):
        expand({"template": "__w0__"}, tmp_path)


def test_braces_nested_in_a_chain_of_wildcard_files_are_one_line_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    from orchestrator.templates import expand

    nest = 30
    files = {f"w{i}.txt": "{" * nest + f"__w{i + 1}__|b" + "}" * nest + "\n" for i in range(19)}
    wildcards(tmp_path, {**files, "w19.txt": "x\n"})
    with pytest.raises(Problem, match=r"^template nests too deep|^template cannot expand"):
        expand({"template": "__w0__"}, tmp_path)


def test_schema_server_takes_mappings_as_axis_values_and_inputs(tmp_path: Path) -> None:
    """With schema: server nothing knows lora is an object: its mappings were refused ("must
    be a single value", "takes one value"), so no LoRA sweep on a model not cached yet."""
    from orchestrator import iter_jobs, load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "model: someone/new-model/text-to-image\nschema: server\n"
        "inputs:\n  prompt: a fox\n  style: {name: ink, strength: 2}\n"
        "axes:\n  lora: [{path: a.safetensors}, {path: b.safetensors, scale: 0.5}]\n"
    )
    jobs = list(iter_jobs(load_spec(spec)))
    assert [job.inputs["lora"] for job in jobs] == [
        {"path": "a.safetensors"},
        {"path": "b.safetensors", "scale": 0.5},
    ]
    assert jobs[0].inputs["style"] == {"name": "ink", "strength": 2}
