"""The run settings, each declared once: its type, default, bounds, meaning and command-line flag.

The spec's ``run:`` section is a ``RunSettings``; the runner's ``RunOptions`` extends it; the
``comfysweep run`` flags are built from the settings marked with a flag (``flags()``), so a flag
is checked against the same bounds as the spec; and ``readme_rows()`` is the README's table of
them, which ``tests/test_docs.py`` checks. The order is: flag, then spec, then default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import annotated_types
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.client import DEFAULT_TIMEOUT

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
        Setting("stop submitting once this much (USD) is spent", flag="USD", shown="none"),
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
    rate: Annotated[
        float,
        Setting(
            "requests a second to the API, every call and download together "
            "(with `--emulator`, times its speed)",
            flag="R",
        ),
    ] = Field(10.0, gt=0)


@dataclass(frozen=True)
class Flag:
    """A setting as a command-line option: ``--poll-interval S``, its type and bounds."""

    name: str  # the setting's name, e.g. "poll_interval"
    option: str  # "--poll-interval"
    metavar: str
    kind: type[int] | type[float]
    low: float | None  # an int for an int setting
    high: float | None
    low_open: bool
    help: str


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
        kind = int if field.annotation is int else float
        text = f"{about.help[:1].upper()}{about.help[1:]} (run.{name}, default {_shown(name)})."
        text = text.replace("`", "")
        out.append(
            Flag(name, f"--{name.replace('_', '-')}", about.flag, kind, low, high, low_open, text)
        )
    return out


def readme_rows() -> list[str]:
    """The README's rows for the ``run:`` settings, exactly as they must appear there."""
    rows = []
    by_name = {f.name: f for f in flags()}
    for name in RunSettings.model_fields:
        meaning = setting(name).help
        flag = by_name.get(name)
        if flag is not None:
            meaning += f"; {_bounds(flag)} (`{flag.option} {flag.metavar}`)"
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


def _bounds(flag: Flag) -> str:
    if flag.high is None:
        return f"more than {flag.low}" if flag.low_open else f"at least {flag.low}"
    return f"{flag.low} to {flag.high}"
