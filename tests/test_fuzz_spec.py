"""Fuzzed specs: `plan` counts right (checked by iterating) or fails in one line, nothing else.

Hypothesis generates spec dicts (mostly well formed, with wrong values, types and keys mixed in),
raw YAML text (random, and a valid spec with characters cut or inserted), hostile shapes (alias
bombs, deep nesting, integers past 4,300 digits, CSV cells past 128 KiB, NUL bytes in paths) and
grids with many exclude rules where frames and fps vary. Whatever comes in, loading and planning
raise nothing but a one-line ComfysweepError, in bounded time (the per-test timeout), and when they
succeed the arithmetic count and output seconds equal what iteration yields, each job with its own
key.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import count_jobs, iter_jobs, load_spec
from orchestrator.cli import cli
from orchestrator.errors import ComfysweepError
from orchestrator.grid import iter_inputs
from orchestrator.plan import plan_summary

# The example database is kept (.hypothesis/, ignored by git) so a failure replays on the next
# run; no deadline (the first load of a model schema is slow), few examples (each writes a file
# and plans a spec).
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The hostile shapes write large files (128 KiB cells, 3,000-level nesting): fewer examples.
HOSTILE = settings(FUZZ, max_examples=50)
ITERATE_UP_TO = 3000

VALID = """\
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox in the snow
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
axes:
  seed: {count: 3, from: 7}
  steps: [4, 8, 12]
  cfg: {start: 2.0, stop: 4.0, step: 1.0}
include:
  - {seed: 1, steps: 20}
exclude:
  - {steps: 8, cfg: 3.0}
repeat: 2
run:
  concurrency: 4
  filename: "seed-{seed}/steps-{steps}_{key}"
