"""The run order (``run.order``): each job's rank, the place it is claimed in, from its grid place.

``index`` is the grid position (nested loops, first dimension slowest) that file names and the
manifest keep; ``rank`` is what claim follows. Each rank is computed from one job's place alone, a
closed form with no sorting, so a million-job grid streams into the store in batches:

- ``grid``: rank = index.
- ``breadth`` (the default): the grid's *cells* (one value of every dimension that is not
  seed-like) are visited in passes: pass ``p`` gives every cell its ``p``-th seed/repeat, so every
  cell has its first job before any has its second. Within a pass the cells come spread out, a
  coarse grid first and then the points between (each dimension's values in bit-reversed order,
  the dimensions' bits interleaved: a 4 x 4 grid starts at its corners 0 and 2 of each axis).
  A dimension is *seed-like* when each of its fields is a seed: its raw key or friendly name,
  lowercased, is ``seed`` or ends in ``seed`` (``seed``, ``98_seed``, ``noise_seed``); ``repeat``
  copies are seed-like too. A zip group that mixes seeds with other fields is a cell dimension.
  ``include`` entries outside the grid are cells of their own, after the grid's in each pass.
- ``shuffle``: a seeded permutation of the job indexes (a 4-round Feistel network over the next
  even power of two, cycle-walked into range): reproducible from ``run.shuffle_seed``, by default
  derived from the sweep's name.

Ranks need not be dense (a grid side of 3 leaves the gaps of 4); only their order matters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.spec import Dimension, Spec

__all__ = ["ORDERS", "Breadth", "Ranks", "Shuffle", "is_seed_like", "ranks"]

ORDERS = ("grid", "breadth", "shuffle")
# Ranks stay below this (the store's BIGINT); a grid whose breadth ranks would not falls back to
# grid order.
_MAX_RANK = 2**62
_MASK64 = 2**64 - 1


class Ranks(Protocol):
    """A job's rank from its place: grid index, grid coordinates (None for an include entry
    outside the grid), its number among those include entries, and its repeat copy."""

    def __call__(
        self, index: int, coords: tuple[int, ...] | None, extra: int, repeat: int
    ) -> int: ...


def ranks(
    spec: Spec, *, jobs: Callable[[], int], extras: int, model: tuple[int, int] = (0, 1)
) -> Ranks:
    """The rank function of ``spec.run.order``; ``jobs()`` counts the spec's jobs (for shuffle),
    ``extras`` is the number of include entries outside the grid.

    ``model`` is (this part's model number, how many models) in a sweep of several: the grid and
    shuffle orders run over the whole sweep's index; breadth interleaves the models, so each
    pass gives every model's cells their next job (rank x models + model number)."""
    order = spec.run.order
    if order == "shuffle":
        seed = spec.run.shuffle_seed
        return Shuffle(jobs(), _name_seed(spec.name) if seed is None else seed)
    if order == "breadth":
        breadth = Breadth(spec.dimensions, spec.repeat, extras, spec.definition.display_name)
        m, models = model
        if models == 1 and breadth.bound < _MAX_RANK:
            return breadth
        if breadth.bound * models < _MAX_RANK:
            return _Interleaved(breadth, m, models)
    return _grid


class _Interleaved:
    """One model's breadth ranks spread among the other models' (see ``ranks``)."""

    def __init__(self, breadth: Breadth, m: int, models: int) -> None:
        self.breadth, self.m, self.models = breadth, m, models

    def __call__(self, index: int, coords: tuple[int, ...] | None, extra: int, repeat: int) -> int:
        return self.breadth(index, coords, extra, repeat) * self.models + self.m


def _grid(index: int, coords: tuple[int, ...] | None, extra: int, repeat: int) -> int:
    return index


def is_seed_like(dim: Dimension, display_name: Callable[[str], str] = str) -> bool:
    """Whether every field of ``dim`` is a seed (by its raw key or its friendly name)."""

    def seed(name: str) -> bool:
        return name.lower().endswith("seed")

    return all(seed(key) or seed(display_name(key)) for key in dim.keys)


class Breadth:
    """Passes over the cells, one seed/repeat each, the cells of a pass spread out (see above)."""

    def __init__(
        self,
        dims: Sequence[Dimension],
        repeat: int,
        extras: int,
        display_name: Callable[[str], str] = str,
    ) -> None:
        seeds = [is_seed_like(d, display_name) for d in dims]
        # Each cell dimension's row -> its bits' share of the position within a pass.
        cell_dims = [(j, len(d.rows)) for j, d in enumerate(dims) if not seeds[j]]
        bits = [max(0, (n - 1).bit_length()) for _, n in cell_dims]
        tables = [[0] * n for _, n in cell_dims]
        k = 0
        for level in range(max(bits, default=0)):
            for t, b in enumerate(bits):
                if level < b:
                    shift = b - 1 - level
                    for value, _ in enumerate(tables[t]):
                        tables[t][value] |= ((value >> shift) & 1) << k
                    k += 1
        spread = dict(zip((j for j, _ in cell_dims), tables, strict=True))
        self.grid_width = 1 << k
        self.width = self.grid_width + extras  # positions in one pass
        # A pass is (seed-like rows, row-major, first slowest) x repeat copies; each dimension's
        # table holds its rows' share of the rank, so a rank is one lookup per dimension.
        self.tables: list[list[int]] = [[] for _ in dims]
        stride = repeat * self.width
        for j in reversed(range(len(dims))):
            if seeds[j]:
                self.tables[j] = [row * stride for row in range(len(dims[j].rows))]
                stride *= len(dims[j].rows)
            else:
                self.tables[j] = spread[j]
        self.bound = stride

    def __call__(self, index: int, coords: tuple[int, ...] | None, extra: int, repeat: int) -> int:
        if coords is None:
            return repeat * self.width + self.grid_width + extra
        # One lookup per dimension (coords has one row per table), summed in C.
        return repeat * self.width + sum(map(list.__getitem__, self.tables, coords))


class Shuffle:
    """A reproducible permutation of ``range(total)`` computed one index at a time."""

    def __init__(self, total: int, seed: int) -> None:
        self.total = total
        half = max(1, math.ceil(max(1, (total - 1).bit_length()) / 2))
        self.half = half
        self.mask = (1 << half) - 1
        digest = hashlib.sha256(f"comfysweep-shuffle:{seed}".encode()).digest()
        self.keys = [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8)]

    def __call__(self, index: int, coords: tuple[int, ...] | None, extra: int, repeat: int) -> int:
        if self.total <= 1:
            return index
        x = self._permute(index)
        while x >= self.total:  # cycle-walking: stays a bijection of [0, total)
            x = self._permute(x)
        return x

    def _permute(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            h = ((right ^ key) * 0x9E3779B97F4A7C15) & _MASK64
            h ^= h >> 29
            left, right = right, left ^ (h & self.mask)
        return (left << self.half) | right


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
