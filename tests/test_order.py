"""Run order: breadth spreads any prefix evenly, shuffle is a seeded permutation, resume keeps it"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.cli import cli
from orchestrator.deadline import Deadline
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import SpecError
from orchestrator.grid import iter_jobs
from orchestrator.order import Breadth, Shuffle, is_seed_like
from orchestrator.spec import Dimension, load_spec
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .postgres import fresh_schema
from .waiting import store_events

SPEC = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
axes:
  cfg: [1.0, 2.0, 3.0, 4.0]
  steps: [4, 8, 12]
  seed: [1, 2]
repeat: {repeat}
run:
  output: {output}
  poll_interval: 0.02
  rate: 1000
  order: {order}
"""


def write(tmp_path: Path, order: str = "breadth", *, repeat: int = 1, name: str = "ord") -> Path:
    path = tmp_path / f"{name}.yaml"
    output = tmp_path / "results"
    path.write_text(SPEC.format(name=name, output=output, order=order, repeat=repeat))
    return path


def dims(*sizes: int, seeds: tuple[int, ...] = ()) -> list[Dimension]:
    """Dimensions of the given sizes; those whose position is in ``seeds`` are seed axes."""
    out = []
    for j, n in enumerate(sizes):
        key = "seed" if j in seeds else f"axis{j}"
        out.append(Dimension(key, (key,), tuple((v,) for v in range(n)), n))
    return out


def ordered(
    sizes: list[int], seeds: tuple[int, ...], repeat: int
) -> list[tuple[tuple[int, ...], int]]:
    """Every (coordinates, repeat) of a grid, sorted by breadth rank; ranks checked distinct."""
    rank = Breadth(dims(*sizes, seeds=seeds), repeat, extras=0)
    places = [
        (coords, r)
        for coords in itertools.product(*(range(n) for n in sizes))
        for r in range(repeat)
    ]
    ranks = {rank(0, coords, 0, r): (coords, r) for coords, r in places}
    assert len(ranks) == len(places)
    return [ranks[k] for k in sorted(ranks)]


grids = st.tuples(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),
    st.sets(st.integers(0, 3), max_size=2),
    st.integers(1, 3),
)


@given(grids)
def test_breadth_gives_every_cell_its_first_seed_before_any_its_second(
    grid: tuple[list[int], set[int], int],
) -> None:
    sizes, seed_set, repeat = grid
    seeds = tuple(s for s in seed_set if s < len(sizes))
    cells = [j for j in range(len(sizes)) if j not in seeds]
    n_cells = math.prod(sizes[j] for j in cells)
    seen: Counter[tuple[int, ...]] = Counter()
    for coords, _ in ordered(sizes, seeds, repeat):
        cell = tuple(coords[j] for j in cells)
        seen[cell] += 1
        # After any prefix: no cell is two jobs ahead of another (untouched cells count 0).
        low = min(seen.values()) if len(seen) == n_cells else 0
        assert max(seen.values()) - low <= 1


@given(grids)
def test_breadth_visits_a_coarse_grid_first_within_each_pass(
    grid: tuple[list[int], set[int], int],
) -> None:
    """Each cell axis reaches its upper half within the first 2**(axes-1)+1 cells of a pass."""
    sizes, seed_set, repeat = grid
    seeds = tuple(s for s in seed_set if s < len(sizes))
    cells = [j for j in range(len(sizes)) if j not in seeds and sizes[j] > 1]
    n_cells = math.prod(sizes[j] for j in range(len(sizes)) if j not in seeds)
    order = ordered(sizes, seeds, repeat)
    early = 2 ** max(0, len(cells) - 1) + 1
    for start in range(0, len(order), n_cells):
        first = [coords for coords, _ in order[start : start + early]]
        for j in cells:
            assert any(c[j] >= sizes[j] / 2 for c in first), (j, first)


def test_breadth_on_a_4_by_4_grid_starts_at_its_corners_not_row_by_row() -> None:
    first = [coords for coords, _ in ordered([4, 4], (), 1)][:8]
    assert first[:4] == [(0, 0), (2, 0), (0, 2), (2, 2)]
    assert first[4:] == [(1, 0), (3, 0), (1, 2), (3, 2)]


def test_seed_like_axes_are_named_seed_by_raw_key_or_friendly_name() -> None:
    def named(*keys: str) -> Dimension:
        return Dimension("+".join(keys), keys, ((1,) * len(keys),), 1)

    assert is_seed_like(named("seed"))
    assert is_seed_like(named("98_seed"))
    assert is_seed_like(named("noise_seed", "Seed"))
    assert is_seed_like(named("98_x"), {"98_x": "seed"}.get)  # type: ignore[arg-type]
    assert not is_seed_like(named("seed", "47_value"))
    assert not is_seed_like(named("seeds"))


@given(st.integers(0, 5000), st.integers(0, 2**64))
def test_shuffle_is_a_permutation(total: int, seed: int) -> None:
    shuffle = Shuffle(total, seed)
    assert sorted(shuffle(i, None, 0, 0) for i in range(total)) == list(range(total))


def test_shuffle_is_reproducible_and_seeded() -> None:
    first = [Shuffle(1000, 7)(i, None, 0, 0) for i in range(1000)]
    assert first == [Shuffle(1000, 7)(i, None, 0, 0) for i in range(1000)]
    assert first != [Shuffle(1000, 8)(i, None, 0, 0) for i in range(1000)]
    assert first != list(range(1000))