"""

weird_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=12),
    weird_text,
)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(st.just("a fox"), weird_text.filter(str.strip)),
    "image": st.sampled_from(["https://example.com/a.png", "https://example.com/b.jpg"]),
    "resolution": st.sampled_from(["480x480 (1:1)", "1280x720 (16:9)"]),
    "frames": st.sampled_from([81, 141]),
    "fps": st.integers(12, 24),
    "seed": st.integers(0, 2**32),
    "steps": st.integers(2, 40),
    "cfg": st.one_of(st.floats(0, 10), st.integers(0, 10)),
    "shift": st.floats(1, 10),
    "56_text": st.just("a raw-key prompt"),
}
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    # Mostly good values, so that many specs plan; now and then a bad one.
    **{name: st.one_of(good, good, good, good, good, scalars) for name, good in GOOD.items()},
    "nonsense": scalars,
}
field_names = st.sampled_from(sorted(FIELD_VALUES))


def rarely(draw: st.DrawFn) -> bool:
    """True about one time in ten (hypothesis leans to small integers, so the top one)."""
    return draw(st.integers(0, 9)) == 9


@st.composite
def axis_source(draw: st.DrawFn, name: str) -> Any:
    values = FIELD_VALUES[name]
    kind = draw(st.integers(0, 7))
    if kind <= 4:
        return draw(st.lists(values, max_size=5))
    if kind == 3:
        step = draw(st.sampled_from([0, -1, 0.5, 1, 2, 0.25, "x"]))
        return {"start": draw(st.integers(-5, 30)), "stop": draw(st.integers(-5, 30)), "step": step}
    if kind == 4:
        return {"count": draw(st.sampled_from([-1, 0, 1, 3, 2.5, "3"])), "from": draw(scalars)}
    return draw(st.one_of(scalars, st.just({"file": "nope.txt"}), st.just({"glob": "*.png"})))


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": draw(st.sampled_from(["community/wan-2-2/vace-fun"] * 9 + ["nope/model"])),
        "inputs": {n: draw(FIELD_VALUES[n]) for n in draw(st.lists(field_names, max_size=4))},
    }
    spec["inputs"].setdefault("prompt", "a fox")
    spec["inputs"].setdefault("image", "https://example.com/a.png")
    names = draw(st.lists(field_names, max_size=3, unique=True))
    spec["axes"] = {name: draw(axis_source(name)) for name in names}
    if draw(st.booleans()):
        zipped = draw(st.lists(field_names, min_size=1, max_size=2, unique=True))
        length = draw(st.integers(0, 3))
        spec["zip"] = [
            {n: draw(st.lists(FIELD_VALUES[n], min_size=length, max_size=length)) for n in zipped}
        ]
    for key in ("include", "exclude"):
        if draw(st.booleans()):
            fields = draw(st.lists(field_names, min_size=1, max_size=3, unique=True))
            rule = st.fixed_dictionaries({n: FIELD_VALUES[n] for n in fields})
            spec[key] = draw(scalars) if rarely(draw) else draw(st.lists(rule, max_size=3))
    if draw(st.booleans()):
        spec["repeat"] = draw(scalars) if rarely(draw) else draw(st.integers(1, 4))
    if draw(st.booleans()):
        spec["run"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "concurrency": st.one_of(st.integers(1, 20), scalars),
                    "poll_interval": st.one_of(st.floats(0.1, 5), scalars),
                    "max_cost": st.one_of(st.floats(0.1, 50), scalars),
                    "filename": st.one_of(
                        st.sampled_from(
                            ["{seed}_{key}", "../{seed}", "/abs/{seed}", "{nope}", "{"]
                        ),
                        weird_text,
                    ),
                    "bogus": scalars,
                },
            )
        )
    if rarely(draw):
        spec[draw(st.sampled_from(["axs", "name", "schema", "model"]))] = draw(scalars)
    return spec


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs with only good values and shapes: every one must plan."""
    names = sorted(n for n in GOOD if n != "56_text")  # the prompt's raw key: one or the other
    varied = draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
    split = draw(st.integers(0, len(varied)))
    axes, zipped = varied[:split], varied[split:]
    spec: dict[str, Any] = {
        "model": "community/wan-2-2/vace-fun",
        "inputs": {"prompt": "a fox", "image": "https://example.com/a.png"},
        "axes": {n: draw(st.lists(GOOD[n], min_size=1, max_size=4)) for n in axes},
    }
    if "steps" in axes and draw(st.booleans()):
        start = draw(st.integers(2, 30))
        spec["axes"]["steps"] = {"start": start, "stop": draw(st.integers(start, 40)), "step": 2}
    if "seed" in axes and draw(st.booleans()):
        spec["axes"]["seed"] = {"count": draw(st.integers(1, 5)), "from": draw(st.integers(0, 9))}
    if zipped:
        length = draw(st.integers(1, 3))
        spec["zip"] = [
            {n: draw(st.lists(GOOD[n], min_size=length, max_size=length)) for n in zipped}
        ]
    for key in ("include", "exclude"):
        fields = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        rule = st.fixed_dictionaries({n: GOOD[n] for n in fields})
        spec[key] = draw(st.lists(rule, max_size=2))
    spec["repeat"] = draw(st.integers(1, 3))
    return spec


def plan_or_one_line_error(path: Path) -> int | None:
    """The planned job count, or None after checking the failure is a one-line ComfysweepError."""
    try:
        spec = load_spec(path)
        count = count_jobs(spec)
        summary = plan_summary(spec)
    except ComfysweepError as exc:
        message = str(exc)
        assert message
        assert "\n" not in message, message
        assert "Traceback" not in message
        return None
    assert summary["jobs"] == count.jobs
    if count.jobs <= ITERATE_UP_TO:
        keys = [job.key for job in iter_jobs(spec)]
        assert len(keys) == count.jobs
        assert len(set(keys)) == len(keys)
        assert [job.index for job in iter_jobs(spec)] == list(range(count.jobs))
        assert summary["output_seconds"] == walked_seconds(spec)
    else:
        assert count.jobs == math.prod(count.axes.values()) * spec.repeat or count.excluded
        assert sum(1 for _ in itertools.islice(iter_jobs(spec), ITERATE_UP_TO)) == ITERATE_UP_TO
    return count.jobs


def walked_seconds(spec: Any) -> float | None:
    """Seconds of video the spec makes, summed job by job (None unless all are numbers)."""
    total = Fraction(0)
    for values in iter_inputs(spec):
        frames, fps = values.get("25_value"), values.get("38_value")
        numbers = [v for v in (frames, fps) if type(v) in (int, float) and math.isfinite(v)]
        if len(numbers) < 2 or Fraction(fps) <= 0:
            return None
        total += Fraction(frames) / Fraction(fps)
    return float(total * spec.repeat)


