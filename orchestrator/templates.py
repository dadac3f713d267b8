"""Prompt templates: an axis source ``{template: "a {red|green} __animals__"}`` for text inputs.

The syntax is the ``dynamicprompts`` library's, parsed by it: alternatives ``{a|b}``, weights
``{2::a|b}``, multi-pick ``{2$$a|b|c}`` (ordered picks, ``,`` joined), and ``__name__``
wildcards read from ``<wildcards>/name.txt`` (one value a line). A template expands
combinatorially (every prompt it can make, in the library's order: built here from the parsed
template for the common forms, by the library for the rest) or, with ``sample: N``, into N
distinct prompts drawn by the library's random sampler seeded with ``seed`` (default 0; fewer
when the template cannot make N). So the same spec always yields the same prompts in the same
order, and a resume never re-rolls.

Counting a combinatorial expansion walks the parsed template (product over a sequence, sum over
alternatives, ordered picks of k, a wildcard's values), so a template of millions of prompts is
refused by its count, naming ``sample:``, without being expanded.
"""

from __future__ import annotations

import codecs
import itertools
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from random import Random
from typing import Any

import pyparsing
from dynamicprompts.commands import (
    Command,
    LiteralCommand,
    SequenceCommand,
    VariantCommand,
    WildcardCommand,
)
from dynamicprompts.commands.variant_command import VariantOption
from dynamicprompts.enums import SamplingMethod
from dynamicprompts.parser.config import default_parser_config
from dynamicprompts.parser.parse import get_cached_parser, parse
from dynamicprompts.sampling_context import SamplingContext
from dynamicprompts.wildcards import WildcardManager
from dynamicprompts.wildcards.collection import WildcardTextFile

from orchestrator.sources import TEMPLATE_KEYS, Problem, is_template, read_regular, resolve

__all__ = ["KEYS", "MAX_PROMPTS", "Template", "count", "expand", "is_template", "read_template"]

KEYS = TEMPLATE_KEYS
# A combinatorial expansion past this many prompts is refused (sample: N draws some of them).
MAX_PROMPTS = 100_000
_DEFAULT_WILDCARDS = "wildcards"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 ._-]*(/[A-Za-z0-9_*][A-Za-z0-9 ._*-]*)*$|^\*$")
_SYNTAX = re.compile(r"[{}$]|__")  # what can make a wildcard line more than its own text
_DRAWS_PER_PROMPT = 20
# Counts stop growing here: 2**(3**15) prompts took seconds to count (and more than 4,300
# digits cannot even be printed); a template of 10^30 or more is refused alike.
_BEYOND = 10**30
_MAX_DEPTH = 20  # wildcards inside wildcard files, nested deeper than this: a cycle