def test_a_spec_breadth_order_passes_over_cfg_x_steps_once_per_seed_and_repeat(
    tmp_path: Path,
) -> None:
    jobs = list(iter_jobs(load_spec(write(tmp_path, repeat=2))))
    by_rank = sorted(jobs, key=lambda j: j.rank or 0)
    cells = [(j.inputs["108_cfg"], j.inputs["47_value"]) for j in by_rank]
    # 12 cells, 2 seeds x 2 repeats: four passes, each a permutation of the 12 cells.
    for p in range(4):
        assert len(set(cells[12 * p : 12 * (p + 1)])) == 12
    passes = [(j.inputs["98_seed"], j.repeat) for j in by_rank]
    assert passes == [(1, 0)] * 12 + [(1, 1)] * 12 + [(2, 0)] * 12 + [(2, 1)] * 12
    # The grid index (file names, manifest) is unchanged: nested loops, seed and repeat fastest.
    assert [j.index for j in jobs] == list(range(48))
    assert (jobs[0].inputs["98_seed"], jobs[1].repeat, jobs[2].inputs["98_seed"]) == (1, 1, 2)


def test_grid_order_ranks_by_index_and_shuffle_by_a_permutation(tmp_path: Path) -> None:
    grid = list(iter_jobs(load_spec(write(tmp_path, "grid"))))
    assert [j.rank for j in grid] == [j.index for j in grid]
    shuffled = list(iter_jobs(load_spec(write(tmp_path, "shuffle"))))
    ranks = [j.rank for j in shuffled]
    assert sorted(r for r in ranks if r is not None) == list(range(24))
    assert ranks != list(range(24))
    assert ranks == [j.rank for j in iter_jobs(load_spec(write(tmp_path, "shuffle")))]
    seeded = write(tmp_path, "shuffle")
    seeded.write_text(seeded.read_text() + "  shuffle_seed: 3\n")
    assert [j.rank for j in iter_jobs(load_spec(seeded))] != ranks


def test_an_unknown_order_is_one_line_naming_the_flag_or_the_spec_field(tmp_path: Path) -> None:
    spec = write(tmp_path, "sideways")
    result = CliRunner().invoke(cli, ["run", str(spec), "--emulator", "--order", "sideways"])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--order': 'sideways' is not one of" in result.output
    with pytest.raises(SpecError, match=r"ord.yaml:\d+:\d+: run.order: must be one of"):
        load_spec(spec)
    assert not (tmp_path / "results").exists()


def claim_all(store: Store, n: int) -> list[str]:
    keys = []
    for _ in range(n):
        (row,) = store.claim(1)
        keys.append(row.key)
    return keys


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "s.sqlite")
        return
    with fresh_schema("order") as url:
        yield url


def test_claim_follows_the_rank_a_resume_keeps_it_and_a_new_order_reranks_pending(
    tmp_path: Path, db: str
) -> None:
    breadth = load_spec(write(tmp_path))
    expected = [j.key for j in sorted(iter_jobs(breadth), key=lambda j: j.rank or 0)]
    with Store.open(db) as store:
        store.sync_jobs(iter_jobs(breadth), breadth.model)
        first = claim_all(store, 5)
    with Store.open(db) as store:  # resumed: the same spec gives the same ranks
        assert store.sync_jobs(iter_jobs(breadth), breadth.model).new == 0
        first += claim_all(store, 7)
    assert first == expected[:12]
    grid = load_spec(write(tmp_path, "grid"))
    with Store.open(db) as store:
        store.sync_jobs(iter_jobs(grid), grid.model)
        rest = claim_all(store, 12)
        assert not store.claim(1)
    by_index = [j.key for j in iter_jobs(grid)]
    assert rest == [k for k in by_index if k not in first]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def test_a_run_at_concurrency_1_submits_in_breadth_order(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write(tmp_path)
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(concurrency=1, poll_interval=0.01),
    )
    assert report.complete, report
    loaded = load_spec(spec)
    expected = [j.key for j in sorted(iter_jobs(loaded), key=lambda j: j.rank or 0)]
    with Store.open(loaded.results_dir / "comfysweep.db", readonly=True) as store:
        rows = list(store.jobs([JobState.DONE]))
        submitted = [r.key for r in sorted(rows, key=lambda r: (r.submitted_at, r.index))]
    assert submitted == expected
    # The manifest keeps the grid order (the index), whatever the run order.
    lines = (loaded.results_dir / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(24))


def test_a_resumed_run_keeps_the_breadth_order(tmp_path: Path, emulator: Emulator) -> None:
    """The first run stops at a deadline after 5 jobs; the second submits the rest, in order."""
    spec = write(tmp_path)
    loaded = load_spec(spec)
    store = loaded.results_dir / "comfysweep.db"
    stop_after = Deadline(100.0, "06:30 today", lambda: 100.0 - 5 + store_events(store, "done"))
    overrides = Overrides(concurrency=1, poll_interval=0.01)
    api = {"base_url": emulator.base_url, "token": emulator.token}
    first = run_sweep(spec, overrides=overrides, until=stop_after, **api)
    assert (first.stop_kind, first.counts["done"]) == ("deadline", 5)
    assert run_sweep(spec, overrides=overrides, **api).complete
    expected = [j.key for j in sorted(iter_jobs(loaded), key=lambda j: j.rank or 0)]
    with Store.open(store, readonly=True) as db:
        rows = sorted(db.jobs(), key=lambda r: (r.submitted_at, r.index))
    assert [r.key for r in rows] == expected