def test_the_valid_base_spec_plans(tmp_path: Path) -> None:
    path = tmp_path / "valid.yaml"
    path.write_text(VALID)
    # 3 seeds x 3 steps x 3 cfg - 3 excluded (steps 8, cfg 3.0) + 1 included, twice.
    assert plan_or_one_line_error(path) == (27 - 3 + 1) * 2


@FUZZ
@given(spec=spec_dicts())
def test_generated_spec_structures(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    plan_or_one_line_error(path)


@FUZZ
@given(spec=valid_specs())
def test_generated_valid_specs_always_plan(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "valid.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    assert plan_or_one_line_error(path) is not None, spec


@FUZZ
@given(text=st.text(max_size=300))
def test_random_yaml_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    plan_or_one_line_error(path)


@FUZZ
@given(
    cut=st.integers(0, len(VALID)),
    length=st.integers(0, 12),
    insert=st.text(alphabet=":-[]{}\"'&*!|>%@` \n\t#,?0aé\x00", max_size=6),
)
def test_mutated_valid_spec(tmp_path: Path, cut: int, length: int, insert: str) -> None:
    path = tmp_path / "mutated.yaml"
    path.write_text(VALID[:cut] + insert + VALID[cut + length :], encoding="utf-8")
    plan_or_one_line_error(path)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=spec_dicts())
def test_cli_plan_is_exit_0_or_one_line_exit_1(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    result = CliRunner().invoke(cli, ["plan", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("Error: ")


HEAD = """\
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox
"""
IMAGE = "  image: https://example.com/a.png\n"


@st.composite
def alias_bombs(draw: st.DrawFn) -> dict[str, str]:
    """Anchors of lists (or merges) of aliases, levels deep: fanout**levels values."""
    levels, fanout = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    if draw(st.booleans()):
        leaf = draw(st.sampled_from(["lol", "7", "{a: 1}"]))
        anchors = [f"&l0 [{', '.join([leaf] * fanout)}]"]
        anchors += [f"&l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels)]
        where = draw(st.sampled_from(["axes:\n  seed: ", "include: ", "exclude: ", "zip: "]))
        return {"s.yaml": HEAD + IMAGE + where + f"[{', '.join(anchors)}]\n"}
    anchors = ["&m0 {concurrency: 2}"]
    anchors += [
        f"&m{i} {{<<: [{', '.join([f'*m{i - 1}'] * fanout)}], downloads: {i % 4 + 1}}}"
        for i in range(1, levels)
    ]
    body = f"exclude: [{', '.join(anchors)}]\nrun: {{<<: *m{levels - 1}}}\n"
    return {"s.yaml": HEAD + IMAGE + body}


@st.composite
def deep_nesting(draw: st.DrawFn) -> dict[str, str]:
    depth = draw(st.one_of(st.integers(1, 120), st.integers(120, 3000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")]))
    value = opener * depth + "1" + closer * depth
    if draw(st.booleans()):  # block style: one more indent a level
        value = "".join(f"\n{'  ' * (i + 2)}k{i}:" for i in range(depth)) + " 1"
    where = draw(st.sampled_from(["axes:\n  seed: ", "include:\n  - seed: ", "x: "]))
    return {"s.yaml": HEAD + IMAGE + where + value + "\n"}


@st.composite
def huge_integers(draw: st.DrawFn) -> dict[str, str]:
    digits = draw(st.integers(4290, 4310))
    number = draw(st.sampled_from(["", "-", "+"])) + "1" * digits
    if draw(st.booleans()):
        number = "0x" + "f" * draw(st.integers(3560, 3600))  # about 4,300 decimal digits
    place = draw(st.sampled_from(["yaml", "lines", "jsonl", "csv"]))
    if place == "yaml":
        return {"s.yaml": HEAD + IMAGE + f"axes:\n  seed: [1, {number}]\n"}
    if place == "lines":
        return {"s.yaml": HEAD + IMAGE + "axes:\n  seed: {file: n.txt}\n", "n.txt": number}
    table = ("rows.jsonl", f'{{"seed": {number}}}\n') if place == "jsonl" else ("rows.csv", "")
    if place == "csv":
        table = ("rows.csv", f"seed\n{number}\n")
    return {"s.yaml": HEAD + IMAGE + f"zip:\n  - file: {table[0]}\n", table[0]: table[1]}


@st.composite
def long_csv_cells(draw: st.DrawFn) -> dict[str, str]:
    size = draw(st.integers(128 * 1024 - 4, 128 * 1024 + 4))
    quoted = draw(st.booleans())
    cell = ('"' + "a" * size + '"') if quoted else "a" * size
    rows = "prompt,seed\n" + "a,1\n" * draw(st.integers(0, 3)) + f"{cell},2\n"
    return {
        "s.yaml": HEAD.replace("  prompt: a fox\n", IMAGE) + "zip:\n  - file: r.csv\n",
        "r.csv": rows,
    }


@st.composite
def nul_paths(draw: st.DrawFn) -> dict[str, str]:
    name = draw(st.sampled_from(["a\\0b.png", "\\0.png", "x/\\0/y.png", "a.png\\0"]))
    return {
        "s.yaml": HEAD
        + draw(
            st.sampled_from(
                [
                    f'  image: "{name}"\n',
                    f'axes:\n  image: [one.png, "{name}"]\n',
                    f'  image: one.png\naxes:\n  prompt: {{file: "{name}.txt"}}\n',
                    f'  image: one.png\nzip:\n  - file: "{name}.csv"\n',
                    f'  image: one.png\naxes:\n  image: {{glob: "{name}"}}\n',
                    f'  image: one.png\nrun:\n  output: "{name}"\n',
                    f'  image: one.png\ninclude:\n  - image: "{name}"\n',
                    f'  image: one.png\nexclude:\n  - image: "{name}"\n',
                ]
            )
        )
    }


@HOSTILE
@given(
    files=st.one_of(alias_bombs(), deep_nesting(), huge_integers(), long_csv_cells(), nul_paths())
)
def test_hostile_shapes_plan_or_fail_in_one_line(tmp_path: Path, files: dict[str, str]) -> None:
    (tmp_path / "one.png").write_bytes(b"not really a png")
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    plan_or_one_line_error(tmp_path / "s.yaml")
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "s.yaml"), "--json"])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code == 1:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


DURATION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "frames": st.sampled_from([81, 141]),
    "fps": st.integers(12, 17),
    "steps": st.integers(2, 6),
    "seed": st.integers(0, 4),
    "cfg": st.sampled_from([1.0, 2.5]),
}


@st.composite
def exclude_heavy_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Small grids where frames and fps vary, with up to 60 exclude rules (more than the 16 that
    inclusion-exclusion once took) and a few include entries."""
    axes = {
        name: draw(st.lists(DURATION_VALUES[name], min_size=1, max_size=6, unique=True))
        for name in draw(
            st.lists(
                st.sampled_from(["frames", "fps", "steps", "seed"]),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
    }
    spec: dict[str, Any] = {
        "model": "community/wan-2-2/vace-fun",
        "inputs": {"prompt": "a fox", "image": "https://example.com/a.png", "cfg": 2.5},
        "axes": axes,
    }
    if "frames" in axes and "fps" in axes and draw(st.booleans()):
        length = draw(st.integers(1, 4))  # frames and fps zipped together instead
        spec["zip"] = [
            {
                n: draw(st.lists(DURATION_VALUES[n], min_size=length, max_size=length))
                for n in ("frames", "fps")
            }
        ]
        del axes["frames"], axes["fps"]
    rule = st.fixed_dictionaries({}, optional=DURATION_VALUES).filter(bool)
    spec["exclude"] = draw(
        st.one_of(st.lists(rule, max_size=6), st.lists(rule, min_size=17, max_size=60))
    )
    include = st.fixed_dictionaries({n: DURATION_VALUES[n] for n in ("frames", "fps", "steps")})
    spec["include"] = draw(st.lists(include, max_size=3))
    spec["repeat"] = draw(st.integers(1, 2))
    return spec


@FUZZ
@given(spec=exclude_heavy_specs())
def test_many_exclude_rules_with_varying_frames_and_fps(
    tmp_path: Path, spec: dict[str, Any]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan_or_one_line_error(path)