class Template:
    """A parsed template with its wildcard folder; ``count`` and ``expand`` say what it makes."""

    def __init__(self, text: str, wildcards: Path, shown_folder: str) -> None:
        self.text = text
        self.folder = wildcards
        self.shown_folder = shown_folder
        self.command = _parse(text)
        if wildcards.is_dir():
            _check_links(wildcards, shown_folder)
        self.manager = WildcardManager(wildcards) if wildcards.is_dir() else WildcardManager()
        for collection in self.manager.tree.map.values():
            if isinstance(collection, WildcardTextFile):
                # A byte-order mark (Excel, old Notepad) would start the first line's prompt
                # with an invisible U+FEFF, and sort it last; other sources read it as utf-8-sig.
                collection._encoding = "utf-8-sig"
        self._parsed: dict[str, Command] = {}
        self._checked: set[str] = set()  # wildcards whose files (and theirs) are checked
        try:
            self._check(self.command, 0)
        except RecursionError:
            raise _too_deep() from None

    def count(self) -> int | None:
        """How many prompts the combinatorial expansion makes (before textual duplicates
        collapse; at most 10^30); None where the syntax (variables, wrap commands) keeps it
        from being known."""
        try:
            return _Counter(self).of(self.command)
        except RecursionError:  # braces nested in wildcard files nested in wildcard files ...
            raise _too_deep() from None

    def expand(self, sample: int | None = None, seed: int = 0) -> list[str]:
        """Every prompt (combinatorial), or ``sample`` prompts drawn with ``seed``."""
        method = SamplingMethod.COMBINATORIAL if sample is None else SamplingMethod.RANDOM
        context = SamplingContext(
            default_sampling_method=method,
            wildcard_manager=self.manager,
            rand=Random(seed),
        )
        try:
            if sample is None:
                built = _Expander(self).of(self.command)
                prompts = (
                    built
                    if built is not None
                    else [str(p) for p in context.sample_prompts(self.command, MAX_PROMPTS + 1)]
                )
            else:
                prompts = _distinct_draws(context.sample_prompts(self.command, None), sample)
        except (ValueError, KeyError, RecursionError, RuntimeError) as exc:
            # RuntimeError: the library's generator ends with StopIteration on a part that makes
            # no text (such as a{2$$a|a}).
            raise Problem(f"template cannot expand: {exc}") from None
        if sample is None and len(prompts) > MAX_PROMPTS:
            raise _too_many(None)
        if not prompts:
            raise Problem("template makes no prompt")
        return prompts

    def values(self, name: str) -> list[str]:
        """A wildcard's values: its file's lines, sorted and distinct as the library reads them
        (a weighted value of a YAML/JSON wildcard file repeated by its weight, as it does)."""
        return list(self.manager.get_values(name).iterate_string_values_weighted())

    def wildcard_values(self, name: str) -> list[Command]:
        """A wildcard's values, each parsed (once)."""
        return [self._parse_value(v) for v in self.values(name)]

    def variant(self, command: VariantCommand) -> VariantCommand | None:
        """The alternatives the library picks among: a wildcard's values for ``{2$$__x__}``,
        bounds cut to the number of options; None for a wildcard named by a template."""
        values = command.values
        if len(values) == 1 and isinstance(values[0], WildcardCommand):
            name = values[0].wildcard
            if not isinstance(name, str):
                return None
            options = self.wildcard_values(name)
            command = VariantCommand(
                [VariantOption(v) for v in options],
                min(command.min_bound, len(options)),
                min(command.max_bound, len(options)),
                command.separator,
                values[0].sampling_method,
            )
        return command.adjust_range()

    def _check(self, command: Command, depth: int) -> None:
        """Every wildcard the template names (nested ones too) exists and has values."""
        if depth > _MAX_DEPTH:
            raise Problem(f"wildcards nest more than {_MAX_DEPTH} deep; does one name itself?")
        for wildcard in _wildcards(command):
            for name in self._names(wildcard):
                if name in self._checked:  # once each: a file naming another twice, and that
                    continue  # one the next twice, ... was walked 2**depth times
                for value in self._values_checked(name):
                    try:
                        parsed = self._parse_value(value)
                    except Problem as exc:
                        raise Problem(f"wildcard __{name}__: {exc.message}") from None
                    self._check(parsed, depth + 1)
                self._checked.add(name)

    def _names(self, wildcard: WildcardCommand) -> list[str]:
        if isinstance(wildcard.wildcard, str):
            return [wildcard.wildcard]
        context = SamplingContext(
            default_sampling_method=SamplingMethod.COMBINATORIAL,
            wildcard_manager=self.manager,
        )
        return [str(p) for p in context.sample_prompts(wildcard.wildcard, MAX_PROMPTS)]

    def _values_checked(self, name: str) -> list[str]:
        if ".." in name or name.startswith(("/", "\\")) or not _NAME.match(name):
            raise Problem(
                f"wildcard __{name}__: must name a file inside {self.shown_folder}/ "
                "(letters, digits, '.', '_', '-' and '/' folders; no '..')"
            )
        if not self.folder.is_dir():
            raise Problem(
                f"wildcard __{name}__: no wildcards folder {self.shown_folder}/ "
                "(set wildcards: to the folder holding its .txt files)"
            )
        matched = list(self.manager.match_collections(name))
        if not matched:  # the library would try **/name: a file of that name in any sub-folder
            raise Problem(f"wildcard __{name}__: no file {self.shown_folder}/{name}.txt")
        values = self.values(name)
        for collection in matched:
            path = getattr(collection, "_path", None)  # a text file's; the library reads it
            if isinstance(path, Path):  # with errors="ignore": a byte it cannot read is dropped
                _check_utf8(path, f"wildcard __{name}__: {self.shown_folder}/{name}{path.suffix}")
        if values:
            return values
        if any(self.folder.glob(f"{name}.*")):
            raise Problem(f"wildcard __{name}__: {self.shown_folder}/{name}.txt has no values")
        raise Problem(f"wildcard __{name}__: no file {self.shown_folder}/{name}.txt")

    def _parse_value(self, value: str) -> Command:
        parsed = self._parsed.get(value)
        if parsed is None:
            # Most wildcard lines are plain text: no need to run the parser over each of them.
            plain = not _SYNTAX.search(value)
            parsed = self._parsed[value] = LiteralCommand(value) if plain else _parse(value)
        return parsed


