"""The emulator's settings, with their defaults written once."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.emulator.faults import FaultProfile
from orchestrator.errors import EmulatorError

__all__ = ["MAX_BODY_BYTES", "EmulatorConfig"]

MAX_BODY_BYTES = 64 * 1024 * 1024  # the whole-request cap RunComfy's partner nodes document
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}")


@dataclass(frozen=True)
class EmulatorConfig:
    """How the emulator behaves: farm size and speed, accounts, output TTL, faults, persistence.

    ``speed`` divides every simulated duration (1.0 = a real GPU's pace). ``state_path`` is a
    journal file: with it, jobs and the ledger survive a restart of the emulator process.
    """

    workers: int = 3
    speed: float = 1.0
    seed: int = 0
    tokens: tuple[str, ...] = ("emulator-token",)
    balance_usd: float = 100.0
    output_ttl: float = 3600.0
    faults: FaultProfile | None = None
    state_path: Path | None = None
    media_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    max_body_bytes: int = MAX_BODY_BYTES
    duration_jitter: float = 0.0  # spread of job durations (farm.py), 0 to below 1
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise EmulatorError(f"workers: must be at least 1, got {self.workers}")
        if not 0 < self.speed < math.inf:
            raise EmulatorError(f"speed: must be a finite number above 0, got {self.speed}")
        if not self.tokens:
            raise EmulatorError("tokens: give at least one API token")
        for token in self.tokens:
            if not _TOKEN.fullmatch(token):
                raise EmulatorError("tokens: a token must be 1-256 printable characters, no spaces")
        if not 0 <= self.balance_usd < math.inf:
            raise EmulatorError(f"balance_usd: must be finite and >= 0, got {self.balance_usd}")
        if not 0 <= self.output_ttl < math.inf:
            raise EmulatorError(f"output_ttl: must be finite and >= 0, got {self.output_ttl}")
        if not 0 <= self.duration_jitter < 1:
            raise EmulatorError(
                f"duration_jitter: must be from 0 to below 1, got {self.duration_jitter}"
            )
        if not 0 <= self.port <= 65535:
            raise EmulatorError(f"port: must be 0-65535, got {self.port}")

    @property
    def starting_balance(self) -> float:
        """Every account's balance at start: the fault profile's, else ``balance_usd``."""
        if self.faults is not None and self.faults.balance_usd is not None:
            return self.faults.balance_usd
        return self.balance_usd
