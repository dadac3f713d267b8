"""The public API is exactly what orchestrator exports, and every export says what it is."""

from __future__ import annotations

import inspect

import orchestrator


def test_every_export_resolves_and_has_a_docstring() -> None:
    for name in orchestrator.__all__:
        value = getattr(orchestrator, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_all_is_sorted_and_unique() -> None:
    assert sorted(set(orchestrator.__all__)) == sorted(orchestrator.__all__)


def test_public_names_are_exported() -> None:
    public = {n for n in vars(orchestrator) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(orchestrator, n))}
    assert public - modules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} <= set(
        orchestrator.__all__
    )
