"""Runs a sweep in this process and SIGKILLs itself at a chosen moment (for the kill tests).

    python tests/kill_driver.py SPEC POINT [AFTER]

POINT is where the process dies, the AFTER-th time it gets there (default 1):
``submit-sent`` (the server created the job, its answer is not stored yet), ``polling`` (a status
answer arrived) or ``downloading`` (half of an output is on disk). The API comes from the usual
environment (RUNCOMFY_MODEL_API_BASE, RUNCOMFY_API_TOKEN).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from orchestrator.client import Downloaded, ModelApiClient, Status, Submitted
from orchestrator.sweep import Overrides, run_sweep

spec, point = sys.argv[1], sys.argv[2]
after = int(sys.argv[3]) if len(sys.argv) > 3 else 1
seen = 0


def maybe_die(here: str) -> None:
    global seen
    if here == point:
        seen += 1
        if seen >= after:
            os.kill(os.getpid(), signal.SIGKILL)


real_submit, real_status, real_download = (
    ModelApiClient.submit,
    ModelApiClient.status,
    ModelApiClient.download,
)


async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Submitted:
    answer = await real_submit(self, model_id, inputs)
    maybe_die("submit-sent")
    return answer


async def status(self: ModelApiClient, request_id: str) -> Status:
    answer = await real_status(self, request_id)
    maybe_die("polling")
    return answer


async def download(self: ModelApiClient, url: str, dest: Path) -> Downloaded:
    got = await real_download(self, url, dest)
    if point == "downloading":
        with dest.open("r+b") as handle:
            handle.truncate(got.size // 2)
    maybe_die("downloading")
    return got


ModelApiClient.submit = submit  # type: ignore[method-assign]
ModelApiClient.status = status  # type: ignore[method-assign]
ModelApiClient.download = download  # type: ignore[method-assign]
report = run_sweep(spec, overrides=Overrides(poll_interval=0.02))
sys.exit(0 if report.complete else 3)
