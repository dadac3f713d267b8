"""Whose a temporary file is: names that carry their writer (host and pid), so the next run on
this machine removes what a killed one left, and never what a live one or another machine writes.
"""

from __future__ import annotations

import os
import socket

__all__ = ["HOST", "abandoned", "owner_prefix"]

# This machine, as a name part: no "~" (the separator) and no "/".
HOST = socket.gethostname().replace("~", "_").replace("/", "_") or "host"


def owner_prefix(name: str) -> str:
    """The start of a hidden temporary name beside ``name``: ``.NAME.HOST~PID~``."""
    return f".{name}.{HOST}~{os.getpid()}~"


def abandoned(host: str, pid: str) -> bool:
    """Whether a leftover written by ``pid`` on ``host`` belongs to nobody any more.

    Another machine's leftovers are its own runner's to clean up; ours are abandoned once their
    writer is gone.
    """
    return host == HOST and not (pid.isdigit() and _alive(int(pid)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
