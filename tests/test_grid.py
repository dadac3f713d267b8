from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import count_jobs, get_model, iter_jobs, job_key, load_spec
from orchestrator.sources import LocalImage

WAN = "community/wan-2-2/vace-fun"
PNG = Path(__file__).resolve().parents[1] / "sweeps" / "start.png"
BASE = {"prompt": "a fox", "image": "https://example.com/a.png"}


def spec_from(folder: Path, body: dict[str, Any]) -> Any:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"model": WAN, "inputs": dict(BASE), **body}, sort_keys=False))
    return load_spec(path)


def test_keys_are_job_key_of_model_complete(tmp_path: Path) -> None:
    spec = spec_from(tmp_path, {"axes": {"seed": [1, 2], "cfg": [4, 5.5], "shift": [5]}})
    model = get_model(WAN)
    jobs = list(iter_jobs(spec))
    combos = list(itertools.product([1, 2], [4, 5.5], [5]))
    assert len(jobs) == len(combos) == 4
    for i, (job, (seed, cfg, shift)) in enumerate(zip(jobs, combos, strict=True)):
        complete = model.complete({**BASE, "seed": seed, "cfg": cfg, "shift": shift})
        assert job.inputs == complete
        assert [type(v) for v in job.inputs.values()] == [type(v) for v in complete.values()]
        assert job.key == job_key(WAN, complete)
        assert (job.index, job.repeat, job.model_id) == (i, 0, WAN)
    assert jobs[0].friendly()["cfg"] == 4.0
    assert jobs[0].friendly()["prompt"] == "a fox"


def test_same_spec_same_keys_same_order(tmp_path: Path) -> None:
    body = {"axes": {"seed": {"count": 5, "from": 9}, "steps": [4, 8]}}
    first = [j.key for j in iter_jobs(spec_from(tmp_path, body))]
    again = [j.key for j in iter_jobs(spec_from(tmp_path, body))]
    assert first == again
    assert len(set(first)) == 10


def test_order_zip_first_then_axes_last_fastest_repeats_adjacent(tmp_path: Path) -> None:
    body = {
        "inputs": {"image": BASE["image"]},
        "zip": [{"prompt": ["a", "b"], "fps": [12, 24]}],
        "axes": {"seed": [1, 2], "steps": [4, 8]},
        "repeat": 2,
    }
    jobs = list(iter_jobs(spec_from(tmp_path, body)))
    seen = [
        (j.inputs["56_text"], j.inputs["98_seed"], j.inputs["47_value"], j.repeat) for j in jobs
    ]
    expected = [(p, s, st_, r) for p in "ab" for s in (1, 2) for st_ in (4, 8) for r in (0, 1)]
    assert seen == expected
    assert [j.index for j in jobs] == list(range(16))
    assert jobs[0].inputs == jobs[1].inputs
    assert jobs[1].key == job_key(WAN, jobs[0].inputs, 1)
    assert jobs[0].key == job_key(WAN, jobs[0].inputs)  # copy 0 keeps the bare key


def test_float_axis_values_collapse_after_normalisation(tmp_path: Path) -> None:
    spec = spec_from(tmp_path, {"axes": {"cfg": [4, 4.0, 5], "steps": [8, 8, 12]}})
    count = count_jobs(spec)
    assert count.jobs == 4
    assert count.duplicates == 9 - 4
    assert count.axes == {"cfg": 2, "steps": 2}
    assert [j.inputs["108_cfg"] for j in iter_jobs(spec)] == [4.0, 4.0, 5.0, 5.0]


def test_duplicate_zip_rows_collapse(tmp_path: Path) -> None:
    body = {
        "inputs": {"image": BASE["image"]},
        "zip": [{"prompt": ["a", "b", "a"], "cfg": [3, 4, 3.0]}],
    }
    spec = spec_from(tmp_path, body)
    assert count_jobs(spec).jobs == 2
    assert count_jobs(spec).duplicates == 1
    assert count_jobs(spec).axes == {"prompt+cfg": 2}


def test_include_adds_new_and_collapses_existing(tmp_path: Path) -> None:
    body = {
        "axes": {"seed": [1, 2], "steps": [8, 12]},
        "include": [{"seed": 7, "steps": 40}, {"seed": 1, "steps": 8}, {"seed": 7, "steps": 40}],
    }
    spec = spec_from(tmp_path, body)
    count = count_jobs(spec)
    jobs = list(iter_jobs(spec))
    assert (count.jobs, count.included, count.duplicates) == (5, 1, 2)
    assert len(jobs) == 5
    assert (jobs[-1].inputs["98_seed"], jobs[-1].inputs["47_value"]) == (7, 40)
    assert jobs[-1].index == 4
    assert jobs[-1].inputs["108_cfg"] == 3.5  # include entries merge over inputs and defaults


def test_exclude_drops_grid_jobs_but_not_includes(tmp_path: Path) -> None:
    body = {
        "axes": {"steps": [8, 12, 20], "cfg": [2.0, 3.0]},
        "exclude": [{"steps": 20, "cfg": 2.0}, {"steps": 8}],
        "include": [{"steps": 8, "cfg": 2.0}],
    }
    spec = spec_from(tmp_path, body)
    got = [(j.inputs["47_value"], j.inputs["108_cfg"]) for j in iter_jobs(spec)]
    assert got == [(12, 2.0), (12, 3.0), (20, 3.0), (8, 2.0)]
    count = count_jobs(spec)
    assert (count.jobs, count.excluded, count.included) == (4, 3, 1)


