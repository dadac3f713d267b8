"""Fault injection: which faults exist, the YAML fault profile, and seeded dice that fire them.

Every fault has a ``rate`` (the probability per opportunity: per request for request faults, per
job for job faults, per download for download faults), optionally the ``endpoints`` it targets, a
``limit`` (fire at most that many times) and its own parameters. Each fault rolls its own
``random.Random`` seeded from the profile's seed and its name, so a run with the same seed and the
same sequence of requests fires the same faults.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import EmulatorError

__all__ = [
    "API_ENDPOINTS",
    "ENDPOINTS",
    "FAULTS",
    "FaultDice",
    "FaultKind",
    "FaultProfile",
    "FaultSpec",
    "load_fault_profile",
    "parse_fault_flag",
]

API_ENDPOINTS = ("submit", "status", "result", "cancel", "catalog")
ENDPOINTS = (*API_ENDPOINTS, "download")


@dataclass(frozen=True)
class FaultKind:
    """What a fault does, where it may strike, and its parameters with their defaults."""

    scope: str  # request | job | download
    endpoints: tuple[str, ...]
    doc: str
    params: Mapping[str, float] = field(default_factory=dict)


_ANY = API_ENDPOINTS
FAULTS: dict[str, FaultKind] = {
    "restart": FaultKind("request", _ANY, "forget every job first (known ids then get 404001)"),
    "rate_limit": FaultKind(
        "request", _ANY, "429 with Retry-After, nothing done", {"retry_after": 1.0}
    ),
    "rate_cap": FaultKind(
        "request",
        _ANY,
        "429 with Retry-After when more than per_second requests came in the last second "
        "(rate: the chance it answers so then), nothing done",
        {"per_second": 10.0, "retry_after": 1.0},
    ),
    "http_500": FaultKind("request", _ANY, "500 with an error body (500001), nothing done"),
    "http_500_bare": FaultKind("request", _ANY, "500 with an empty body, nothing done"),
    "http_503": FaultKind("request", _ANY, "503 with an error body (500001), nothing done"),
    "http_503_bare": FaultKind("request", _ANY, "503 with an empty body, nothing done"),
    "proxy_html": FaultKind(
        "request", _ANY, "an HTML error page from a proxy, nothing done", {"status": 502}
    ),
    "error_200": FaultKind("request", _ANY, "HTTP 200 carrying an error_code body, nothing done"),
    "slow": FaultKind(
        "request",
        (*_ANY, "download"),
        "the answer is held back (a submit is done first)",
        {"delay": 35.0},
    ),
    "refuse_input": FaultKind(
        "request", ("submit",), "422 (422001): the input refused, as if invalid; nothing done"
    ),
    "drop_after_create": FaultKind(
        "request", ("submit",), "the job is created and billed, then the connection is dropped"
    ),
    "fail_string": FaultKind("job", (), "the job fails; error is a string"),
    "fail_object": FaultKind("job", (), "the job fails; error is {type, message}"),
    "fail_list": FaultKind("job", (), "the job fails; error is a list of {type, message}"),
    "bare_output": FaultKind("job", (), "output is a bare URL string, not {video: url}"),
    "early_expiry": FaultKind("job", (), "the output URL is already expired when the job ends"),
    "spell_pending": FaultKind("job", (), "status says pending instead of in_queue"),
    "spell_processing": FaultKind("job", (), "status says processing instead of in_progress"),
    "spell_succeeded": FaultKind("job", (), "status says succeeded/failed instead of completed"),
    "spell_completed": FaultKind("job", (), "result says completed instead of succeeded"),
    "spell_canceled": FaultKind("job", (), "says canceled instead of cancelled"),
    "cost_null": FaultKind("job", (), "the finished job's result says cost: null"),
    "cost_negative": FaultKind("job", (), "the finished job's result says a negative cost"),
    "cost_missing": FaultKind("job", (), "the finished job's result has no cost at all"),
    "cost_nan": FaultKind("job", (), 'the finished job\'s result says cost: "NaN"'),
    "truncated_download": FaultKind(
        "download",
        ("download",),
        "fewer bytes than Content-Length, then the connection closes; with content_length: 0 "
        "no Content-Length, and the body ends as if whole (what a cut close-delimited body looks "
        "like to a client)",
        {"fraction": 0.5, "content_length": 1.0},
    ),
}
_TOP_KEYS = ("seed", "balance_usd", "faults")


@dataclass(frozen=True)
class FaultSpec:
    """One configured fault."""

    name: str
    rate: float
    endpoints: frozenset[str]
    limit: int | None = None
    params: Mapping[str, float] = field(default_factory=dict)

    def param(self, key: str) -> float:
        return float(self.params.get(key, FAULTS[self.name].params[key]))


@dataclass(frozen=True)
class FaultProfile:
    """A set of faults, the seed their dice use, and optionally every account's starting balance."""

    faults: Mapping[str, FaultSpec] = field(default_factory=dict)
    seed: int | None = None
    balance_usd: float | None = None

    @classmethod
    def parse(cls, data: Any, source: str = "fault profile") -> FaultProfile:
        """A profile from its YAML/dict form; raises EmulatorError naming the bad key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise EmulatorError(f"{source}: must be a mapping with keys {', '.join(_TOP_KEYS)}")
        for key in data:
            if key not in _TOP_KEYS:
                raise EmulatorError(f"{source}: {key}: unknown key; known: {', '.join(_TOP_KEYS)}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise EmulatorError(f"{source}: seed: must be a whole number")
        balance = data.get("balance_usd")
        if balance is not None:
            balance = _number(balance, f"{source}: balance_usd", low=0.0)
        raw = data.get("faults") or {}
        if not isinstance(raw, Mapping):
            raise EmulatorError(f"{source}: faults: must be a mapping of fault name to settings")
        faults = {str(n): _parse_fault(str(n), v, f"{source}: faults.{n}") for n, v in raw.items()}
        return cls(faults=faults, seed=seed, balance_usd=balance)

    def merged(self, other: FaultProfile) -> FaultProfile:
        """This profile with ``other``'s faults and settings on top."""
        return FaultProfile(
            faults={**self.faults, **other.faults},
            seed=other.seed if other.seed is not None else self.seed,
            balance_usd=other.balance_usd if other.balance_usd is not None else self.balance_usd,
        )