class _Counter:
    """The combinatorial count of a parsed template, walked as the library's sampler expands it
    (``Template`` refused wildcard cycles already, so the walk ends)."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.wildcards: dict[str, int | None] = {}  # a wildcard's count, by its name

    def of(self, command: Command) -> int | None:
        if command.sampling_method in (SamplingMethod.RANDOM, SamplingMethod.CYCLICAL):
            return 1  # one draw per prompt, not a dimension
        if isinstance(command, LiteralCommand):
            return 1
        if isinstance(command, SequenceCommand):
            total = 1
            for token in command.tokens:
                n = self.of(token)
                if n is None:
                    return None
                total = min(total * n, _BEYOND)
            return total
        if isinstance(command, VariantCommand):
            return self._variant(command)
        if isinstance(command, WildcardCommand) and isinstance(command.wildcard, str):
            name = command.wildcard
            if name not in self.wildcards:  # once per name, however often it is named
                counts = [self.of(v) for v in self.template.wildcard_values(name)]
                known = None if None in counts else min(sum(c for c in counts if c), _BEYOND)
                self.wildcards[name] = known
            return self.wildcards[name]
        return None

    def _variant(self, command: VariantCommand) -> int | None:
        variant = self.template.variant(command)
        if variant is None:
            return None
        distinct: list[Command] = []
        for value in variant.values:
            if value not in distinct:  # the library picks among unequal options only
                distinct.append(value)
        options = [self.of(v) for v in distinct]
        if None in options:
            return None
        known = [o for o in options if o is not None]
        low, high = variant.min_bound, variant.max_bound
        return min(sum(_ordered_picks(known, k) for k in range(low, high + 1)), _BEYOND)


class _Expander:
    """Every prompt of a template in the library's combinatorial order, built from the parsed
    template with each wildcard line parsed once (the library parses each line again for every
    prompt it is part of: minutes for a large wildcard file). None where it meets a form it
    does not build (variables, wraps, random or cyclical parts): the library expands those."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.done: dict[int, list[str] | None] = {}  # id(command) -> its texts
        self.keep: list[Command] = []  # the commands made here, alive while ids key them

    def of(self, command: Command) -> list[str] | None:
        key = id(command)
        if key not in self.done:
            self.done[key] = self._build(command)
        return self.done[key]

    def _build(self, command: Command) -> list[str] | None:
        if command.sampling_method not in (None, SamplingMethod.COMBINATORIAL):
            return None
        if isinstance(command, LiteralCommand):
            return [command.literal]
        if isinstance(command, SequenceCommand) and not command.separator:
            texts = [""]
            for token in command.tokens:
                parts = self.of(token)
                if parts is None:
                    return None
                texts = [t + p for t in texts for p in parts]
            return texts
        if isinstance(command, VariantCommand):
            return self._variant(command)
        if isinstance(command, WildcardCommand) and isinstance(command.wildcard, str):
            out: list[str] = []
            for value in self.template.wildcard_values(command.wildcard):
                parts = self.of(value)
                if parts is None:
                    return None
                out += parts
            return out
        return None

    def _variant(self, command: VariantCommand) -> list[str] | None:
        variant = self.template.variant(command)
        if variant is None:
            return None
        self.keep.append(variant)
        out: list[str] = []
        seen: set[tuple[str, ...]] = set()
        for bound in range(variant.min_bound, variant.max_bound + 1):
            for combo in variant.get_value_combinations(bound):
                choices = [self.of(c) for c in combo]
                if any(c is None for c in choices):
                    return None
                for picked in itertools.product(*(c for c in choices if c is not None)):
                    kept = tuple(dict.fromkeys(picked))
                    if len(kept) == bound and kept not in seen:
                        seen.add(kept)
                        out.append(_joined(kept, variant.separator))
        return out


