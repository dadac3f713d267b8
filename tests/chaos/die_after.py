"""Runs a sweep in this process and SIGKILLs itself right after ``Class.method`` returns.

    python tests/chaos/die_after.py SPEC MODULE:CLASS.METHOD [AFTER]

The AFTER-th return (default 1) is the last thing the process does. The API comes from the usual
environment (RUNCOMFY_MODEL_API_BASE, RUNCOMFY_API_TOKEN).
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from typing import Any

from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

spec, target = sys.argv[1], sys.argv[2]
after = int(sys.argv[3]) if len(sys.argv) > 3 else 1
module_name, _, qualname = target.partition(":")
class_name, _, method_name = qualname.partition(".")
owner = getattr(importlib.import_module(module_name), class_name)
real = getattr(owner, method_name)
calls = 0


@functools.wraps(real)
def dying(*args: Any, **kwargs: Any) -> Any:
    global calls
    answer = real(*args, **kwargs)
    calls += 1
    if calls >= after:
        os.kill(os.getpid(), signal.SIGKILL)
    return answer


setattr(owner, method_name, dying)
report = run_sweep(spec, overrides=Overrides(poll_interval=0.02), retry=RetryPolicy(wait=False))
sys.exit(0 if report.complete else 3)
