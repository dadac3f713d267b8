"""The ``comfysweep`` command and ``python -m orchestrator``: a Ctrl-C is one line from the start.

This module imports nothing heavy before its ``try``: a Ctrl-C while the CLI's imports load (half a
second on a slow disk) exits 130 with one line, like one during a command, never a traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED = "Interrupted."


def interrupted() -> None:
    """Say so in one line and exit 130 (128 + SIGINT), as a shell expects."""
    sys.stderr.write(f"{INTERRUPTED}\n")
    sys.exit(130)


def main() -> None:
    """Console-script entry point."""
    try:
        from orchestrator.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        interrupted()


if __name__ == "__main__":
    main()
