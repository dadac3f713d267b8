"""Which sweep a read-only command means: SPEC, --store, or the results folder it runs in."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.locate import locate
from orchestrator.results import STORE_FILE
from orchestrator.store import Store


def test_a_spec_names_its_store_and_results_folder(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nmodel: community/wan-2-2/vace-fun\ninputs: {prompt: p, image: 'https://example.com/x.png'}\n"
        "axes: {seed: [1, 2]}\nrun: {output: out}\n"
    )
    with pytest.raises(StoreError, match=r"no store yet; `comfysweep run` creates it"):
        locate(spec)
    (tmp_path / "out" / "s").mkdir(parents=True)
    Store.open(tmp_path / "out" / "s" / STORE_FILE).close()
    found = locate(spec)
    assert (found.name, found.results) == ("s", tmp_path / "out" / "s")
    assert found.store == tmp_path / "out" / "s" / STORE_FILE


def test_without_a_spec_the_store_or_the_current_folder_names_the_sweep(tmp_path: Path) -> None:
    folder = tmp_path / "night"
    folder.mkdir()
    with pytest.raises(StoreError, match=r"no sweep here \(.*night holds no comfysweep.db\)"):
        locate(None, cwd=folder)
    Store.open(folder / STORE_FILE).close()
    assert locate(None, cwd=folder).results == folder
    assert locate(None, cwd=folder).name == "night"
    by_store = locate(None, str(folder / STORE_FILE), cwd=tmp_path)
    assert (by_store.results, by_store.spec) == (folder, None)