def load_fault_profile(path: str | Path) -> FaultProfile:
    """Read and validate a YAML fault profile; raises EmulatorError in one line naming the key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EmulatorError(f"{path}: cannot read fault profile: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise EmulatorError(f"{path}: not valid YAML{where}: {problem}") from None
    return FaultProfile.parse(data, source=str(path))


def parse_fault_flag(text: str) -> FaultSpec:
    """``NAME=RATE[@ENDPOINT,ENDPOINT]`` from the command line; raises EmulatorError."""
    name, sep, rest = text.partition("=")
    if not sep:
        raise EmulatorError(f"--fault {text}: expected NAME=RATE[@ENDPOINT,...]")
    rate, _, where = rest.partition("@")
    settings: dict[str, Any] = {"rate": _flag_number(rate, text)}
    if where:
        settings["endpoints"] = where.split(",")
    return _parse_fault(name.strip(), settings, f"--fault {name.strip()}")


def _flag_number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EmulatorError(f"--fault {flag}: rate {text!r} is not a number") from None


def _parse_fault(name: str, value: Any, where: str) -> FaultSpec:
    kind = FAULTS.get(name)
    if kind is None:
        raise EmulatorError(f"{where}: unknown fault; known: {', '.join(FAULTS)}")
    settings: Mapping[str, Any] = value if isinstance(value, Mapping) else {"rate": value}
    allowed = ("rate", "endpoints", "limit", *kind.params)
    for key in settings:
        if key not in allowed:
            raise EmulatorError(f"{where}.{key}: unknown setting; known: {', '.join(allowed)}")
    if "rate" not in settings:
        raise EmulatorError(f"{where}.rate: required (a probability from 0 to 1)")
    rate = _number(settings["rate"], f"{where}.rate", low=0.0, high=1.0)
    endpoints = frozenset(kind.endpoints)
    if "endpoints" in settings:
        chosen = settings["endpoints"]
        if isinstance(chosen, str):
            chosen = [chosen]
        if not isinstance(chosen, list) or not kind.endpoints:
            raise EmulatorError(f"{where}.endpoints: a list drawn from {', '.join(kind.endpoints)}")
        for endpoint in chosen:
            if endpoint not in kind.endpoints:
                choices = ", ".join(kind.endpoints)
                raise EmulatorError(f"{where}.endpoints: {endpoint!r} is not one of {choices}")
        endpoints = frozenset(chosen)
    limit = settings.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise EmulatorError(f"{where}.limit: must be a whole number >= 1")
    params = {
        k: _number(settings[k], f"{where}.{k}", low=0.0) for k in kind.params if k in settings
    }
    if "fraction" in params and params["fraction"] >= 1.0:
        raise EmulatorError(f"{where}.fraction: must be below 1 (the share of bytes sent)")
    return FaultSpec(name, rate, endpoints, limit, params)


def _number(value: Any, where: str, *, low: float, high: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
        raise EmulatorError(f"{where}: must be a number {bound}, got {value!r}")
    return float(value)


class FaultDice:
    """The seeded dice of a profile: each fault has its own generator and firing count."""

    def __init__(self, profile: FaultProfile | None, seed: int = 0) -> None:
        self.profile = profile or FaultProfile()
        base = self.profile.seed if self.profile.seed is not None else seed
        self._rngs = {n: random.Random(f"{base}:{n}") for n in self.profile.faults}
        self._fired: dict[str, int] = dict.fromkeys(self.profile.faults, 0)

    def roll(self, name: str, endpoint: str | None = None) -> FaultSpec | None:
        """The fault's spec if it fires at this opportunity, else None."""
        spec = self.profile.faults.get(name)
        if spec is None or spec.rate <= 0.0:
            return None
        if endpoint is not None and endpoint not in spec.endpoints:
            return None
        if spec.limit is not None and self._fired[name] >= spec.limit:
            return None
        if self._rngs[name].random() >= spec.rate:
            return None
        self._fired[name] += 1
        return spec

    def first(self, names: Iterable[str], endpoint: str) -> FaultSpec | None:
        """The first of ``names`` (in order) that fires on ``endpoint``."""
        for name in names:
            spec = self.roll(name, endpoint)
            if spec is not None:
                return spec
        return None

    def job_faults(self) -> frozenset[str]:
        """The job faults that strike a new job."""
        return frozenset(n for n, k in FAULTS.items() if k.scope == "job" and self.roll(n))

    def fired(self) -> dict[str, int]:
        return dict(self._fired)