def _joined(texts: tuple[str, ...], separator: str) -> str:
    """As the library's SamplingResult.joined: one text as it is; else joined, and a separator
    left at either end (by an empty pick) trimmed."""
    if len(texts) == 1:
        return texts[0]
    joined = separator.join(texts)
    if separator:
        joined = joined.removeprefix(separator).removesuffix(separator)
    return joined


def _distinct_draws(draws: Iterable[Any], wanted: int) -> list[str]:
    """The first ``wanted`` distinct prompts among the draws; fewer when the template makes
    fewer (after ``_DRAWS_PER_PROMPT`` draws per prompt asked for, the rest are taken to be
    repeats)."""
    found: dict[str, None] = {}
    for n, draw in enumerate(draws):
        found.setdefault(str(draw), None)
        if len(found) >= wanted or n >= _DRAWS_PER_PROMPT * wanted + 100:
            break
    return list(found)


def _ordered_picks(counts: list[int], k: int) -> int:
    """Ordered choices of ``k`` distinct options, each option expanding to ``counts[i]`` texts:
    ``k!`` times the k-th elementary symmetric polynomial of the counts."""
    if k > len(counts):
        return 0
    sums = [1] + [0] * k
    for c in counts:
        for j in range(k, 0, -1):
            sums[j] += sums[j - 1] * c
    return math.factorial(k) * sums[k]


def count(text: str, wildcards: Path | None = None) -> int | None:
    """The combinatorial count of template ``text`` (None when its syntax hides it)."""
    folder = wildcards or Path(_DEFAULT_WILDCARDS)
    return Template(text, folder, folder.as_posix()).count()


def read_template(source: Mapping[str, Any], base: Path) -> Template:
    """The Template an axis source gives (``template`` or ``template_file``, ``wildcards``)."""
    text = _text(source, base)
    written = source.get("wildcards", _DEFAULT_WILDCARDS)
    if not isinstance(written, str) or not written.strip():
        raise Problem("wildcards must be a folder such as wildcards/")
    folder = resolve(base, written)
    return Template(text, folder, written.rstrip("/") or written)


def expand(source: Mapping[str, Any], base: Path) -> list[str]:
    """The prompts an axis source ``{template: ..., sample, seed, wildcards}`` makes, in order;
    raises Problem (one line) for anything wrong with it."""
    unknown = [k for k in source if k not in KEYS]
    if unknown:
        raise Problem(f"{unknown[0]}: not a template key; allowed: {', '.join(KEYS)}")
    sample = source.get("sample")
    seed = source.get("seed", 0)
    if sample is not None and not _whole(sample, 1, MAX_PROMPTS):
        raise Problem(f"sample must be a whole number from 1 to {MAX_PROMPTS:,}, got {sample!r}")
    if not _whole(seed, 0, 2**63 - 1):
        raise Problem(f"seed must be a whole number from 0, got {seed!r}")
    if sample is None and "seed" in source:
        raise Problem("seed draws random prompts: give sample: N with it")
    template = read_template(source, base)
    if sample is None:
        n = template.count()
        if n is not None and n > MAX_PROMPTS:
            raise _too_many(n)
    prompts = template.expand(sample, seed)
    if sample is not None and len(prompts) < sample:
        # The draws stop short of N: a weight such as {1000::a|b} can hide a prompt from them.
        # A template that makes no more than N prompts gives every one of them instead.
        n = template.count()
        if n is not None and len(prompts) < n <= sample:
            every = list(dict.fromkeys(template.expand(None, seed)))
            if len(prompts) < len(every) <= sample:
                return every
    return prompts


