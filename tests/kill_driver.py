"""Runs a sweep in this process and SIGKILLs itself at a chosen moment (for the kill tests).

    python tests/kill_driver.py SPEC POINT [AFTER]

POINT is where the process dies, the AFTER-th time it gets there (default 1):
``submit-sent`` (the server created the job, its answer is not stored yet), ``polling`` (a poll's
answer arrived, the job still in flight), ``downloading`` (half of an output is on disk) or
``journaled`` (another connection locked the store right after a submit was answered, and the
runner could only write the request id to its journal), ``waiting-result`` or
``waiting-download`` (another connection locked the store as a job's result came, or as its
output landed, and the runner is waiting to record it), or ``manifest-torn`` (ticking every
20 ms, at the AFTER-th append to manifest.jsonl after one to metadata.jsonl, half of it written:
a torn last line). The API comes from the usual
environment (RUNCOMFY_MODEL_API_BASE, RUNCOMFY_API_TOKEN).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from orchestrator import results
from orchestrator.client import Downloaded, ModelApiClient, Result, Status, Submitted
from orchestrator.runner import Runner
from orchestrator.spec import load_spec
from orchestrator.store import schema
from orchestrator.store.journal import RequestJournal
from orchestrator.sweep import Overrides, run_sweep, store_path

# COMFYSWEEP_TEST_CATALOG: catalog model ids the test registered (tests/catalog_models.py),
# registered here too, so a sweep of several models dies and resumes like one of vace-fun.
for _model_id in filter(None, os.environ.get("COMFYSWEEP_TEST_CATALOG", "").split(",")):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator import models
    from orchestrator.models import Model
    from tests.catalog_models import catalog_entry

    models._registry()[_model_id] = Model.from_catalog(catalog_entry(_model_id))

spec, point = sys.argv[1], sys.argv[2]
after = int(sys.argv[3]) if len(sys.argv) > 3 else 1
seen = 0
blockers: list[sqlite3.Connection] = []
if point == "journaled" or point.startswith("waiting-"):
    schema.BUSY_TIMEOUT_MS = 100  # the store gives up on the lock at once


def hold_the_store() -> None:
    """Another program takes the store file, and keeps it until this process dies."""
    if not blockers:
        blocker = sqlite3.connect(store_path(load_spec(spec)), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        blockers.append(blocker)


def maybe_die(here: str) -> None:
    global seen
    if here == point:
        seen += 1
        if seen >= after:
            os.kill(os.getpid(), signal.SIGKILL)


real_submit, real_status, real_result, real_download, real_append, real_say = (
    ModelApiClient.submit,
    ModelApiClient.status,
    ModelApiClient.result,
    ModelApiClient.download,
    RequestJournal.append,
    Runner._say,
)


async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Submitted:
    answer = await real_submit(self, model_id, inputs)
    maybe_die("submit-sent")
    if point == "journaled":
        hold_the_store()
    return answer


def append(self: RequestJournal, *args: Any, **kwargs: Any) -> None:
    real_append(self, *args, **kwargs)
    maybe_die("journaled")


async def status(self: ModelApiClient, request_id: str) -> Status:
    answer = await real_status(self, request_id)
    maybe_die("polling")
    return answer


async def result(self: ModelApiClient, request_id: str, include_cost: bool = True) -> Result:
    answer = await real_result(self, request_id, include_cost)
    if not answer.state.terminal:  # a poll: the runner asks the result endpoint alone
        maybe_die("polling")
    if point == "waiting-result":
        hold_the_store()
    return answer


def say(self: Runner, text: str) -> None:
    real_say(self, text)
    if point.startswith("waiting-") and "waiting for the store" in text:
        maybe_die(point)


async def download(self: ModelApiClient, url: str, dest: Path) -> Downloaded:
    got = await real_download(self, url, dest)
    if point == "waiting-download":
        hold_the_store()
    if point == "downloading":
        with dest.open("r+b") as handle:
            handle.truncate(got.size // 2)
    maybe_die("downloading")
    return got


real_append_text, real_init = results.append_text, Runner.__init__
listed: list[Path] = []


def append_text(path: Path, text: str) -> int:
    if path.name == "metadata.jsonl":
        listed.append(path)
    elif listed and point == "manifest-torn":
        maybe_die_torn(path, text)
    return real_append_text(path, text)


def maybe_die_torn(path: Path, text: str) -> None:
    global seen
    seen += 1
    if seen >= after:
        with path.open("ab") as handle:
            handle.write(text.encode()[: len(text) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def init(self: Runner, *args: Any, **kwargs: Any) -> None:
    real_init(self, *args, **kwargs)
    if point == "manifest-torn":  # many ticks, so a run of a few jobs appends many times
        self.options = self.options.model_copy(update={"tick": 0.02})


results.append_text = append_text  # type: ignore[assignment]
Runner.__init__ = init  # type: ignore[method-assign]
ModelApiClient.submit = submit  # type: ignore[method-assign]
ModelApiClient.status = status  # type: ignore[method-assign]
ModelApiClient.result = result  # type: ignore[method-assign]
ModelApiClient.download = download  # type: ignore[method-assign]
Runner._say = say  # type: ignore[method-assign]
RequestJournal.append = append  # type: ignore[method-assign]
report = run_sweep(spec, overrides=Overrides(poll_interval=0.02))
sys.exit(0 if report.complete else 3)
