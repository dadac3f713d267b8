"""Hostile spec shapes (issue 8): each is one SpecError line through `plan` and `run`, or plans
exactly without walking the grid."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator import count_jobs, iter_jobs, load_spec
from orchestrator.cli import cli
from orchestrator.errors import SpecError
from orchestrator.grid import iter_inputs
from orchestrator.prices import estimate
from orchestrator.sources import LocalImage

WAN = "community/wan-2-2/vace-fun"
HEAD = """\
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox
  image: https://example.com/a.png
"""

# A file is an image by its content, not its name: a whole (1x1) PNG, whose header opens.
PNG_MAGIC = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00"
    b"\x00\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe"
    b"\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82"
)


def one_line_error(path: Path, *, run: bool = True) -> str:
    """The message of the one-line error `plan` (and `run --emulator`) exit 1 with."""
    commands = [["plan", str(path)], ["run", "--emulator", str(path)]] if run else []
    messages = []
    for argv in commands or [["plan", str(path)]]:
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), result.exception
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: "), lines[0]
        messages.append(lines[0].removeprefix("Error: "))
    assert len(set(messages)) == 1, messages
    return messages[0]


def write(folder: Path, text: str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def bomb(levels: int, fanout: int = 10) -> str:
    """Each level a list of ``fanout`` aliases of the one before: fanout**levels values."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_where_it_grows_past_the_bound(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + bomb(7))  # 10**7 values in under 400 bytes
    message = one_line_error(path)
    assert message.startswith(f"{path}:10:5: YAML expands to more than 1,000,000 values")


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    body = "axes: {seed: &s [1, 2, 3], steps: [&st 4, 8]}\ninclude: [{seed: 9, steps: *st}]\n"
    assert count_jobs(load_spec(write(tmp_path, HEAD + body))).jobs == 7


def test_a_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 8)]
    message = one_line_error(write(tmp_path, HEAD + "\n".join(lines) + "\n"))
    assert "YAML expands to more than 1,000,000 values" in message


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "axes: &a {seed: [1], loop: *a}\n")
    assert one_line_error(path) == f"{path}:5:28: alias *a is used inside itself"


@pytest.mark.parametrize(
    "nested",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 5000 + "1" + "}" * 5000,
        "\n" + "".join(f"{'  ' * (i + 2)}k{i}:\n" for i in range(1500)) + "  " * 1502 + "1",
    ],
    ids=["flow-lists", "flow-maps", "block-maps"],
)
def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, nested: str) -> None:
    path = write(tmp_path, HEAD + "axes:\n  seed: " + nested + "\n")
    message = one_line_error(path)
    assert message.startswith(f"{path}:")
    assert message.endswith("YAML nested more than 100 levels deep; a spec needs a few")


@pytest.mark.parametrize("number", ["9" * 4301, "-" + "1" * 5000, "0x" + "f" * 4000])
def test_an_integer_over_4300_digits_in_yaml_is_one_line(tmp_path: Path, number: str) -> None:
    path = write(tmp_path, HEAD + f"axes:\n  seed: [1, {number}]\n")
    assert one_line_error(path) == (
        f"{path}:6:13: a whole number of more than 4,300 digits; give a smaller one"
    )


def test_integers_of_4300_digits_still_load(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"axes:\n  nonsense: [{'9' * 4300}]\n")
    assert "unknown input" in one_line_error(path, run=False)  # it got past the YAML


def test_an_integer_over_4300_digits_in_data_files_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "seeds.txt").write_text("1\n" + "7" * 4301 + "\n")
    path = write(tmp_path, HEAD + "axes:\n  seed: {file: seeds.txt}\n")
    assert one_line_error(path) == "seeds.txt:2: seed: a whole number of more than 4,300 digits"
    (tmp_path / "rows.jsonl").write_text('{"seed": 1}\n{"seed": ' + "7" * 4301 + "}\n")
    path = write(tmp_path, HEAD + "zip:\n  - file: rows.jsonl\n")
    assert one_line_error(path) == "rows.jsonl:2: file: a number of more than 4,300 digits"
    (tmp_path / "deep.jsonl").write_text('{"seed": 1}\n{"seed": ' + "[" * 100_000 + "}\n")
    path = write(tmp_path, HEAD + "zip:\n  - file: deep.jsonl\n")
    assert one_line_error(path, run=False) == "deep.jsonl:2: file: nested too deeply"