def _text(source: Mapping[str, Any], base: Path) -> str:
    if "template" in source and "template_file" in source:
        raise Problem("give template or template_file, not both")
    if "template_file" in source:
        written = source["template_file"]
        if not isinstance(written, str):
            raise Problem("template_file must be a path such as prompts.tmpl")
        path = resolve(base, written)
        try:
            text = read_regular(path, f"template_file {written}").decode("utf-8-sig")
        except FileNotFoundError:
            raise Problem(f"template_file {written}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise Problem(f"template_file {written}: cannot read: {exc}") from None
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    else:
        text = source["template"]
        if not isinstance(text, str):
            raise Problem(f"template must be text, got {text!r}")
    if not text.strip():
        raise Problem("template is empty")
    return text


@cache
def _build_parser() -> None:
    """Build the library's parser once, quietly: it calls pyparsing names that pyparsing 3.2
    deprecates (a warning our tests turn into an error), and it caches the parser it builds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        get_cached_parser(default_parser_config)


def _parse(text: str) -> Command:
    _build_parser()
    try:
        return parse(text)
    except pyparsing.ParseBaseException as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise Problem(
            f"template {shown!r} does not parse at character {exc.loc + 1}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise Problem(f"template does not parse: {exc}") from None


def _wildcards(command: Command) -> list[WildcardCommand]:
    found: list[WildcardCommand] = []
    stack = [command]
    while stack:
        node = stack.pop()
        if isinstance(node, WildcardCommand):
            found.append(node)
            if isinstance(node.wildcard, Command):
                stack.append(node.wildcard)
        elif isinstance(node, SequenceCommand):
            stack.extend(node.tokens)
        elif isinstance(node, VariantCommand):
            stack.extend(node.values)
        else:
            stack.extend(v for v in vars(node).values() if isinstance(v, Command))
    return found


def _check_links(folder: Path, shown: str) -> None:
    """Refuse a symlink in the wildcards folder that leads out of it (the library follows them:
    a prompt could carry any file of the machine to the API) or back up into it (a loop the
    library would walk without end), and a file that is not a regular file (a FIFO: the library
    would wait on it for ever)."""
    root = folder.resolve()
    for dirname, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirname) / name
            if name in filenames and not path.is_symlink() and not path.is_file():
                relative = path.relative_to(folder).as_posix()  # a FIFO would hang the library
                raise Problem(f"wildcards: {shown}/{relative} is not a regular file")
            if not path.is_symlink():
                continue
            target = path.resolve()
            relative = path.relative_to(folder).as_posix()
            if not target.is_relative_to(root):
                raise Problem(f"wildcards: {shown}/{relative} links outside {shown}/")
            if path.is_dir() and path.parent.resolve().is_relative_to(target):
                raise Problem(f"wildcards: {shown}/{relative} links to a folder holding it")


def _check_utf8(path: Path, shown: str) -> None:
    """Refuse a wildcard file that is not UTF-8 text, rather than send its lines cut short."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise Problem(f"{shown} is not UTF-8 text (byte {exc.start + 1} of a block)") from None
    except OSError as exc:
        raise Problem(f"{shown}: cannot read: {exc.strerror}") from None


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _too_deep() -> Problem:
    return Problem("template nests too deep (braces and wildcards within wildcards) to expand")


def _too_many(n: int | None) -> Problem:
    if n is None:
        size = f"more than {MAX_PROMPTS:,} prompts"
    else:
        size = f"{n:,} prompts" if n < _BEYOND else "more than 10^30 prompts"
    return Problem(
        f"template expands to {size}, over the limit of {MAX_PROMPTS:,}; "
        "add sample: N to draw N of them (seed: S picks which)"
    )
