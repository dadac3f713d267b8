"""A hostile review of LoRAs as object inputs and of prompt templates (issue 11): each test
failed before the fix committed with it."""

from __future__ import annotations

from pathlib import Path

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