def test_a_csv_cell_over_128_kib_names_the_file_and_row(tmp_path: Path) -> None:
    long = "a" * (128 * 1024 + 1)
    (tmp_path / "rows.csv").write_text(f"prompt,seed\nshort,1\n{long},2\n")
    path = write(tmp_path, HEAD.replace("  prompt: a fox\n", "") + "zip:\n  - file: rows.csv\n")
    assert one_line_error(path) == (
        "rows.csv:3: file: not valid CSV: a cell is longer than 131,072 characters"
    )
    (tmp_path / "rows.csv").write_text(f"prompt,seed\n{long[:-2]},2\n")  # a long prompt is fine
    assert count_jobs(load_spec(path)).jobs == 1


NO_IMAGE = HEAD.replace("  image: https://example.com/a.png\n", "")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('  image: "a\\0b.png"\n', "4:10: inputs.image: 'a\\x00b.png'"),
        ('axes:\n  image: [one.png, "a\\0.png"]\n', "5:20: axes.image[1]: 'a\\x00.png'"),
        ('  image: one.png\naxes:\n  prompt: {file: "a\\0b.txt"}\n', "6:11: axes.prompt: 'a"),
        ('  image: one.png\nzip:\n  - file: "a\\0b.csv"\n', "6:11: zip[0].file: 'a\\x00b.csv'"),
        ('  image: one.png\nrun:\n  output: "a\\0b"\n', "6:11: run.output: 'a\\x00b'"),
    ],
)
def test_a_nul_byte_in_a_path_is_one_line(tmp_path: Path, body: str, field: str) -> None:
    (tmp_path / "one.png").write_bytes(PNG_MAGIC)
    path = write(tmp_path, NO_IMAGE + body)
    message = one_line_error(path)
    assert message.startswith(f"{path}:{field}"), message
    assert message.endswith(": a file name cannot contain a NUL byte"), message


@pytest.mark.parametrize("char", ["\\0", "\\x1b", "\\n", "\\x7f"])
def test_a_control_character_in_the_name_template_is_one_line(tmp_path: Path, char: str) -> None:
    path = write(tmp_path, HEAD + f'axes:\n  seed: [1, 2]\nrun:\n  filename: "a{char}b-{{seed}}"\n')
    message = one_line_error(path)
    assert message.startswith(f"{path}:8:13: run.filename: must not contain control characters")


def test_many_exclude_rules_with_varying_frames_and_fps_count_exactly(tmp_path: Path) -> None:
    rules = [{"fps": 12 + i % 13, "steps": 2 + i % 7} for i in range(40)]
    rules += [{"frames": 141, "seed": s} for s in range(5)] + [{"cfg": 9.0}]
    body = {
        "axes": {
            "frames": [81, 141],
            "fps": list(range(12, 25)),
            "steps": [2, 3, 4, 5, 6, 7, 8],
            "seed": list(range(8)),
        },
        "exclude": rules,
        "include": [{"fps": 12, "steps": 2, "seed": 0}, {"fps": 13, "steps": 40}],
        "repeat": 2,
    }
    path = write(
        tmp_path,
        yaml.safe_dump(
            {"model": WAN, "inputs": {"prompt": "a", "image": "https://x.io/a.png"}} | body
        ),
    )
    spec = load_spec(path)
    walked = list(iter_inputs(spec))
    count = count_jobs(spec)
    assert count.jobs == len(walked) * 2 == sum(1 for _ in iter_jobs(spec))
    seconds = sum(Fraction(v["25_value"], v["38_value"]) for v in walked) * 2
    assert estimate(spec, count).output_seconds == float(seconds)


