"""The embedded emulator of RunComfy's Model API: a real HTTP server with a simulated GPU farm,
real MP4 outputs, seeded fault injection and a ledger that proves nothing was paid twice."""

from __future__ import annotations

from orchestrator.emulator.app import EmulatorState, create_app
from orchestrator.emulator.config import MAX_BODY_BYTES, EmulatorConfig
from orchestrator.emulator.faults import FAULTS, FaultProfile, load_fault_profile, parse_fault_flag
from orchestrator.emulator.server import Emulator, serve

__all__ = [
    "FAULTS",
    "MAX_BODY_BYTES",
    "Emulator",
    "EmulatorConfig",
    "EmulatorState",
    "FaultProfile",
    "create_app",
    "load_fault_profile",
    "parse_fault_flag",
    "serve",
]