def test_exclude_on_a_fixed_field_and_a_value_not_in_the_grid(tmp_path: Path) -> None:
    body = {"axes": {"steps": [8, 12]}, "exclude": [{"frames": 141}, {"cfg": 9.0}]}
    assert count_jobs(spec_from(tmp_path, body)).jobs == 2
    body = {"axes": {"steps": [8, 12]}, "exclude": [{"frames": 81, "steps": 8}]}
    assert [j.inputs["47_value"] for j in iter_jobs(spec_from(tmp_path, body))] == [12]


def test_many_exclude_rules_count_exactly(tmp_path: Path) -> None:
    rules = [{"seed": s} for s in range(20)]
    body = {"axes": {"seed": list(range(30)), "steps": [4, 8]}, "exclude": rules}
    spec = spec_from(tmp_path, body)
    assert count_jobs(spec).jobs == sum(1 for _ in iter_jobs(spec)) == 20


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.integers(2, 6), min_size=1, max_size=4),
    cfg=st.lists(st.sampled_from([1, 1.0, 2, 2.5, 3.0]), min_size=1, max_size=4),
    rows=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from([12, 16])), min_size=1, max_size=4
    ),
    exclude=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "steps": st.integers(2, 6),
                "cfg": st.sampled_from([1, 2.5]),
                "fps": st.sampled_from([12, 16]),
                "prompt": st.sampled_from("ab"),
            },
        ).filter(bool),
        max_size=4,
    ),
    include=st.lists(
        st.fixed_dictionaries({"steps": st.integers(2, 6), "cfg": st.sampled_from([1, 2.0, 4])}),
        max_size=3,
    ),
    repeat=st.integers(1, 2),
)
def test_count_matches_iteration_and_keys_are_unique(
    tmp_path: Path,
    steps: list[int],
    cfg: list[float],
    rows: list[tuple[str, int]],
    exclude: list[dict[str, Any]],
    include: list[dict[str, Any]],
    repeat: int,
) -> None:
    body = {
        "inputs": {"image": BASE["image"]},
        "zip": [{"prompt": [r[0] for r in rows], "fps": [r[1] for r in rows]}],
        "axes": {"steps": steps, "cfg": cfg},
        "exclude": exclude,
        "include": [{"prompt": "a", **e} for e in include],
        "repeat": repeat,
    }
    spec = spec_from(tmp_path, body)
    jobs = list(iter_jobs(spec))
    count = count_jobs(spec)
    assert count.jobs == len(jobs)
    assert len({j.key for j in jobs}) == len(jobs)
    raw = len(rows) * len(steps) * len(cfg) + len(include)
    assert count.jobs + count.duplicates + count.excluded == raw * repeat


def test_a_million_jobs_count_arithmetically_and_iterate_lazily(tmp_path: Path) -> None:
    body = {
        "axes": {
            "seed": {"count": 1000, "from": 1},
            "cfg": {"start": 0.1, "stop": 10.0, "step": 0.1},
            "shift": list(range(1, 11)),
        }
    }
    spec = spec_from(tmp_path, body)
    assert count_jobs(spec).jobs == 1_000_000
    tracemalloc.start()
    try:
        for job in itertools.islice(iter_jobs(spec), 10_000):
            assert job.index < 10_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024  # flat: nothing accumulates per job


def test_each_image_is_read_once_per_iteration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, colour in (("a", b"1"), ("b", b"2"), ("c", b"3")):
        (tmp_path / f"{name}.png").write_bytes(PNG.read_bytes() + colour)
    reads: list[str] = []
    original = LocalImage.data_uri

    def counting(self: LocalImage) -> str:
        reads.append(self.label)
        return original(self)

    monkeypatch.setattr(LocalImage, "data_uri", counting)
    body = {"inputs": {"prompt": "a"}, "axes": {"image": {"glob": "*.png"}, "seed": {"count": 500}}}
    spec = spec_from(tmp_path, body)
    jobs = list(iter_jobs(spec))
    assert len(jobs) == 1500
    assert sorted(reads) == ["a.png", "b.png", "c.png"]
    assert jobs[0].sources == {"118_image": "a.png"}


def test_identical_image_files_are_one_value(tmp_path: Path) -> None:
    (tmp_path / "one.png").write_bytes(PNG.read_bytes())
    (tmp_path / "two.png").write_bytes(PNG.read_bytes())
    spec = spec_from(
        tmp_path, {"inputs": {"prompt": "a"}, "axes": {"image": ["one.png", "two.png"]}}
    )
    assert count_jobs(spec).jobs == 1
    assert count_jobs(spec).duplicates == 1


def test_spec_with_only_inputs_counts_one(tmp_path: Path) -> None:
    spec = spec_from(tmp_path, {})
    assert count_jobs(spec).jobs == 1
    assert count_jobs(spec).axes == {}


def test_images_are_hashed_only_when_sizes_match(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(PNG.read_bytes() + b"x" * i)
    (tmp_path / "5.png").write_bytes(PNG.read_bytes() + b"y" * 4)  # same size as 4.png
    body = {"inputs": {"prompt": "a"}, "axes": {"image": {"glob": "*.png"}}}
    spec = spec_from(tmp_path, body)
    (images,) = [[row[0] for row in d.rows] for d in spec.dimensions]
    assert len(images) == 6
    read = [image.label for image in images if image._digest is not None]
    assert read == ["4.png", "5.png"]
