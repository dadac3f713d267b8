"""A spec expanded into jobs (lazily, in a fixed order, each with its key) and counted without it.

Order: the zip groups, then the axes, each in spec order, the first slowest (like nested loops
written top to bottom); then the ``include`` entries; each combination's ``repeat`` copies are
adjacent. Values are already distinct per dimension (spec.py), and no field varies in two
dimensions, so the product has no duplicates and its size is plain arithmetic. ``exclude`` rules
drop grid jobs only (an ``include`` entry always runs); ``include`` entries already in the grid
collapse into it.

That order is each job's ``index``; the order jobs are submitted in is its ``rank``
(``run.order``, orchestrator/order.py), computed here from the job's place in the grid.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import order
from orchestrator.canonical import job_key
from orchestrator.errors import SpecError
from orchestrator.models import Model, get_model
from orchestrator.objects import ABSENT, present
from orchestrator.sources import (
    MAX_REQUEST_BYTES,
    LocalMedia,
    MediaList,
    Problem,
    request_length,
    shown,
)
from orchestrator.spec import MODEL, Spec, identity

__all__ = [
    "GridCount",
    "Job",
    "check_requests",
    "count_jobs",
    "iter_inputs",
    "iter_jobs",
    "iter_model_inputs",
    "weighted_total",
]

# Data URIs kept between jobs; a grid of a few images reads each file once.
_MEDIA_CACHE_BYTES = 256 * 1024 * 1024
# Below this many characters of data: URIs a job's request is not measured (the rest of the JSON
# is prompts and numbers, far less than this).
_REQUEST_SLACK = 2**20
# Counting the jobs exclude rules drop looks at most this many (rule, case) pairs: a few seconds.
_MAX_COUNT_WORK = 10_000_000

Rule = dict[int, frozenset[int]]  # dimension index -> row indices the rule matches there
Weights = list[list[Any] | None]  # per dimension, each row's weight (None: each weighs 1)


@dataclass(frozen=True)
class Job:
    """One submission: the exact POST body of a model and its identity (the job key)."""

    key: str  # orchestrator.canonical.job_key(model_id, inputs, repeat)
    index: int  # 0-based position in the grid order
    model_id: str
    inputs: dict[str, Any]  # raw keys, complete, normalised: exactly the POST body (do not mutate)
    repeat: int = 0
    # raw key -> the local file a data: URI came from (for a list input, each item's file or URL)
    sources: Mapping[str, str | list[str]] = field(default_factory=dict)
    rank: int | None = None  # the run order (orchestrator/order.py); None: the index
    # The spec's Model of this job (its map among its names); None: the registry's.
    definition: Model | None = field(default=None, compare=False, repr=False)

    def friendly(self) -> dict[str, Any]:
        """The inputs keyed by friendly name (the spec's common name) where the model has one."""
        model = self.definition or get_model(self.model_id)
        return {model.display_name(k): v for k, v in self.inputs.items()}


@dataclass(frozen=True)
class GridCount:
    """How many jobs a spec makes, and why."""

    jobs: int  # distinct jobs, repeats included
    duplicates: int  # jobs collapsed because an identical one already exists (repeats included)
    axes: dict[str, int]  # each dimension's name -> its number of distinct values (rows for zip)
    excluded: int = 0  # grid jobs dropped by exclude rules (repeats included)
    included: int = 0  # include entries that added a job (repeats included)


def iter_jobs(spec: Spec) -> Iterator[Job]:
    """Every job of the spec, lazily, in grid order, duplicates collapsed; reads each image once.

    A sweep of several models runs through its models in order (the slowest dimension), each
    model's jobs keyed by its own id and its own complete input, the index running on."""
    media = _MediaCache()
    parts = spec.each()
    index = 0
    for m, part in enumerate(parts):
        keys = sorted(part.definition.media_inputs)
        rules = _rules(part)
        extras = list(_extra(part, rules))
        rank = order.ranks(
            part, jobs=lambda: count_jobs(spec).jobs, extras=len(extras), model=(m, len(parts))
        )
        check_requests(part)
        written = [*part.fixed.values(), *(v for d in part.dimensions for r in d.rows for v in r)]
        lists = any(type(v) is tuple for v in [*written, *(v for e in extras for v in e.values())])
        model, definition, copies = part.model, part.definition, range(part.repeat)
        for coords, extra, values in _cells(part, rules, extras):
            inputs, sources = media.materialise(values, keys, lists=lists)
            for repeat in copies:
                key = job_key(model, inputs, repeat)
                at = rank(index, coords, extra, repeat)
                yield Job(key, index, model, inputs, repeat, sources, at, definition)
                index += 1


def check_requests(spec: Spec) -> None:
    """Refuse the spec if any job's POST body would pass RunComfy's 64 MiB per request, before a
    job is built or sent. The files' sizes say it, no file is read; the jobs are walked only when
    the largest files of every dimension together could pass the limit."""
    keys = sorted(spec.definition.media_inputs)
    if not keys:
        return
    varied = {k for d in spec.dimensions for k in d.keys}
    bound = request_length({k: spec.fixed[k] for k in keys if k in spec.fixed and k not in varied})
    for dim in spec.dimensions:
        bound += max(request_length(dict(zip(dim.keys, row, strict=True))) for row in dim.rows)
    extra = max((request_length(entry) for entry in spec.include), default=0)
    if max(bound, extra) <= MAX_REQUEST_BYTES - _REQUEST_SLACK:
        return
    for n, values in enumerate(iter_inputs(spec)):
        _check_request(spec, n * spec.repeat, values, keys)


def _check_request(spec: Spec, index: int, values: Mapping[str, Any], keys: list[str]) -> None:
    """Refuse a job whose POST body would pass RunComfy's 64 MiB per request, before any is
    sent: the files' sizes say it (no file is read), plus the rest of the JSON when near."""
    media = request_length({k: values[k] for k in keys if k in values})
    if media <= MAX_REQUEST_BYTES - _REQUEST_SLACK:
        return
    rest = {k: v for k, v in values.items() if not isinstance(v, LocalMedia | MediaList)}
    size = media + len(json.dumps(rest, default=list))
    if size <= MAX_REQUEST_BYTES:
        return
    model = spec.definition
    files = "; ".join(
        f"{model.display_name(k)}: {shown(values[k])}"
        for k in keys
        if isinstance(values.get(k), LocalMedia | MediaList)
    )
    raise SpecError(
        f"{spec.path}: job {index + 1} ({files}) would send {size / 2**20:.1f} MiB, above the "
        f"{MAX_REQUEST_BYTES // 2**20} MiB limit of a request; host some files at public https "
        "URLs instead"
    )


def iter_inputs(spec: Spec) -> Iterator[dict[str, Any]]:
    """Each distinct combination's complete input in grid order, repeats not expanded (every
    model's in turn: see ``iter_model_inputs`` for which model each is of).

    Local media are still ``LocalImage`` placeholders here (cheap: no file is read). A block of
    the grid an exclude rule drops whole is skipped at once, not walked job by job.
    """
    for _, values in iter_model_inputs(spec):
        yield values


def iter_model_inputs(spec: Spec) -> Iterator[tuple[Spec, dict[str, Any]]]:
    """``iter_inputs`` with the single-model part of the spec each input belongs to."""
    for part in spec.each():
        rules = _rules(part)
        for _, _, values in _cells(part, rules, _extra(part, rules)):
            yield part, values


def _cells(
    spec: Spec, rules: list[Rule], extras: Iterable[dict[str, Any]]
) -> Iterator[tuple[tuple[int, ...] | None, int, dict[str, Any]]]:
    """Each combination with its grid coordinates (row per dimension), or None and its number
    among the include entries outside the grid."""
    choices = [[dict(zip(d.keys, row, strict=True)) for row in d.rows] for d in spec.dimensions]
    live = frozenset(range(len(rules)))
    # A field a job leaves out can only come from a value the spec wrote (`none`): without one,
    # no combination needs looking at.
    absent = ABSENT in spec.fixed.values() or any(ABSENT in r.values() for c in choices for r in c)
    for coords, values in _Walk(rules, choices).below(0, dict(spec.fixed), live, ()):
        yield coords, 0, present(values) if absent else values
    for n, values in enumerate(extras):
        yield None, n, present(values)


def count_jobs(spec: Spec) -> GridCount:
    """The job count, duplicates collapsed and exclusions: arithmetic unless rules force a walk.

    Several models: the sum of each model's count; ``axes`` leads with ``model``, and a name's
    size is its distinct values over every model."""
    if not spec.parts:
        return _count(spec)
    counts = [_count(part) for part in spec.parts]
    values: dict[str, set[Any]] = {}
    for part in spec.parts:
        for dim in part.dimensions:
            rows = {tuple(identity(v) for v in row) for row in dim.rows}
            values.setdefault(dim.name, set()).update(rows)
    return GridCount(
        jobs=sum(c.jobs for c in counts),
        duplicates=sum(c.duplicates for c in counts),
        axes={MODEL: len(spec.parts)} | {name: len(rows) for name, rows in values.items()},
        excluded=sum(c.excluded for c in counts),
        included=sum(c.included for c in counts),
    )


def _count(spec: Spec) -> GridCount:
    sizes = [len(d.rows) for d in spec.dimensions]
    grid, grid_raw = math.prod(sizes), math.prod(d.raw_size for d in spec.dimensions)
    rules = _rules(spec)
    excluded = _Cover(spec, rules, [None] * len(sizes)).total()
    included = sum(1 for _ in _extra(spec, rules))
    repeated = (len(spec.include) - included) * spec.repeat
    return GridCount(
        jobs=(grid - excluded + included) * spec.repeat,
        duplicates=(grid_raw - grid) * spec.repeat + repeated,
        axes={d.name: len(d.rows) for d in spec.dimensions},
        excluded=excluded * spec.repeat,
        included=included * spec.repeat,
    )


def weighted_total(spec: Spec, factors: Mapping[str, Callable[[Any], Any]]) -> Any:
    """The sum over the spec's distinct jobs (repeats not expanded) of the product of
    ``factors[key](value)`` over the given keys, by axis arithmetic like ``count_jobs``.

    Raw keys are one model's: give a single-model spec (one of ``Spec.each()``)."""
    varied = {k for d in spec.dimensions for k in d.keys}
    weights: Weights = []
    for dim in spec.dimensions:
        used = [(pos, factors[k]) for pos, k in enumerate(dim.keys) if k in factors]
        rows = [math.prod(f(row[pos]) for pos, f in used) for row in dim.rows] if used else None
        weights.append(rows)
    fixed = math.prod(f(spec.fixed[k]) for k, f in factors.items() if k not in varied)
    rules = _rules(spec)
    cover = _Cover(spec, rules, weights)
    grid = math.prod(cover.sums)
    extra = sum(math.prod(f(e[k]) for k, f in factors.items()) for e in _extra(spec, rules))
    return (grid - cover.total()) * fixed + extra


def _rules(spec: Spec) -> list[Rule]:
    """The exclude rules that can match, each as the rows it matches per dimension."""
    where = {k: (d, pos) for d, dim in enumerate(spec.dimensions) for pos, k in enumerate(dim.keys)}
    index: dict[str, dict[Any, frozenset[int]]] = {}  # key -> value identity -> rows holding it
    rules = []
    for entry in spec.exclude:
        rule: dict[int, frozenset[int]] = {}
        alive = True
        for key, value in entry.items():
            wanted = identity(value)
            if key not in where:
                fixed = identity(spec.fixed[key]) if key in spec.fixed else ABSENT
                alive = alive and fixed == wanted
                continue
            d, pos = where[key]
            if key not in index:
                index[key] = _rows_by_value(spec.dimensions[d].rows, pos)
            match = index[key].get(wanted, frozenset())
            rule[d] = rule.get(d, match) & match
        if alive and all(rule.values()):
            rules.append(rule)
    return rules


def _rows_by_value(rows: tuple[tuple[Any, ...], ...], pos: int) -> dict[Any, frozenset[int]]:
    found: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        found.setdefault(identity(row[pos]), []).append(i)
    return {value: frozenset(at) for value, at in found.items()}


def _hit(rules: list[Rule], index: list[int]) -> bool:
    return any(all(index[d] in rows for d, rows in rule.items()) for rule in rules)


class _Walk:
    """The grid in order, one dimension a level, carrying the exclude rules still able to match."""

    def __init__(self, rules: list[Rule], choices: list[list[dict[str, Any]]]) -> None:
        self.rules = rules
        self.choices = choices
        self.last = [max(rule, default=-1) for rule in rules]

    def below(
        self, j: int, values: dict[str, Any], live: frozenset[int], coords: tuple[int, ...]
    ) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
        if any(self.last[i] < j for i in live):  # a rule matches all it names: dropped whole
            return
        if not live:
            rest = self.choices[j:]
            places = itertools.product(*(range(len(c)) for c in rest))
            for combo, at in zip(itertools.product(*rest), places, strict=True):
                out = dict(values)
                for row in combo:
                    out.update(row)
                yield coords + at, out
            return
        naming = [i for i in live if j in self.rules[i]]
        hits: dict[int, list[int]] = {}
        for i in naming:
            for r in self.rules[i][j]:
                hits.setdefault(r, []).append(i)
        passing = live.difference(naming)
        for r, row in enumerate(self.choices[j]):
            live_r = passing.union(hits.get(r, ()))
            yield from self.below(j + 1, values | row, live_r, (*coords, r))


class _Cover:
    """The total weight of the grid cells at least one exclude rule matches (a cell weighs the
    product of its rows' weights), without walking the grid.

    The dimensions that rules name are decided one at a time. In each, the rows no live rule
    tells apart form one class (most rows: a rule names one value), each class keeps the rules
    it matches alive, and a case (dimension, live rules) met twice is counted once. So the work
    follows the rules, not the grid; past ``_MAX_COUNT_WORK`` it stops with a SpecError.
    """

    def __init__(self, spec: Spec, rules: list[Rule], weights: Weights) -> None:
        self.spec = spec
        self.rules = rules
        self.weights = weights
        self.sums = [
            len(dim.rows) if w is None else sum(w)
            for dim, w in zip(spec.dimensions, weights, strict=True)
        ]
        named = {d for rule in rules for d in rule}
        self.order = sorted(named, key=lambda d: -sum(d in rule for rule in rules))
        place = {d: j for j, d in enumerate(self.order)}
        self.last = [max((place[d] for d in rule), default=-1) for rule in rules]
        self.after = [math.prod(self.sums[d] for d in self.order[j:]) for j in range(len(named))]
        self.free = math.prod(s for d, s in enumerate(self.sums) if d not in named)
        self.seen: dict[tuple[int, frozenset[int]], Any] = {}
        self.work = 0

    def total(self) -> Any:
        return self.free * self._visit(0, frozenset(range(len(self.rules))))

    def _visit(self, j: int, live: frozenset[int]) -> Any:
        if not live:
            return 0
        if any(self.last[i] < j for i in live):  # a live rule matched in all it names
            return self.after[j] if j < len(self.after) else 1
        case = (j, live)
        if case not in self.seen:
            self.work += len(live)
            if self.work > _MAX_COUNT_WORK:
                raise SpecError(
                    f"{self.spec.path}: exclude: {len(self.rules):,} rules cross in too many "
                    "ways to count in reasonable time; merge or drop some"
                )
            self.seen[case] = self._split(j, live)
        return self.seen[case]

    def _split(self, j: int, live: frozenset[int]) -> Any:
        d = self.order[j]
        weights = self.weights[d]
        naming = {i for i in live if d in self.rules[i]}
        matched: dict[int, set[int]] = {}
        for i in naming:
            self.work += len(self.rules[i][d])
            for row in self.rules[i][d]:
                matched.setdefault(row, set()).add(i)
        classes: dict[frozenset[int], Any] = {}
        for row, hits in matched.items():
            weight = 1 if weights is None else weights[row]
            classes[frozenset(hits)] = classes.get(frozenset(hits), 0) + weight
        others = live - naming
        rest = self.sums[d] - sum(classes.values())
        total = rest * self._visit(j + 1, others) if rest else 0
        for group, weight in classes.items():
            total += weight * self._visit(j + 1, others | group)
        return total


def _extra(spec: Spec, rules: list[Rule]) -> Iterator[dict[str, Any]]:
    """The include entries that are neither in the grid (after exclusion) nor repeated."""
    if not spec.include:
        return
    dims = spec.dimensions
    lookup = [{tuple(identity(v) for v in row): i for i, row in enumerate(d.rows)} for d in dims]
    grid_keys = set(spec.fixed).union(*(d.keys for d in dims))
    seen: set[tuple[Any, ...]] = set()
    for written in spec.include:
        # ``none`` for a field the grid never sets is the same as not naming it: that entry is
        # the grid's job (one key), not one more.
        entry = {k: v for k, v in written.items() if v is not ABSENT or k in grid_keys}
        ident = tuple(sorted((k, identity(v)) for k, v in entry.items()))
        if ident in seen:
            continue
        seen.add(ident)
        if not _in_grid(spec, entry, lookup, grid_keys, rules):
            yield dict(entry)


def _in_grid(
    spec: Spec,
    entry: Mapping[str, Any],
    lookup: list[dict[tuple[Any, ...], int]],
    grid_keys: set[str],
    rules: list[Rule],
) -> bool:
    if set(entry) != grid_keys:
        return False
    index = []
    for d, dim in enumerate(spec.dimensions):
        i = lookup[d].get(tuple(identity(entry[k]) for k in dim.keys))
        if i is None:
            return False
        index.append(i)
    varied = {k for d in spec.dimensions for k in d.keys}
    for key, value in entry.items():
        if key not in varied and identity(value) != identity(spec.fixed[key]):
            return False
    return not _hit(rules, index)


class _MediaCache:
    """Local media read once and kept as data URIs, least recently used dropped past a budget."""

    def __init__(self, budget: int = _MEDIA_CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self.uris: OrderedDict[LocalMedia, str] = OrderedDict()
        self._last: tuple[LocalMedia | None, str] = (None, "")

    def materialise(
        self, values: dict[str, Any], keys: list[str], *, lists: bool = True
    ) -> tuple[dict[str, Any], dict[str, str | list[str]]]:
        """``values`` with local files under ``keys`` swapped for data URIs, and those files;
        a list input becomes a JSON list (its items' files or URLs in ``sources``). ``lists``
        False: the spec wrote no list value (no tuple to look for among the values)."""
        sources: dict[str, str | list[str]] = {}
        for key in keys:
            value = values.get(key)
            if isinstance(value, LocalMedia):
                values[key] = self.uri(value)
                sources[key] = value.label
            elif isinstance(value, MediaList):
                values[key] = [self.uri(v) if isinstance(v, LocalMedia) else v for v in value]
                if any(isinstance(v, LocalMedia) for v in value):
                    sources[key] = value.labels()
        if lists and tuple in map(type, values.values()):  # a list input's value (hashable here)
            for key, value in values.items():
                if type(value) is tuple:
                    values[key] = list(value)
        return values, sources

    def uri(self, image: LocalMedia) -> str:
        if image is self._last[0]:  # the same file as the job before: most grids' case
            return self._last[1]
        self._last = (image, self._uri(image))
        return self._last[1]

    def _uri(self, image: LocalMedia) -> str:
        uri = self.uris.get(image)
        if uri is not None:
            self.uris.move_to_end(image)
            return uri
        try:
            uri = image.data_uri()
        except Problem as exc:
            raise SpecError(exc.message) from None
        self.uris[image] = uri
        self.used += len(uri)
        while self.used > self.budget and len(self.uris) > 1:
            _, dropped = self.uris.popitem(last=False)
            self.used -= len(dropped)
        return uri