def test_a_huge_grid_with_many_rules_counts_without_walking(tmp_path: Path) -> None:
    """10**9 jobs: a walk would not end before the per-test timeout."""
    rules = [{"fps": 12 + i % 13, "steps": 2 + i} for i in range(30)]
    rules += [{"frames": 141, "cfg": round(0.1 * (i + 1), 1), "steps": 3} for i in range(30)]
    body = {
        "axes": {
            "frames": [81, 141],
            "fps": list(range(12, 25)),
            "steps": {"start": 2, "stop": 40, "step": 1},
            "cfg": {"start": 0.1, "stop": 10.0, "step": 0.1},
            "seed": {"count": 10_000},
        },
        "exclude": rules,
    }
    path = write(
        tmp_path,
        yaml.safe_dump(
            {"model": WAN, "inputs": {"prompt": "a", "image": "https://x.io/a.png"}} | body
        ),
    )
    spec = load_spec(path)
    grid = 2 * 13 * 39 * 100 * 10**4
    # Rule i < 30 drops (2 frames x 1 fps x 1 steps) rows; a cfg rule drops frames 141 x steps 3,
    # less what both drop (steps 3 with the fps rule i = 1, only frames 141).
    first = 30 * 2 * 100
    second = 30 * 13
    both = 1 * 30
    excluded = (first + second - both) * 10**4
    assert count_jobs(spec).jobs == grid - excluded
    seconds = estimate(spec, count_jobs(spec)).output_seconds
    assert seconds is not None
    assert seconds > 0


def test_glob_of_images_of_one_size_reads_each_once_and_compares_linearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1500
    (tmp_path / "images").mkdir()
    for i in range(n):
        (tmp_path / "images" / f"{i:05d}.png").write_bytes(PNG_MAGIC + b"%05d" % (i % (n - 1)))
    reads: list[Path] = []
    compares = itertools.count()
    read_bytes, equal = Path.read_bytes, LocalImage.__eq__

    def counted_read(self: Path) -> bytes:
        reads.append(self)
        return read_bytes(self)

    def counted_equal(self: LocalImage, other: object) -> Any:
        next(compares)
        return equal(self, other)

    monkeypatch.setattr(Path, "read_bytes", counted_read)
    monkeypatch.setattr(LocalImage, "__eq__", counted_equal)
    spec = load_spec(write(tmp_path, NO_IMAGE + 'axes:\n  image: {glob: "images/*.png"}\n'))
    assert count_jobs(spec).jobs == n - 1  # the last file repeats the first's bytes
    assert count_jobs(spec).duplicates == 1
    assert len(reads) == len(set(reads)) == n
    assert next(compares) < 10 * n


def test_a_spec_error_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        load_spec(write(tmp_path, HEAD + bomb(7)))


def test_plan_skips_a_dropped_block_to_find_the_first_jobs(tmp_path: Path) -> None:
    """The first 39,000,000 jobs are excluded: plan's first jobs come without walking them."""
    body = (
        "axes:\n  frames: [81, 141]\n  steps: {start: 2, stop: 40, step: 1}\n"
        "  cfg: {start: 0.1, stop: 10.0, step: 0.1}\n  seed: {count: 10000}\n"
        "exclude:\n  - {frames: 81}\n  - {frames: 141, steps: 2, cfg: 0.1}\n"
    )
    path = write(tmp_path, HEAD + body)
    result = CliRunner().invoke(cli, ["plan", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["jobs"] == 39 * 100 * 10_000 - 10_000
    first = [job["inputs"] for job in plan["first_jobs"]]
    assert [(j["frames"], j["steps"], j["cfg"]) for j in first] == [(141, 2, 0.2)] * 5


def test_rules_too_intricate_to_count_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its work bound the count stops with a SpecError (the bound lowered to reach it)."""
    monkeypatch.setattr("orchestrator.grid._MAX_COUNT_WORK", 3)
    rules = "".join(f"  - {{steps: {s}, cfg: {c}}}\n" for s in (2, 3) for c in (1.0, 2.0))
    path = write(tmp_path, HEAD + "axes: {steps: [2, 3, 4], cfg: [1.0, 2.0]}\nexclude:\n" + rules)
    assert one_line_error(path, run=False) == (  # run iterates; it does not count
        f"{path}: exclude: 4 rules cross in too many ways to count in reasonable time; "
        "merge or drop some"
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            HEAD + 'run:\n  concurrency: "{long}"\n',
            ":6:16: run.concurrency: must be a whole number",
        ),
        (HEAD.replace(WAN, "{long}"), ":1:8: model: "),
    ],
)
def test_a_long_wrong_value_is_quoted_short(tmp_path: Path, text: str, field: str) -> None:
    """A 100 KB value was quoted whole: a "line" of 100 KB on the terminal."""
    path = write(tmp_path, text.replace("{long}", "x" * 100_000))
    message = one_line_error(path, run=False)
    assert message.startswith(f"{path}{field}"), message[:200]
    assert "(100002 characters)" in message
    assert len(message) < 400
