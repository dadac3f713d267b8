"""The public API is exactly what orchestrator exports, and every export says what it is."""

from __future__ import annotations

import inspect
import subprocess
import sys

import orchestrator

# Written out, not computed: adding, removing or renaming a public name is a change to the API
# and must show up in this list's diff.
EXPECTED = [
    "CancelOutcome",
    "CancelReport",
    "ComfysweepError",
    "Downloaded",
    "Emulator",
    "EmulatorConfig",
    "FaultProfile",
    "Job",
    "JobRow",
    "JobState",
    "Model",
    "ModelApiClient",
    "ModelInfo",
    "Overrides",
    "RemoteState",
    "Result",
    "RetryPolicy",
    "RunOptions",
    "RunReport",
    "Spec",
    "Status",
    "Store",
    "Submitted",
    "cancel_sweep",
    "canonical_json",
    "count_jobs",
    "get_model",
    "input_sha256",
    "iter_jobs",
    "job_key",
    "known_models",
    "load_spec",
    "refresh_price",
    "retry_jobs",
    "run_sweep",
    "sweep_status",
]


def test_all_is_exactly_the_public_api() -> None:
    assert orchestrator.__all__ == EXPECTED


def test_all_is_sorted_and_unique() -> None:
    names = list(orchestrator.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_every_export_resolves_and_has_a_docstring() -> None:
    for name in orchestrator.__all__:
        value = getattr(orchestrator, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
            assert value.__name__ == name, f"{name} is exported under another name"
            assert value.__module__.startswith("orchestrator."), f"{name} is not ours"


def test_public_names_are_exported() -> None:
    for name in orchestrator.__all__:  # load the lazy ones too
        getattr(orchestrator, name)
    public = {n for n in vars(orchestrator) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(orchestrator, n))}
    assert public - modules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} <= set(
        orchestrator.__all__
    )


def test_star_import_gives_every_export_and_nothing_else() -> None:
    code = (
        "from orchestrator import *\n"
        "names = sorted(n for n in globals() if not n.startswith('_'))\n"
        "print(' '.join(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == sorted(EXPECTED)
