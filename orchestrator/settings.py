"""The run settings, each declared once: its type, default, bounds, meaning and command-line flag.

The spec's ``run:`` section is a ``RunSettings``; the runner's ``RunOptions`` extends it; the
``comfysweep run`` flags are built from the settings marked with a flag (``flags()``), so a flag
is checked against the same bounds as the spec; and ``readme_rows()`` is the README's table of
them, which ``tests/test_docs.py`` checks. The order is: flag, then spec, then default.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from orchestrator.failures import FailureLimit
from orchestrator.responses import (  # not the client: no httpx for settings
    DEFAULT_HTTP_TRANSPORT,
    DEFAULT_TIMEOUT,
    HttpTransport,
)

__all__ = [
    "MIN_POLL_INTERVAL",
    "Flag",
    "RunSettings",
    "Setting",
    "emulated_poll",
    "flags",
    "readme_rows",
    "setting",
]

# Polls closer than this hammer the API (and the emulator's event loop) for nothing.
MIN_POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class Setting:
    """What a run setting means, and the flag's metavar when ``comfysweep run`` takes it too."""

    help: str
    flag: str | None = None  # "N" gives `--name N`; None: a spec-only setting
    shown: str | None = None  # the default as the README says it, when not the value itself


class RunSettings(BaseModel):
    """How a sweep runs: the spec's ``run:`` section; command-line flags override it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    concurrency: Annotated[int, Setting("jobs in flight at once", flag="N")] = Field(
        8, ge=1, le=4096
    )
    max_cost: Annotated[
        float | None,
        Setting(
            "the budget (USD): no submit may take spent + reserved past it (see Budget)",
            flag="USD",
            shown="none",
        ),
    ] = Field(None, gt=0)
    # Resolved against the spec's folder by load_spec.
    output: Annotated[
        Path, Setting("the folder that holds `<name>/`; relative to the spec's folder")
    ] = Field(Path("results"), strict=False)
    filename: Annotated[
        str | None,
        Setting("the output name template (below)", shown="readable varying fields + short key"),
    ] = None
    downloads: Annotated[int, Setting("parallel downloads", flag="N")] = Field(4, ge=1, le=64)
    poll_interval: Annotated[
        float,
        Setting(
            "seconds between polls of a job until a job's duration is known; adaptive polls "
            "stay between a quarter of it and 150 times it (with `--emulator`, divided by its "
            "speed)",
            flag="S",
        ),
    ] = Field(2.0, ge=MIN_POLL_INTERVAL, le=3600)
    timeout: Annotated[float, Setting("seconds to wait for each HTTP answer", flag="S")] = Field(
        DEFAULT_TIMEOUT, ge=0.1, le=600
    )
    confirm_above: Annotated[
        float,
        Setting("on a terminal, ask before a run whose estimate is above this (USD)", flag="USD"),
    ] = Field(5.0, ge=0)
    notify: Annotated[
        str | None,
        Setting(
            "a shell command or an http(s) URL told (summary JSON) when the run ends, "
            "stalls or meets its budget",
            flag="TARGET",
            shown="none",
        ),
    ] = Field(None, min_length=1, max_length=4096)
    order: Annotated[
        Literal["grid", "breadth", "shuffle"],
        Setting("the order jobs are submitted in (see Order)", flag="ORDER"),
    ] = "breadth"
    shuffle_seed: Annotated[
        int | None, Setting("the seed of `order: shuffle`", shown="from the sweep's name")
    ] = None
    stall_after: Annotated[
        float,
        Setting(
            "seconds without any job changing state before the run says it stalls "
            "(with `--emulator`, divided by its speed)",
            flag="S",
        ),
    ] = Field(1800.0, gt=0, le=7 * 86400)
    max_failures: Annotated[
        int | float | str | None,
        Setting(
            "stop submitting after this many failed jobs, a count (`10`) or a share of the "
            "finished ones (`0.2`, `20%`)",
            flag="LIMIT",
            shown="none",
        ),
    ] = None
    retries: Annotated[
        int, Setting("times a job the API reports failed is submitted again", flag="N")
    ] = Field(0, ge=0, le=100)

    @field_validator("max_failures", mode="before")  # before the union says "...int: whole"
    @classmethod
    def _failure_limit(cls, value: Any) -> Any:
        if value is not None:
            try:
                FailureLimit.parse(value)
            except ValueError as exc:  # said as is, then ", got ..." (yamlplaces.pydantic_message)
                raise PydanticCustomError("max_failures", str(exc)) from None
        return value

    rate: Annotated[
        float,
        Setting(
            "requests a second to the API, every call and download together "
            "(with `--emulator`, times its speed)",
            flag="R",
        ),
    ] = Field(10.0, gt=0)
    http_transport: Annotated[
        HttpTransport,
        Setting(
            "what carries the HTTP requests under httpx's API (see The HTTP transport); "
            "`COMFYSWEEP_HTTP_TRANSPORT` beats the spec's value",
            flag="NAME",
        ),
    ] = DEFAULT_HTTP_TRANSPORT


@dataclass(frozen=True)
class Flag:
    """A setting as a command-line option: ``--poll-interval S``, its type and bounds."""

    name: str  # the setting's name, e.g. "poll_interval"
    option: str  # "--poll-interval"
    metavar: str
    kind: type[int] | type[float] | type[str]
    low: float | None  # an int for an int setting
    high: float | None
    low_open: bool
    help: str
    choices: tuple[str, ...] = ()  # a str setting's allowed values (none: free text)


def setting(name: str) -> Setting:
    """The declaration of one run setting."""
    field = RunSettings.model_fields[name]
    return next(m for m in field.metadata if isinstance(m, Setting))


def flags() -> list[Flag]:
    """The settings ``comfysweep run`` also takes as flags, in declaration order."""
    out = []
    for name, field in RunSettings.model_fields.items():
        about = setting(name)
        if about.flag is None:
            continue
        low = high = None
        low_open = False
        for bound in field.metadata:
            if isinstance(bound, annotated_types.Ge):
                low = _real(bound.ge)
            elif isinstance(bound, annotated_types.Gt):
                low, low_open = _real(bound.gt), True
            elif isinstance(bound, annotated_types.Le):
                high = _real(bound.le)
        kind, choices = _kind(field.annotation)
        text = f"{about.help[:1].upper()}{about.help[1:]} (run.{name}, default {_shown(name)})."
        text = text.replace("`", "")
        option = f"--{name.replace('_', '-')}"
        out.append(Flag(name, option, about.flag, kind, low, high, low_open, text, choices))
    return out


def readme_rows() -> list[str]:
    """The README's rows for the ``run:`` settings, exactly as they must appear there."""
    rows = []
    by_name = {f.name: f for f in flags()}
    for name in RunSettings.model_fields:
        meaning = setting(name).help
        flag = by_name.get(name)
        if flag is not None:
            bounds = _bounds(flag)
            meaning += f"; {bounds}" if bounds else ""
            meaning += f" (`{flag.option} {flag.metavar}`)"
        rows.append(f"| `run.{name}` | {meaning} | {_shown(name)} |")
    return rows


def emulated_poll(poll_interval: float, speed: float) -> float:
    """The poll interval against an emulator ``speed`` times faster than the API, floored."""
    return max(MIN_POLL_INTERVAL, poll_interval / speed)


def _real(bound: object) -> float:
    assert isinstance(bound, int | float)
    return bound


def _shown(name: str) -> str:
    shown = setting(name).shown
    if shown is not None:
        return shown
    return f"`{RunSettings.model_fields[name].default}`"


def _kind(annotation: Any) -> tuple[type[int] | type[float] | type[str], tuple[str, ...]]:
    """A setting's flag type, and its choices when it is a Literal of strings."""
    if annotation is int:
        return int, ()
    if typing.get_origin(annotation) is Literal:
        return str, tuple(typing.get_args(annotation))
    if str in typing.get_args(annotation):
        return str, ()
    return float, ()


def _bounds(flag: Flag) -> str:
    if flag.kind is str:
        return f"one of {', '.join(f'`{c}`' for c in flag.choices)}" if flag.choices else ""
    if flag.high is None:
        return f"more than {flag.low}" if flag.low_open else f"at least {flag.low}"
    return f"{flag.low} to {flag.high}"
